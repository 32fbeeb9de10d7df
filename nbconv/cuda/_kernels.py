"""Which ``@cuda.jit`` kernel a launch key names, and the options it is compiled with.

Every kernel factory is cached per key (``plane_kernel(key)`` and the others), and builds its
kernel with launch bounds that follow the key. The launchers and the PTX compile both go
through :func:`kernel_of` and :func:`compile_options`, so a key always means the same code
whichever way it is launched (numba-cuda's dispatcher, or the PTX loaded by CuPy).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ._conv_tiles import ConvTileKey, conv_tile_kernel
from ._forward import ForwardKey, forward_kernel
from ._planes import PlaneKey, launch_bounds, plane_kernel
from ._reduce import ReduceKey, finish_kernel, partial_kernel, reduce_launch_bounds
from ._wgrad_tiles import TileReduceKey, tile_kernel


class FinishKey(NamedTuple):
    """Pass 2 of the weight and bias gradients (``finish_kernel``)."""

    out_1d: bool  # the bias gradient: out[o]
    wide: bool = False  # 2**32 weight elements or more: 64-bit index decode


def kernel_of(key) -> Any:
    """The ``@cuda.jit`` kernel (numba-cuda dispatcher) that ``key`` names."""
    if isinstance(key, PlaneKey):
        return plane_kernel(key)
    if isinstance(key, ConvTileKey):
        return conv_tile_kernel(key)
    if isinstance(key, ReduceKey):
        return partial_kernel(key)
    if isinstance(key, TileReduceKey):
        return tile_kernel(key)
    if isinstance(key, FinishKey):
        return finish_kernel(key.out_1d, key.wide)
    if isinstance(key, ForwardKey):
        return forward_kernel(key)
    raise TypeError(f"not a CUDA kernel key: {key!r}")


def compile_options(key) -> dict:
    """The options ``kernel_of(key)`` was built with, for ``numba.cuda.compile_ptx``."""
    if isinstance(key, PlaneKey):
        return {"launch_bounds": launch_bounds(key)}
    if isinstance(key, (ConvTileKey, TileReduceKey)):
        return {"launch_bounds": (key.threads, 1)}
    if isinstance(key, ReduceKey):
        return {"launch_bounds": reduce_launch_bounds(key)}
    return {}
