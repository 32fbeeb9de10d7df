"""Compile CUDA kernel specialisations to PTX for a compute capability, with no GPU needed.

Numba's simulator runs kernels as Python and accepts code the CUDA compiler rejects, so the
test suite also compiles every specialisation the tests and benchmarks launch, for real, with
``numba.cuda.compile_ptx`` (NVVM from numba-cuda's ``cu12``/``cu13`` extra; no driver needed).
"""

from __future__ import annotations

from numba import cuda, types

from .._numba_types import NUMBA_FLOAT
from ._conv_tiles import ConvTileKey
from ._forward import ForwardKey
from ._kernels import FinishKey, compile_options, kernel_of
from ._planes import PlaneKey
from ._reduce import ReduceKey
from ._wgrad_tiles import TileReduceKey


def compile_for(key, argtypes: tuple, cc: tuple[int, int]) -> str:
    """PTX of the kernel ``key`` names (:func:`nbconv.cuda._kernels.kernel_of`), with its
    launch bounds, for the Numba argument types ``argtypes`` on compute capability ``cc``."""
    ptx, _ = cuda.compile_ptx(kernel_of(key).py_func, argtypes, cc=cc, **compile_options(key))
    return ptx


def forward_signature(key: ForwardKey | PlaneKey | ConvTileKey, dtype, layout: str = "C"):
    """Argument types of the forward (tiled, plane or tile-product) kernel as the launcher passes them."""
    arr4 = types.Array(NUMBA_FLOAT[dtype], 4, layout)
    bias = types.Array(NUMBA_FLOAT[dtype], 1, layout) if key.has_bias else arr4
    n_ints = 7 if isinstance(key, PlaneKey) else 5 if isinstance(key, ConvTileKey) else 6
    return (arr4, arr4, bias, arr4) + (types.int64,) * n_ints


def compile_forward(key: ForwardKey | PlaneKey | ConvTileKey, dtype, cc: tuple[int, int], layout: str = "C") -> str:
    """PTX of the forward (tiled, plane or tile-product) kernel for ``key`` and ``dtype`` on
    compute capability ``cc``."""
    return compile_for(key, forward_signature(key, dtype, layout), cc)


def compile_reduce(key: ReduceKey, dtype, cc: tuple[int, int]) -> list[str]:
    """PTX of both passes of the weight / bias gradient for ``key`` and ``dtype``."""
    arr4 = types.Array(NUMBA_FLOAT[dtype], 4, "A")
    acc = types.Array(types.float64 if key.acc_double else types.float32, 5, "C")
    out = types.Array(NUMBA_FLOAT[dtype], 1 if key.bias_only else 4, "A")
    return [compile_for(key, (arr4, arr4, acc) + (types.int64,) * 4, cc),
            compile_for(FinishKey(key.bias_only, key.wide_index), (acc, out), cc)]


def compile_tiles(key: TileReduceKey, dtype, cc: tuple[int, int]) -> list[str]:
    """PTX of the weight gradient by tiles for ``key`` and ``dtype``, and of its finish pass."""
    arr4 = types.Array(NUMBA_FLOAT[dtype], 4, "A")
    acc = types.Array(types.float64 if key.acc_double else types.float32, 5, "C")
    out = types.Array(NUMBA_FLOAT[dtype], 4, "A")
    return [compile_for(key, (arr4, arr4, acc) + (types.int64,) * 6, cc),
            compile_for(FinishKey(False), (acc, out), cc)]


def compile_key(key, dtype, cc: tuple[int, int]) -> list[str]:
    """PTX of every kernel a launch with ``key`` runs (one, or a reduction's two passes)."""
    if isinstance(key, ReduceKey):
        return compile_reduce(key, dtype, cc)
    if isinstance(key, TileReduceKey):
        return compile_tiles(key, dtype, cc)
    return [compile_forward(key, dtype, cc)]
