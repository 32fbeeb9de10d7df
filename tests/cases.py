"""Convolution cases shared by the test modules, and array helpers per backend.

Backends: ``cpu`` (NumPy), ``cuda`` (Numba device arrays: a real GPU, or Numba's CUDA simulator
when there is none) and ``cupy`` (CuPy arrays; only with a real GPU and CuPy installed).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
import pytest

from nbconv._spec import conv2d_spec

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def _cupy_usable() -> bool:
    if SIMULATOR:
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


CUPY = _cupy_usable()

BACKENDS = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.cuda),
    pytest.param("cupy", marks=[pytest.mark.cuda, pytest.mark.skipif(not CUPY, reason="needs CuPy and a GPU")]),
]


class Case(NamedTuple):
    n: int
    c_in: int
    hw: tuple[int, int]
    c_out: int
    k: tuple[int, int]
    stride: object = 1
    padding: object = 0
    dilation: object = 1
    groups: int = 1
    bias: bool = True

    def conv_args(self) -> dict:
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    def __str__(self) -> str:
        return (
            f"n{self.n}-c{self.c_in}-{self.hw[0]}x{self.hw[1]}-o{self.c_out}-k{self.k[0]}x{self.k[1]}"
            f"-s{self.stride}-p{self.padding}-d{self.dilation}-g{self.groups}{'-bias' if self.bias else ''}"
        )


CASES = [
    Case(2, 4, (7, 6), 6, (3, 3), 1, 1, 1, 1),  # dense
    Case(2, 6, (8, 8), 4, (3, 3), 1, 1, 1, 2),  # groups=2
    Case(1, 4, (9, 7), 4, (3, 3), 1, 1, 1, 4, False),  # depthwise
    Case(2, 3, (6, 5), 6, (3, 3), 1, "same", 1, 3),  # depthwise, multiplier 2, 'same'
    Case(1, 2, (7, 7), 8, (1, 1), 1, 0, 1, 2),  # 1x1 grouped, 4 outputs per group
    Case(1, 4, (11, 9), 4, (3, 3), 2, 1, 1, 4),  # depthwise, stride 2
    Case(1, 6, (10, 11), 6, (3, 2), (2, 1), (0, 1), 1, 3),  # non-square kernel, mixed stride/padding
    Case(1, 2, (9, 10), 4, (3, 3), 1, "same", (2, 1), 2),  # dilation, 'same'
    Case(1, 2, (8, 8), 2, (4, 2), 1, "same", 1, 1),  # even kernel: extra pad on the far side
    Case(1, 3, (9, 8), 3, (5, 5), 1, "valid", 1, 3),  # 'valid'
    Case(1, 4, (5, 6), 12, (2, 3), 3, 2, 2, 2),  # large stride + dilation + padding
    Case(1, 8, (5, 5), 8, (3, 3), 1, 1, 1, 8),  # 5x5 plane (tile smaller than 8)
    Case(1, 2, (18, 17), 4, (3, 3), 1, 1, 1, 2),  # two tiles per side on CUDA
    Case(1, 6, (4, 4), 6, (1, 1), 1, 0, 1, 1, False),  # pointwise dense
    Case(3, 5, (6, 6), 10, (3, 3), 1, 1, 1, 5),  # odd channel counts, multiplier 2
    Case(1, 4, (9, 8), 8, (3, 3), 2, ((0, 2), (1, 0)), 1, 4),  # asymmetric padding, depthwise x2, stride 2
    Case(2, 6, (7, 9), 6, (3, 5), 1, ((2, 0), (0, 3)), (1, 2), 2),  # asymmetric padding, grouped, dilated
]


def random_arrays(case: Case, dtype, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((case.n, case.c_in) + case.hw).astype(dtype)
    w = rng.standard_normal((case.c_out, case.c_in // case.groups) + case.k).astype(dtype)
    b = rng.standard_normal(case.c_out).astype(dtype) if case.bias else None
    return x, w, b


def at_each_thread_count(fn):
    """[``fn()`` with 1 thread, ``fn()`` with 2 threads (or 1 where Numba has only 1)]."""
    import numba

    results = []
    for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
        numba.set_num_threads(threads)
        try:
            results.append(fn())
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    return results


def check_path_forward(applies, forward, case: Case, dtype) -> None:
    """A CPU forward kernel (``forward(x, w, b, out, spec)``) takes ``case`` (``applies(spec)``)
    and writes every output, matching the reference."""
    from reference import assert_conv_close

    x, w, b = random_arrays(case, dtype)
    spec = conv2d_spec(x, w, b, **case.conv_args())
    assert applies(spec)
    out = np.full(spec.output_shape, np.nan, dtype)
    forward(x, w, np.zeros(case.c_out, dtype) if b is None else b, out, spec)
    assert_conv_close(out, x, w, b, **case.conv_args())


def check_non_finite_forward(forward, case: Case, pixels, value) -> None:
    """A CPU forward kernel (``forward(x, w, b, out, spec)``) on ``case`` in float64 with
    ``value`` (inf or NaN) at the input ``pixels`` (n, c, y, x): exactly the reference's outputs
    are non-finite (padding and unused lanes must not spread one), the others match it."""
    from reference import conv2d_reference

    x, w, b = random_arrays(case, np.float64)
    for pixel in pixels:
        x[pixel] = value
    spec = conv2d_spec(x, w, b, **case.conv_args())
    out = np.full(spec.output_shape, 0.5)
    forward(x, w, b, out, spec)
    want = conv2d_reference(x, w, b, **case.conv_args())
    np.testing.assert_array_equal(np.isfinite(out), np.isfinite(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(out[finite], want[finite], rtol=1e-12, atol=1e-12)


def backend_dtype_params():
    """(backend, dtype) pairs each backend supports: float16 is CUDA-only."""
    out = []
    for b in BACKENDS:
        name, marks = (b, ()) if isinstance(b, str) else (b.values[0], b.marks)
        for dt in (np.float32, np.float64) + ((np.float16,) if name != "cpu" else ()):
            out.append(pytest.param(name, dt, marks=marks, id=f"{name}-{np.dtype(dt).name}"))
    return out


def to_backend(a, backend: str):
    """Host array -> the backend's array type (None passes through)."""
    if a is None or backend == "cpu":
        return a
    if backend == "cupy":
        import cupy

        return cupy.asarray(a)
    from numba import cuda

    return cuda.to_device(np.ascontiguousarray(a)) if not a.flags.c_contiguous else cuda.to_device(a)


