"""NumPy's own BLAS (OpenBLAS, 64-bit integers), called single-threaded from inside the CPU
kernels' parallel tasks.

Dense 1x1 layers and dense layers after an im2col are matrix products, and a BLAS's ``gemm`` is
the best-kept matrix product a NumPy install has. Called from Python it brings its own thread
pool, which on a shared core count fights Numba's: each pool's idle threads spin after a call
while the other's work (on a 2-core Zen 3, ResNet-50's 1x1 layers went from 10 to 19 ms, and
PyTorch's from 4.1 to 10.9 ms). So here Numba's tasks each call ``cblas_?gemm`` on their own
block of the product, with the BLAS set to one thread for the duration of the kernel (and set
back after): no second pool, and the task split does not depend on the thread count.

What is found: the OpenBLAS that NumPy's wheels bring (``scipy_cblas_sgemm64_``, or
``cblas_sgemm64_`` of older ``openblas64_`` builds), in the libraries this process has loaded
(``/proc/self/maps``) or beside NumPy's package. Elsewhere (MKL, Accelerate, 32-bit integer
builds) :func:`gemm_functions` is None and the kernels compute the products themselves.
``NBCONV_BLAS=0`` in the environment turns the BLAS off.

Which is faster depends on the compile target (:func:`for_products`). With AVX2's 16 vector
registers the kernels' own blocks hold 12 sums and the BLAS won: ResNeXt-50's 1x1 layers went from
0.56-0.88x PyTorch to 0.95-1.0x on a 2-core Zen 3. With AVX-512's 32 registers of 512 bits the
own blocks hold 24 sums of 16 lanes, and NumPy's OpenBLAS may not use them at all: the 0.3.31 of
NumPy 2.4's wheels runs its Haswell (AVX2) kernels on a Zen 5 EPYC, where the kernels' own
products were 1.5-2.2x its speed (all conv layers of eight networks at batch 2: 1.43x PyTorch
against 0.96x, ``NBCONV_BLAS=0 nbconv bench --network all``) and 1.1x even its AVX-512
(``OPENBLAS_CORETYPE=SkylakeX``) kernels on ResNeXt-50; on an Intel Xeon, where that OpenBLAS
picks its AVX-512 kernels itself, the own products were 1.03-1.85x its speed (``python
docs/pointwise_blocks.py --only blas``). So on AVX-512 targets the
BLAS is not called (``docs/performance.md``, "The BLAS by target", round 16).

Sums: a product's terms are added in the BLAS's order, after the bias (``beta = 1`` onto outputs
holding the bias), not in the reference's channel order; the result is within the tolerance of
any float32 sum, the same whatever the thread count, and may differ between BLAS builds and
CPUs in the last bits.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
import threading
from contextlib import contextmanager
from functools import lru_cache
from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .._numba_options import njit_serial
from ._simd import _data, _index
from ._target import target

#: (gemm name pattern, set_num_threads, get_num_threads) per known OpenBLAS build with 64-bit integers.
_BUILDS = (
    ("scipy_cblas_{t}gemm64_", "scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("cblas_{t}gemm64_", "openblas_set_num_threads64_", "openblas_get_num_threads64_"),
)
_ROW_MAJOR, _NO_TRANS = 101, 111


class GemmFunctions(NamedTuple):
    """Addresses of a BLAS's ``cblas_sgemm`` and ``cblas_dgemm`` (64-bit integers), and its
    thread-count setter and getter."""

    path: str
    sgemm: int
    dgemm: int
    set_threads: object
    get_threads: object

    def address(self, dtype) -> int:
        return self.sgemm if np.dtype(dtype) == np.float32 else self.dgemm


def _candidate_paths() -> list[str]:
    paths = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split(maxsplit=5)[-1].strip()
                if "openblas" in os.path.basename(path).lower() and path not in paths:
                    paths.append(path)
    except OSError:
        pass
    root = os.path.dirname(os.path.dirname(np.__file__))
    for pattern in ("numpy.libs/*openblas*", "numpy/.dylibs/*openblas*"):
        paths += [p for p in sorted(glob.glob(os.path.join(root, pattern))) if p not in paths]
    return paths


@lru_cache(maxsize=1)
def gemm_functions() -> GemmFunctions | None:
    """NumPy's OpenBLAS (64-bit integers) as :class:`GemmFunctions`, or None (not found, another
    BLAS, or ``NBCONV_BLAS=0``)."""
    if os.environ.get("NBCONV_BLAS", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if sys.maxsize < 2**63 - 1:
        return None
    for path in _candidate_paths():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for gemm, set_name, get_name in _BUILDS:
            try:
                s, d = getattr(lib, gemm.format(t="s")), getattr(lib, gemm.format(t="d"))
                set_threads, get_threads = getattr(lib, set_name), getattr(lib, get_name)
            except AttributeError:
                continue
            set_threads.argtypes, set_threads.restype = [ctypes.c_int], None
            get_threads.argtypes, get_threads.restype = [], ctypes.c_int
            address = ctypes.cast(s, ctypes.c_void_p).value, ctypes.cast(d, ctypes.c_void_p).value
            return GemmFunctions(path, *address, set_threads, get_threads)
    return None


def faster_than_own_blocks() -> bool:
    """Whether the BLAS's products beat the kernels' own register blocks on the compile target:
    with fewer than 32 vector registers (AVX2 and narrower), where the own blocks are small."""
    return target().vector_registers < 32


def for_products() -> GemmFunctions | None:
    """The BLAS that the kernels' matrix products (``_pointwise``, ``_im2col``) call, or None
    where they compute them themselves: no usable BLAS, or a target where the own blocks are
    faster (:func:`faster_than_own_blocks`)."""
    return gemm_functions() if faster_than_own_blocks() else None


_lock = threading.Lock()
_users = 0
_saved = 1


@contextmanager
def single_threaded(functions: GemmFunctions):
    """The BLAS at one thread while the block runs (the first of concurrent callers saves the
    count, the last restores it). Another thread's NumPy product in the meantime runs on one
    thread too."""
    global _users, _saved
    with _lock:
        if _users == 0:
            _saved = functions.get_threads()
            if _saved != 1:
                functions.set_threads(1)
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0 and _saved != 1:
                functions.set_threads(_saved)


#: Fewest multiply-adds per image and group for a product by the BLAS (a call costs about a
#: microsecond; below, the kernels' own products, which need no call).
MIN_MACS = 1 << 16
#: Fewest input channels per group (terms) of a 1x1 product by the BLAS, by the size of the plane
#: (:func:`takes_product`). Measured per layer on a 2-core Zen 3 (every dense 1x1 layer of the
#: bench's eight networks, the own blocks against the BLAS alternately: ``python
#: docs/blas_rule.py --per-layer --networks all``): narrow products (under 96 channels) ran
#: 1.05-1.5x faster by the own blocks on planes of every size, OpenBLAS's packing costing more than
#: its blocks gain over so few terms (two exceptions at 0.85 and 0.96, RegNetY's 32 -> 48 at 112 x
#: 112 and ResNeXt's 64 -> 256 at 56 x 56); from 96 to 255 channels the own blocks were 1.03-1.25x
#: on planes of 14 x 14 to 28 x 28, the BLAS 1.1-1.3x on 7 x 7 planes from 128 channels and
#: 1.2x on 56 x 56 (ResNeXt's 128 -> 256, 256 -> 256). (The Xeon compiled for ``haswell``,
#: round 21, favoured the BLAS on large planes even for narrow products: a stand-in; the rule
#: follows the AVX2 machine.)
MIN_TERMS = 256
#: Planes under this many pixels (7 x 7 up to 13 x 13) take the BLAS from ``SMALL_PLANE_TERMS``.
SMALL_PLANE = 14 * 14
SMALL_PLANE_TERMS = 128
#: Planes of this many pixels and more take it from ``LARGE_PLANE_TERMS``.
LARGE_PLANE = 56 * 56
LARGE_PLANE_TERMS = 96
#: Planes from this many pixels up to ``LARGE_PLANE`` take it from ``MID_PLANE_TERMS``: there the own
#: blocks were faster up to 511 terms (ConvNeXt's 96 -> 192 downsampling, 384 terms; ResNeXt's
#: 256 -> 512 layers), at batches 8 and 2 on a 2-core Zen 2 (``docs/performance.md``, round 28).
MID_PLANE = 28 * 28
MID_PLANE_TERMS = 512


def takes_product(terms: int, pixels: int) -> bool:
    """Whether a 1x1 product of ``terms`` input channels per group on planes of ``pixels`` goes to
    the BLAS (where :func:`for_products` gives one), by ``MIN_TERMS`` and the plane's bounds."""
    if pixels < SMALL_PLANE:
        return terms >= SMALL_PLANE_TERMS
    if pixels >= LARGE_PLANE:
        return terms >= LARGE_PLANE_TERMS
    if pixels >= MID_PLANE:
        return terms >= MID_PLANE_TERMS
    return terms >= MIN_TERMS


