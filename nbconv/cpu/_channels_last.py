"""The depthwise weight gradient on the CPU with channels in the vector lanes (for narrow planes).

Output columns in the lanes leave most of a vector idle on a 7- or 14-wide row. Here a vector
holds one pixel of ``L`` channels (``L = _simd.lanes(dtype)``: 16 float32, 8 float64): a task
(slice of the images, block of ``L`` channels) transposes each image's input planes into a
zero-padded channels-last plane and its output-gradient planes into a channels-last one
(``_simd.transpose_tile``: register shuffles), then one output row at a time adds ``gradient x
input`` to a vector sum per tap (``_wrow``). Every offset and trip count is a constant of the
generated source. Each image's sums are in the input dtype, added in image order to float64
totals per slice, and the slices are added in order: the same bits whatever the thread count.

(The forward of this layout, generated per geometry, is gone: ``_depthwise_lanes`` computes it
with every size at run time, in the same sum order, faster: ``docs/performance.md``, round 14.)
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from .._version import __version__
from . import _generated, _scratch, _simd
from ._threads import thread_count

#: Most scratch elements per thread (the padded channels-last plane, the unpadded one and the
#: output gradient's): 8 MiB of float32. A narrow output of a huge, strided input would otherwise ask for
#: a copy of whole planes per thread; such calls take the other kernels.
MAX_SCRATCH_ELEMS = 1 << 21


def _plane_sizes(spec, geo: Geometry) -> tuple[int, int, int]:
    """Elements of the per-thread planes, each ``lanes`` wide: the padded input plane, the unpadded
    one, the output gradient's plane."""
    (h, w), (oh, ow) = spec.in_size, spec.out_size
    return geo.hp * geo.wp * geo.lanes, h * w * geo.lanes, oh * ow * geo.lanes


def scratch_elems(spec) -> int:
    """Scratch elements per thread (:func:`_plane_sizes`)."""
    return sum(_plane_sizes(spec, geometry(spec)))


def _plane_scratch(spec, geo: Geometry, dtype, op: str) -> tuple[np.ndarray, ...]:
    """Per-thread scratch (threads, elements) for each plane of :func:`_plane_sizes`, kept for
    the next call of ``op`` on ``spec`` (``_scratch``: the padding stays zero)."""
    threads = thread_count()
    return _scratch.reused(("channels_last", op, spec, threads),
                           lambda: tuple(aligned_zeros(threads, n, dtype) for n in _plane_sizes(spec, geo)))


def _fits(spec) -> bool:
    """Depthwise without a channel multiplier (one input and one output channel per group), no
    input dilation, scratch within ``MAX_SCRATCH_ELEMS``."""
    return (spec.batch > 0 and spec.in_per_group == 1 and spec.out_per_group == 1
            and spec.lhs_dilation == (1, 1) and scratch_elems(spec) <= MAX_SCRATCH_ELEMS)


#: The weight gradient unrolls one output row of multiply-adds (width x taps) and keeps a vector
#: sum per tap in registers across it: at most this many of each.
MAX_WEIGHT_GRAD_ROW, MAX_WEIGHT_GRAD_TAPS = 512, 25
#: Tasks the weight gradient aims for: channel blocks x slices of the batch (each slice's sums are
#: kept apart and added in slice order, so the count depends on the spec alone, not the threads).
WEIGHT_GRAD_TASKS = 16


def applies_weight_grad(spec) -> bool:
    """The weight gradient of a convolution that :func:`_fits`, with at most
    ``MAX_WEIGHT_GRAD_TAPS`` taps and ``MAX_WEIGHT_GRAD_ROW`` multiply-adds per output row."""
    taps = spec.kernel_size[0] * spec.kernel_size[1]
    return taps <= MAX_WEIGHT_GRAD_TAPS and taps * spec.out_size[1] <= MAX_WEIGHT_GRAD_ROW and _fits(spec)


class Geometry(NamedTuple):
    lanes: int
    blocks: int  # channel blocks
    hp: int  # rows of the padded plane (those some output reads)
    wp: int
    rows: tuple[int, int]  # input rows copied: [start, stop)
    cols: tuple[int, int]


