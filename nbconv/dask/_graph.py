"""Graph-building helpers of ``nbconv.dask``: validation on the graph's metadata, chunk layouts,
weights for every task, and the assembly of per-tile results."""

from __future__ import annotations

import sys
from typing import Any

import dask.array as da
import numpy as np

from .. import _spec
from ._tiles import group_aligned

_SPECS = {
    "conv2d": _spec.conv2d_spec,
    "conv_transpose2d": _spec.conv_transpose2d_spec,
    "conv2d_input": _spec.conv2d_input_spec,
    "conv2d_weight": _spec.conv2d_weight_spec,
    "conv2d_bias": _spec.conv2d_bias_spec,
}


def chunk_meta(a: Any) -> Any:
    """An empty array of ``a``'s chunk type and dtype (``a`` itself if it is not a Dask array)."""
    return a._meta if isinstance(a, da.Array) else a


def check_input(op: str, name: str, a: Any) -> None:
    """``a`` must be a 4-D Dask array with known chunk sizes."""
    if not isinstance(a, da.Array):
        raise TypeError(f"{op}: {name} must be a dask.array.Array (use nbconv.{op} for other arrays), "
                        f"got {type(a).__name__}")
    if a.ndim != 4:
        raise ValueError(f"{op}: {name} must be 4-D (N, C, H, W), got {a.ndim}-D shape {a.shape}")
    if any(np.isnan(c) for axis in a.chunks for c in axis):
        raise ValueError(f"{op}: {name} has unknown chunk sizes; call {name}.compute_chunk_sizes() first")


def array_namespace(a: Any) -> Any:
    """The module of an array's type (numpy, cupy): where its zeros and broadcast_to live."""
    return sys.modules[type(a).__module__.split(".")[0]]


def stand_in(a: Any) -> Any:
    """For a Dask array: an array of its chunk type, dtype and full shape that holds no memory (a
    broadcast zero), so that nbconv's whole validation runs on it. Other values as they are."""
    if not isinstance(a, da.Array):
        return a
    xp = array_namespace(a._meta)
    return xp.broadcast_to(xp.zeros((), a.dtype), a.shape)


def validate(op: str, spec_of: str, **arguments: Any) -> _spec.ConvSpec:
    """The spec of nbconv's ``spec_of`` op for these arguments (Dask arrays stood in for), with
    the messages nbconv gives, raised now rather than in a worker."""
    return _SPECS[spec_of](**{k: stand_in(v) for k, v in arguments.items()})


def single_chunk(a: Any) -> Any:
    """A weight or bias for every task: plain arrays as they are, Dask arrays as one delayed chunk."""
    if isinstance(a, da.Array):
        return a.rechunk(a.shape).to_delayed().ravel()[0]
    return a


def channel_rechunked(x: da.Array, per_group: int) -> da.Array:
    """``x`` with channel chunks of whole groups (boundaries inside a group moved to its start)."""
    aligned = group_aligned(x.chunks[1], per_group)
    return x if aligned == x.chunks[1] else x.rechunk({1: aligned})


def output_channel_chunks(in_chunks: tuple[int, ...], in_per_group: int, out_per_group: int) -> tuple[int, ...]:
    return tuple(c // in_per_group * out_per_group for c in in_chunks)


def assemble(blocks: list[list[da.Array]]) -> da.Array:
    """``blocks[i][j]`` (N x C x h_i x w_j each) as one array, keeping their chunks."""
    return da.concatenate([da.concatenate(line, axis=3) for line in blocks], axis=2)
