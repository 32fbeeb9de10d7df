"""Device arrays as the kernels take them: Numba device arrays, without copies or host syncs."""

from __future__ import annotations

import functools
import sys
from typing import Any

import numpy as np
from numba import config, cuda

from .._arrays import CUPY, TORCH_CUDA


def as_batched_device_array(a: Any, unbatched: bool):
    """A Numba device-array view of ``a`` (CuPy, Numba or CAI), with a leading axis if asked.

    ``sync=False``: the producer's stream is not synchronised from the host; kernels are
    launched on CuPy's current stream instead (see :func:`launch_stream`).
    """
    if config.ENABLE_CUDASIM:
        if not unbatched:
            return a
        return type(a)(a._ary[np.newaxis])
    if not cuda.devicearray.is_cuda_ndarray(a):
        a = cuda.as_cuda_array(a, sync=False)
    if not unbatched:
        return a
    return cuda.devicearray.DeviceNDArray(
        shape=(1,) + tuple(a.shape),
        strides=(0,) + tuple(a.strides),
        dtype=a.dtype,
        stream=a.stream,
        gpu_data=a.gpu_data,
    )


def one_chunk_view(a: Any, ndim: int):
    """``a`` (a Numba device array, or the simulator's) viewed with a leading axis of length 1
    and trailing axes of length 1 up to ``ndim`` axes (strides 0): a gradient's result taken
    as the partial sums of its only chunk, which its reduction kernel then writes directly."""
    extra = ndim - 1 - len(a.shape)
    shape = (1,) + tuple(a.shape) + (1,) * extra
    strides = (0,) + tuple(a.strides) + (0,) * extra
    if config.ENABLE_CUDASIM:
        return type(a)(np.lib.stride_tricks.as_strided(a._ary, shape, strides))
    return cuda.devicearray.DeviceNDArray(shape=shape, strides=strides, dtype=a.dtype, stream=a.stream,
                                          gpu_data=a.gpu_data)


@functools.lru_cache(maxsize=64)
def _external_stream(ptr: int):
    return cuda.external_stream(ptr)


def launch_stream(kind: str):
    """CuPy's current stream for CuPy arrays, PyTorch's for torch tensors, else Numba's default
    stream."""
    if config.ENABLE_CUDASIM:
        return cuda.default_stream()
    if kind == CUPY:
        ptr = sys.modules["cupy"].cuda.get_current_stream().ptr
    elif kind == TORCH_CUDA:
        ptr = sys.modules["torch"].cuda.current_stream().cuda_stream
    else:
        ptr = 0
    return _external_stream(ptr) if ptr else cuda.default_stream()


def device_scratch(kind: str, shape: tuple[int, ...], dtype) -> Any:
    """A temporary device array: from CuPy's memory pool (stream-ordered, no cudaMalloc per
    call) for CuPy callers, else from Numba."""
    if kind == CUPY and not config.ENABLE_CUDASIM:
        return cuda.as_cuda_array(sys.modules["cupy"].empty(shape, dtype), sync=False)
    return cuda.device_array(shape, dtype)