@functools.lru_cache(maxsize=256)
def geometry(spec) -> Geometry:
    (h, w), (oh, ow) = spec.in_size, spec.out_size
    (kh, kw), (sh, sw), (dh, dw) = spec.kernel_size, spec.stride, spec.dilation
    pt, _, pl, _ = spec.padding
    lanes = _simd.lanes(spec.dtype)
    hp, wp = (oh - 1) * sh + (kh - 1) * dh + 1, (ow - 1) * sw + (kw - 1) * dw + 1
    rows = (max(0, -pt), max(max(0, -pt), min(h, hp - pt)))
    cols = (max(0, -pl), max(max(0, -pl), min(w, wp - pl)))
    return Geometry(lanes, -(-spec.out_channels // lanes), hp, wp, rows, cols)


def _columns_read(cols: int, kw_n: int, sw: int, dw: int) -> dict[int, list[tuple[int, int]]]:
    """The input columns (relative to a block's first) that ``cols`` output columns read, in
    order, each with the (output column, kernel column) pairs that read it."""
    reads: dict[int, list[tuple[int, int]]] = {}
    for c in range(cols):
        for kw in range(kw_n):
            reads.setdefault(c * sw + kw * dw, []).append((c, kw))
    return dict(sorted(reads.items()))


_TO_LANES = '''

@njit_serial
def {name}(src, s0, valid, t):
    """t[p * {lanes} + l] = src[s0 + l * {plane} + p] for p < {plane} and lanes l < valid (zeros in
    the other lanes)."""
    if valid == {lanes} and {plane} >= {lanes}:
        for p0 in range(0, {plane} - {lanes}, {lanes}):
            transpose_tile(src, s0 + p0, {plane}, t, p0 * {lanes}, {lanes})
        transpose_tile(src, s0 + {plane} - {lanes}, {plane}, t, ({plane} - {lanes}) * {lanes}, {lanes})
    else:
        for l in range({lanes}):
            for p in range({plane}):
                t[_U(p * {lanes} + l)] = src[_U(s0 + l * {plane} + p)] if l < valid else 0.0
'''

_PACK = '''

@njit_serial
def _pack(x_flat, s0, valid, t, xs):
    """The planes x_flat[s0 + l * {plane} :][: {plane}] (lanes l < valid; zeros in the others) into the
    padded channels-last plane xs (through t, the unpadded one)."""
    _lanes_in(x_flat, s0, valid, t)
    for iy in range({iy0}, {iy1}):
        d = ((iy + {pt}) * {wp} + {ix0} + {pl}) * {lanes}
        s = (iy * {in_w} + {ix0}) * {lanes}
        for i in range({copy}):
            xs[_U(d + i)] = t[_U(s + i)]
'''

def _header(what: str) -> str:
    return (_generated.HEADER.format(generator=__name__, version=__version__, what=what)
            + "\nfrom nbconv.cpu._simd import transpose_tile\n")


def _common_format(spec, geo: Geometry) -> dict:
    (h, w), (oh, ow) = spec.in_size, spec.out_size
    return dict(lanes=geo.lanes, blocks=geo.blocks, plane=h * w, out_plane=oh * ow, oh=oh, ow=ow, wp=geo.wp,
                pt=spec.padding[0], pl=spec.padding[2], in_w=w, iy0=geo.rows[0], iy1=geo.rows[1],
                ix0=geo.cols[0], copy=(geo.cols[1] - geo.cols[0]) * geo.lanes, sh=spec.stride[0], sw=spec.stride[1],
                taps=spec.kernel_size[0] * spec.kernel_size[1])


def aligned_zeros(rows: int, cols: int, dtype) -> np.ndarray:
    """Zeros (rows, cols') with cols' >= cols a whole number of vectors and every row starting on
    a 64-byte boundary (a vector load across two cache lines costs two)."""
    per = _simd.VECTOR_BYTES // np.dtype(dtype).itemsize
    cols = -(-cols // per) * per
    buf = np.zeros(rows * cols + per, dtype)
    start = (-buf.ctypes.data % _simd.VECTOR_BYTES) // buf.itemsize
    return buf[start:start + rows * cols].reshape(rows, cols)


def _weight_row_source(spec, geo: Geometry) -> list[str]:
    """``_wrow``: ``acc[t * L + l] += sum_c g[g0 + c * L + l] * xs[x0 + (kh * dH * Wp + c * sW + kw * dW)
    * L + l]`` for every tap t = (kh, kw): one output row's terms, in column order per tap."""
    (kh_n, kw_n), (_, sw), (dh, dw) = spec.kernel_size, spec.stride, spec.dilation
    lanes, ow = geo.lanes, spec.out_size[1]
    lines = ["", "", "@njit_serial", "def _wrow(xs, x0, g, g0, acc):", f"    for l in range({lanes}):"]
    lines += [f"        s{t} = acc[_U({t * lanes} + l)]" for t in range(kh_n * kw_n)]
    lines += [f"        d{c} = g[_U(g0 + {c * lanes} + l)]" for c in range(ow)]
    reads = _columns_read(ow, kw_n, sw, dw)
    for kh in range(kh_n):
        for col, pairs in reads.items():
            lines.append(f"        v = xs[_U(x0 + {(kh * dh * geo.wp + col) * lanes} + l)]")
            lines += [f"        s{kh * kw_n + kw} += d{c} * v" for c, kw in pairs]
    lines += [f"        acc[_U({t * lanes} + l)] = s{t}" for t in range(kh_n * kw_n)]
    return lines


_WEIGHT_DRIVER = '''

@njit_parallel
def weight_grad(x, gy, part, slices, xs_all, t_all, g_all, acc_all):
    """part (slices, {blocks}, {taps}, {lanes}), float64: per slice of the images and block of {lanes}
    channels, sum over its images n, rows oy and columns ox of gy[n, c, oy, ox] * x_pad[n, c, oy * sH +
    kh * dH, ox * sW + kw * dW], each image's sums in the input dtype, added in image order."""
    n_img, c = x.shape[0], x.shape[1]
    x_flat = x.reshape(-1)
    g_flat = gy.reshape(-1)
    per = -(-n_img // slices)
    for task in numba.prange(slices * {blocks}):
        tid = numba.get_thread_id()
        xs = xs_all[tid]
        g = g_all[tid]
        acc = acc_all[tid]
        sl = task // {blocks}
        c0 = (task - sl * {blocks}) * {lanes}
        valid = min({lanes}, c - c0)
        p0 = task * {taps_lanes}
        for i in range({taps_lanes}):
            part[p0 + i] = 0.0
        for n in range(sl * per, min(n_img, (sl + 1) * per)):
            _pack(x_flat, (n * c + c0) * {plane}, valid, t_all[tid], xs)
            _lanes_out(g_flat, (n * c + c0) * {out_plane}, valid, g)
            for i in range({taps_lanes}):
                acc[i] = 0.0
            for oy in range({oh}):
                _wrow(xs, oy * {row_step}, g, oy * {ow_lanes}, acc)
            for i in range({taps_lanes}):
                part[p0 + i] += acc[i]
'''


def weight_grad_source(spec) -> str:
    """The generated weight-gradient module for the forward ``spec``."""
    geo = geometry(spec)
    fmt = _common_format(spec, geo)
    fmt.update(taps_lanes=fmt["taps"] * geo.lanes, row_step=spec.stride[0] * geo.wp * geo.lanes,
               ow_lanes=spec.out_size[1] * geo.lanes)
    (h, w), (oh, ow), (kh, kw) = spec.in_size, spec.out_size, spec.kernel_size
    what = (f"depthwise weight gradient, {geo.lanes} channels per vector, kernel {kh}x{kw}, stride {spec.stride}, "
            f"dilation {spec.dilation}, {h}x{w} -> {oh}x{ow}")
    return (_header(what) + _TO_LANES.format(name="_lanes_in", **fmt)
            + _TO_LANES.format(name="_lanes_out", **dict(fmt, plane=fmt["out_plane"])) + _PACK.format(**fmt)
            + "\n".join(_weight_row_source(spec, geo)) + "\n" + _WEIGHT_DRIVER.format(**fmt))


@functools.lru_cache(maxsize=128)
def _weight_module(spec):
    return _generated.load(weight_grad_source(spec), "nbconv_channels_last_wgrad")


def weight_grad_slices(spec) -> int:
    """Slices of the batch per channel block: ``WEIGHT_GRAD_TASKS`` tasks in all where the batch
    allows."""
    return max(1, min(spec.batch, -(-WEIGHT_GRAD_TASKS // geometry(spec).blocks)))


def depthwise_weight_grad(x: np.ndarray, gy: np.ndarray, dw: np.ndarray, spec) -> None:
    """``dw`` (C, 1, kH, kW) = the weight gradient of the depthwise convolution ``spec`` given its
    input ``x`` and output gradient ``gy`` (C-contiguous)."""
    geo = geometry(spec)
    taps, slices = spec.kernel_size[0] * spec.kernel_size[1], weight_grad_slices(spec)
    part = np.empty(slices * geo.blocks * taps * geo.lanes, np.float64)
    xs, t, g = _plane_scratch(spec, geo, x.dtype, "weight_grad")
    acc = aligned_zeros(thread_count(), taps * geo.lanes, x.dtype)  # zeroed by each task
    _weight_module(spec).weight_grad(x, gy, part, slices, xs, t, g, acc)
    total = part.reshape(slices, geo.blocks, taps, geo.lanes).sum(axis=0)
    dw[...] = total.transpose(0, 2, 1).reshape(geo.blocks * geo.lanes, taps)[:spec.out_channels].reshape(dw.shape)