#: Output rows of a task's product, and the multiply-adds a task aims at.
TASK_ROWS = 256
TASK_MACS = 1 << 23


def product_split(rows: int, inner: int, columns: int) -> tuple[int, int]:
    """(columns per task, parts of the rows) for the product of a (rows x inner) and an (inner x
    columns) matrix, per image and group: parts of ``TASK_ROWS`` rows, columns in chunks of a
    multiple of 64 (at least 256) that give a task about ``TASK_MACS``. A function of the sizes
    alone: which terms a task's product sums in which order (the BLAS's blocking) must not
    depend on the thread count or the batch."""
    parts = -(-rows // TASK_ROWS)
    part_rows = -(-rows // parts)
    chunk = -(-TASK_MACS // max(1, part_rows * inner) // 64) * 64
    return min(columns, max(256, chunk)), parts


@intrinsic
def gemm(typingctx, fn, m, n, k, a, a0, lda, b, b0, ldb, beta, c, c0, ldc):
    """``c[c0 + i * ldc + j] = beta * c[...] + sum_p a[a0 + i * lda + p] * b[b0 + p * ldb + j]``
    for ``i < m``, ``j < n``, by the ``cblas_?gemm`` (64-bit integers) at address ``fn``.

    ``a``, ``b``, ``c``: 1-D C-contiguous arrays of one dtype, float32 (``fn`` an sgemm) or
    float64 (a dgemm); every other argument an integer except ``beta`` (a float). No checks."""
    arrays = (a, b, c)
    if not all(isinstance(x, types.Array) and x.ndim == 1 and x.layout == "C" for x in arrays):
        return None
    if len({x.dtype for x in arrays}) != 1 or a.dtype not in (types.float32, types.float64):
        return None
    if not all(isinstance(x, types.Integer) for x in (fn, m, n, k, a0, lda, b0, ldb, c0, ldc)):
        return None
    if not isinstance(beta, (types.Float, types.Integer)):
        return None
    sig = types.void(fn, m, n, k, a, a0, lda, b, b0, ldb, beta, c, c0, ldc)

    def codegen(context, builder, signature, args):
        i32, i64 = ir.IntType(32), ir.IntType(64)
        element = context.get_data_type(a.dtype)
        pointer = element.as_pointer()

        def integer(i):  # intp: 64 bits (the BLAS is used on 64-bit platforms only)
            return _index(context, builder, args[i], signature.args[i])

        def at(array_i, offset_i):
            data = _data(context, builder, args[array_i], signature.args[array_i])
            return builder.gep(data, [integer(offset_i)], inbounds=True)

        beta_value = context.cast(builder, args[10], signature.args[10], a.dtype)
        fnty = ir.FunctionType(ir.VoidType(), [i32, i32, i32, i64, i64, i64, element, pointer, i64, pointer, i64,
                                               element, pointer, i64])
        target = builder.inttoptr(integer(0), fnty.as_pointer())
        builder.call(target, [ir.Constant(i32, _ROW_MAJOR), ir.Constant(i32, _NO_TRANS), ir.Constant(i32, _NO_TRANS),
                              integer(1), integer(2), integer(3), ir.Constant(element, 1.0), at(4, 5), integer(6),
                              at(7, 8), integer(9), beta_value, at(11, 12), integer(13)])
        return context.get_dummy_value()

    return sig, codegen


@njit_serial
def product_onto_bias(fn, rows, columns, inner, w, w0, b, b0, x, x0, x_pitch, out, o0, out_pitch):
    """``out[o0 + r * out_pitch + p] = b[b0 + r] + sum_c w[w0 + r * inner + c] * x[x0 + c * x_pitch +
    p]`` for ``r < rows``, ``p < columns``: the outputs set to the bias, then the BLAS's product
    added (``beta = 1``). 1-D arrays; no checks."""
    for r in range(rows):
        bias = b[b0 + r]
        for p in range(columns):
            out[o0 + r * out_pitch + p] = bias
    gemm(fn, rows, columns, inner, w, w0, inner, x, x0, x_pitch, 1.0, out, o0, out_pitch)
