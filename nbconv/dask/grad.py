"""Gradients of :func:`nbconv.dask.conv2d` on Dask arrays (``torch.nn.grad``'s argument order).

``conv2d_input`` gathers, per chunk of the input, the output gradient of every window that meets
it (a halo of output rows and columns); ``conv2d_weight`` and ``conv2d_bias`` add per-task
partial sums in a fixed binary tree (the same chunking gives the same bits on every run).
"""

from __future__ import annotations

from typing import Any, Sequence

import dask
import dask.array as da

from .. import grad as _grad
from ._graph import (
    array_namespace,
    assemble,
    channel_rechunked,
    check_input,
    chunk_meta,
    single_chunk,
    validate,
)
from ._tiles import Tile, gradient_tiles, output_tiles

__all__ = ["conv2d_bias", "conv2d_input", "conv2d_weight"]


def scaled_chunks(chunks: tuple[int, ...], stride: int, total: int) -> tuple[int, ...]:
    """Chunks of a length-``total`` axis that follow ``chunks`` scaled by ``stride`` (the last one
    takes what is left; empty chunks are dropped)."""
    out: list[int] = []
    start = 0
    for i, c in enumerate(chunks):
        stop = total if i == len(chunks) - 1 else min(total, start + c * stride)
        if stop > start:
            out.append(stop - start)
        start = max(start, stop)
    return tuple(out)


def _input_block(gy, w, *, cin_g, cout_g, tile_h, tile_w, chunk_h, chunk_w, args, block_info=None):
    """One task: the input gradient over ``chunk_h x chunk_w`` from the output gradient of the
    windows that meet it (``gy``), computed over their windows' region and cut to the chunk."""
    c0, c1 = block_info[0]["array-location"][1]
    g0, g1 = c0 // cout_g, c1 // cout_g
    n = gy.shape[0]
    xp = array_namespace(gy)
    out = xp.zeros((n, (g1 - g0) * cin_g, chunk_h[1] - chunk_h[0], chunk_w[1] - chunk_w[0]), gy.dtype)
    if tile_h is None or tile_w is None:
        return out
    g = _grad.conv2d_input((n, (g1 - g0) * cin_g, tile_h.in_stop - tile_h.in_start, tile_w.in_stop - tile_w.in_start),
                           w[g0 * cout_g:g1 * cout_g], gy, groups=g1 - g0,
                           padding=((tile_h.pad_near, tile_h.pad_far), (tile_w.pad_near, tile_w.pad_far)), **args)
    (ya, yb), (xa, xb) = _overlap(chunk_h, tile_h), _overlap(chunk_w, tile_w)
    if yb > ya and xb > xa:
        out[:, :, ya - chunk_h[0]:yb - chunk_h[0], xa - chunk_w[0]:xb - chunk_w[0]] = \
            g[:, :, ya - tile_h.in_start:yb - tile_h.in_start, xa - tile_w.in_start:xb - tile_w.in_start]
    return out


def _overlap(chunk: tuple[int, int], tile: Tile) -> tuple[int, int]:
    return max(chunk[0], tile.in_start), min(chunk[1], tile.in_stop)