def every_other_column(a):
    """The view of every other element of the last axis, as a user builds it of any array kind
    (Numba's device arrays take slices but not ``...``)."""
    return a[(slice(None),) * (a.ndim - 1) + (slice(None, None, 2),)]


def permuted(a, axes, backend: str):
    """``a.transpose(axes)``; a Numba device array transposes only in 2-D, so an N-d permuted
    view is built as users build one: a ``DeviceNDArray`` over the same memory with permuted
    shape and strides."""
    if backend != "cuda" or SIMULATOR:
        return a.transpose(axes)
    from numba.cuda.cudadrv.devicearray import DeviceNDArray

    return DeviceNDArray(shape=tuple(a.shape[i] for i in axes), strides=tuple(a.strides[i] for i in axes),
                         dtype=a.dtype, gpu_data=a.gpu_data)


def to_host(a) -> np.ndarray:
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "get"):  # CuPy
        return a.get()
    return a.copy_to_host()


class HostDLPack:
    """An array known to nbconv only through the DLPack protocol (as a JAX CPU array is)."""

    def __init__(self, a):
        self._a = a

    def __dlpack__(self, **kwargs):
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


def ending_at_a_guard_page(n: int, dtype) -> np.ndarray:
    """An array of ``n`` elements of ``dtype`` whose last one ends right before a page that may
    not be read (``PROT_NONE``, Linux): a kernel that reads past it ends the process, so a test
    that passes shows that nothing past the array was read."""
    import ctypes
    import mmap

    size = np.dtype(dtype).itemsize
    page = mmap.PAGESIZE
    data_pages = max(1, -(-n * size // page))
    buf = mmap.mmap(-1, (data_pages + 1) * page)
    start = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(start + data_pages * page, page, 0) == 0, ctypes.get_errno()
    _GUARDED.append(buf)  # the mapping outlives the tests' arrays
    return np.frombuffer(buf, dtype, count=n, offset=data_pages * page - n * size)


_GUARDED: list = []