def input_gradient(batch: int, in_channels: int, in_size: tuple[int, int], weight: Any, grad_output: da.Array,
                   stride: tuple[int, int], pads_near: tuple[int, int], dilation: tuple[int, int], groups: int,
                   chunks: tuple[tuple[int, ...], tuple[int, ...]], meta: Any) -> da.Array:
    """The gradient, over an input of ``in_size`` cut into spatial ``chunks``, of the conv2d whose
    output gradient is ``grad_output``: per chunk, the output rows and columns whose windows meet
    it, differentiated over their windows' region and cut to the chunk."""
    c_out = grad_output.shape[1]
    cin_g, cout_g = in_channels // groups, c_out // groups
    gy = channel_rechunked(grad_output, cout_g)
    (kh, kw) = weight.shape[2:]
    n_out = grad_output.shape[2:]
    rows = gradient_tiles(chunks[0], pads_near[0], kh, stride[0], dilation[0], n_out[0])
    cols = gradient_tiles(chunks[1], pads_near[1], kw, stride[1], dilation[1], n_out[1])
    w = single_chunk(weight)
    in_channel_chunks = tuple(c // cout_g * cin_g for c in gy.chunks[1])
    args = dict(stride=stride, dilation=dilation)
    blocks = []
    for a, b, th in rows:
        line = []
        for c, d, tw in cols:
            if th is None or tw is None:
                sub = gy[:, :, :1, :1]  # no window meets this chunk: zeros (the task still has a block)
            else:
                sub = gy[:, :, th.out_start:th.out_stop, tw.out_start:tw.out_stop]
            sub = sub.rechunk({2: -1, 3: -1})
            line.append(sub.map_blocks(
                _input_block, w, cin_g=cin_g, cout_g=cout_g, tile_h=th, tile_w=tw, chunk_h=(a, b),
                chunk_w=(c, d), args=args, chunks=(gy.chunks[0], in_channel_chunks, (b - a,), (d - c,)),
                dtype=grad_output.dtype, meta=meta))
        blocks.append(line)
    return assemble(blocks)


def conv2d_input(input_size: Sequence[int], weight: Any, grad_output: da.Array, stride: Any = 1, padding: Any = 0,
                 dilation: Any = 1, groups: int = 1, *, chunks: Any = None) -> da.Array:
    """:func:`nbconv.grad.conv2d_input` on a Dask ``grad_output``: a lazy Dask array of shape
    ``input_size``. Its batch chunks are ``grad_output``'s; its spatial chunks are ``chunks``
    ((H chunks), (W chunks)) if given, else ``grad_output``'s scaled by the stride."""
    op = "conv2d_input"
    check_input(op, "grad_output", grad_output)
    spec = validate(op, "conv2d_input", input_size=input_size, weight=weight, grad_output=grad_output, stride=stride,
                    padding=padding, dilation=dilation, groups=groups)
    h, w = (int(n) for n in input_size[2:])
    forward = _grad_geometry(spec, (h, w))
    if chunks is None:
        chunks = (scaled_chunks(grad_output.chunks[2], forward["stride"][0], h),
                  scaled_chunks(grad_output.chunks[3], forward["stride"][1], w))
    return input_gradient(int(input_size[0]), int(input_size[1]), (h, w), weight, grad_output, forward["stride"],
                          forward["pads_near"], forward["dilation"], spec.groups, tuple(map(tuple, chunks)),
                          chunk_meta(grad_output))


def _grad_geometry(spec, in_size) -> dict:
    """The forward conv2d behind an input-gradient spec (see nbconv._spec._transposed)."""
    (kh, kw), (dh, dw) = spec.kernel_size, spec.dilation
    return dict(stride=spec.lhs_dilation, dilation=spec.dilation,
                pads_near=(dh * (kh - 1) - spec.padding[0], dw * (kw - 1) - spec.padding[2]))


def _tree_sum(parts: list) -> Any:
    """Pairwise sums in a fixed order: ((p0 + p1) + (p2 + p3)) + ..."""
    while len(parts) > 1:
        parts = [dask.delayed(_add)(parts[i], parts[i + 1]) if i + 1 < len(parts) else parts[i]
                 for i in range(0, len(parts), 2)]
    return parts[0]


def _add(a, b):
    return a + b


def conv2d_weight(input: da.Array, weight_size: Sequence[int], grad_output: da.Array, stride: Any = 1,
                  padding: Any = 0, dilation: Any = 1, groups: int = 1) -> da.Array:
    """:func:`nbconv.grad.conv2d_weight` on Dask arrays: a lazy one-chunk array of shape
    ``weight_size`` per channel chunk of whole groups (concatenated). Per task (batch chunk x
    spatial tile x channel chunk) a partial sum; the partials of a channel chunk added in a fixed
    binary tree."""
    op = "conv2d_weight"
    check_input(op, "input", input)
    check_input(op, "grad_output", grad_output)
    spec = validate(op, "conv2d_weight", input=input, weight_size=weight_size, grad_output=grad_output, stride=stride,
                    padding=padding, dilation=dilation, groups=groups)
    cin_g, cout_g = spec.in_per_group, spec.out_per_group
    x = channel_rechunked(input, cin_g)
    (kh, kw), (sh, sw), (dh, dw) = spec.kernel_size, spec.stride, spec.dilation
    pt, _, pl, _ = spec.padding
    rows = output_tiles(x.chunks[2], pt, kh, sh, dh, spec.out_size[0])
    cols = output_tiles(x.chunks[3], pl, kw, sw, dw, spec.out_size[1])
    out_channels = tuple(c // cin_g * cout_g for c in x.chunks[1])
    gy = grad_output.rechunk({0: x.chunks[0], 1: out_channels})
    args = dict(stride=spec.stride, dilation=spec.dilation)
    n_chunks = len(x.chunks[0])
    per_channel_chunk: list[list] = [[] for _ in x.chunks[1]]
    for r in rows:
        for c in cols:
            xs = x[:, :, r.in_start:r.in_stop, c.in_start:c.in_stop].rechunk({2: -1, 3: -1}).to_delayed()
            gs = gy[:, :, r.out_start:r.out_stop, c.out_start:c.out_stop].rechunk({2: -1, 3: -1}).to_delayed()
            pads = ((r.pad_near, r.pad_far), (c.pad_near, c.pad_far))
            for k, channels in enumerate(x.chunks[1]):
                size = (channels // cin_g * cout_g, cin_g, kh, kw)
                for n in range(n_chunks):
                    per_channel_chunk[k].append(dask.delayed(_grad.conv2d_weight)(
                        xs[n, k, 0, 0], size, gs[n, k, 0, 0], padding=pads, groups=channels // cin_g, **args))
    meta = chunk_meta(input)
    tiles = [da.from_delayed(_tree_sum(parts), (channels // cin_g * cout_g, cin_g, kh, kw), dtype=spec.dtype,
                             meta=meta) for channels, parts in zip(x.chunks[1], per_channel_chunk)]
    return da.concatenate(tiles, axis=0)


def conv2d_bias(grad_output: da.Array) -> da.Array:
    """:func:`nbconv.grad.conv2d_bias` on a Dask array: per block a partial sum, the partials of a
    channel chunk added in a fixed binary tree."""
    op = "conv2d_bias"
    check_input(op, "grad_output", grad_output)
    validate(op, "conv2d_bias", grad_output=grad_output)
    blocks = grad_output.to_delayed()
    tiles = []
    for k, channels in enumerate(grad_output.chunks[1]):
        parts = [dask.delayed(_grad.conv2d_bias)(blocks[n, k, i, j]) for n in range(blocks.shape[0])
                 for i in range(blocks.shape[2]) for j in range(blocks.shape[3])]
        tiles.append(da.from_delayed(_tree_sum(parts), (channels,), dtype=grad_output.dtype,
                                     meta=chunk_meta(grad_output).ravel()))
    return da.concatenate(tiles, axis=0)
