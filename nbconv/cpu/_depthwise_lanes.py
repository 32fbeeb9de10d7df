"""Depthwise convolution with channels in the vector lanes, compiled once per kernel size, stride,
dilation, dtype and target (every size at run time), for small planes.

``_depthwise`` puts output columns in the lanes: on a 7 x 7 plane one vector per output row, and
per (image, channel) task about a hundred masked loads whose masks are computed at run time, which
cost several times the multiply-adds (ConvNeXt-T's 7x7 depthwise on 7 x 7 planes ran at 0.46x
PyTorch). Here a vector holds one pixel of ``L`` channels (the layout oneDNN computes depthwise
layers in), so no lane idles whatever the width and no load is masked:

- a task (image, block of ``L`` channels) transposes the block's input rows into a zero-padded
  channels-last plane in per-thread scratch (:func:`gather_rows`: ``L`` row loads and a register
  transpose per ``L`` columns);
- :func:`pixel_block` computes ``COLS`` output pixels of a row at a time: per kernel row, its
  ``kW`` weight vectors and each input vector are loaded once and feed every sum whose tap reads
  them; the ``COLS`` sums stay in registers across all the taps;
- :func:`scatter_pixels` transposes the channels-last output back into the block's NCHW planes.

An output is ``bias`` plus its taps in kernel order (row by row), each multiply-add fused: the
order of ``_depthwise``, so both give the same bits. Channels past the last whole block compute
with zero weights on a copy of the last channel's input, and are not stored.
"""

from __future__ import annotations

import functools

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .._numba_options import njit_serial
from .._version import __version__
from . import _generated, _scratch
from ._simd import (
    _declared,
    _fma,
    _takes,
    in_lane_plan,
    lanes_below,
    perfect_shuffle_plan,
    vector_args,
)
from ._target import target, target_lanes
from ._threads import thread_count

#: Output pixels per block. Registers: the block's sums, one kernel row of weight vectors and an
#: input vector; 7 + 7 + 1 of AVX2's 16 for a 7x7 kernel. Seven columns divide the planes of
#: MobileNet, EfficientNet and ConvNeXt (7, 14, 28, 56, 112): no column computed twice.
COLS = 7


def lanes(dtype) -> int:
    """Elements of ``dtype`` in one vector register of the target."""
    return target_lanes(dtype)


#: Most scratch elements per thread (the padded channels-last plane and the output's): 8 MiB of
#: float32. Larger planes take ``_depthwise``, which packs one channel at a time.
MAX_SCRATCH_ELEMS = 1 << 21


def applies(spec) -> bool:
    """Depthwise without a channel multiplier, no input dilation, padding of at least zero on
    every side, at most ``_generated.MAX_TAPS`` taps and a kernel row that fits in registers
    beside the block's sums, at least one image and one output, scratch within
    ``MAX_SCRATCH_ELEMS``."""
    kh, kw = spec.kernel_size
    return (spec.in_per_group == 1 and spec.out_per_group == 1 and spec.batch > 0
            and spec.lhs_dilation == (1, 1) and min(spec.padding) >= 0 and min(spec.out_size) > 0
            and kh * kw <= _generated.MAX_TAPS and COLS + kw + 1 < target().vector_registers
            and scratch_elems(spec, lanes(spec.dtype)) <= MAX_SCRATCH_ELEMS)


def prefers(spec) -> bool:
    """Where this kernel beats ``_depthwise``: kernels 5 or more wide, strides over 1, and
    outputs at most 14 wide. Time against ``_depthwise``'s, interleaved, on a 2-core Zen 3 (AVX2),
    float32, batches 8 and 2, two sittings (``python docs/depthwise_lanes.py``): 7x7 0.40-0.90,
    5x5 0.39-0.97, 3x3 at stride 2 0.43-0.90, 3x3 at stride 1 on 7 and 14 pixels 0.72-1.04; 3x3 at
    stride 1 on 28 pixels and more 0.90-1.26, which stays with ``_depthwise``."""
    return spec.kernel_size[1] >= 5 or max(spec.stride) > 1 or spec.out_size[1] <= 14


def _transpose(builder, rows, n):
    """``rows`` (``n`` vectors of ``n`` lanes) transposed with register shuffles: float32's
    in-lane plan (a third of the instructions on AVX2, ``docs/performance.md`` round 14), else
    perfect shuffles."""
    mask_type = ir.VectorType(ir.IntType(32), n)
    float32 = isinstance(rows[0].type.element, ir.FloatType)
    for stage in in_lane_plan(n) if float32 and n in (8, 16) else perfect_shuffle_plan(n):
        new = [None] * n
        for d, a, b, mask in stage:
            new[d] = builder.shuffle_vector(rows[a], rows[b], ir.Constant(mask_type, mask))
        rows = new
    return rows


def _helpers(context, builder, signature, args, bits):
    values, size, n, vec, intp = vector_args(context, builder, signature, args, bits)

    def const(i):
        return ir.Constant(intp, i)

    def at(base, index):
        return builder.bitcast(builder.gep(base, [index], inbounds=True), vec.as_pointer())

    return values, size, n, vec, const, at


def gather_rows(bits: int):
    """An ``@intrinsic`` ``gather(src, s0, s_pitch, valid, dst, d0, n)``:

    ``dst[d0 + j * L + l] = src[s0 + min(l, valid - 1) * s_pitch + j]`` for ``j < n``, ``l < L``

    (``L`` lanes of ``bits``): ``n`` pixels of ``L`` channel rows ``s_pitch`` apart into pixel
    vectors, the lanes past ``valid`` a copy of the last valid row. Per ``L`` columns: ``L`` row
    loads (masked past ``n``: nothing past a row's end is read), a register transpose, and the
    stores of the pixels below ``n`` (nothing past ``dst[d0 + n * L - 1]`` is written)."""

    @intrinsic
    def gather(typingctx, src, s0, s_pitch, valid, dst, d0, n):
        if not _takes((src, dst), (s0, s_pitch, valid, d0, n)):
            return None
        sig = types.void(src, s0, s_pitch, valid, dst, d0, n)

        def codegen(context, builder, signature, args):
            from numba.core import cgutils

            values, size, lanes_n, vec, const, at = _helpers(context, builder, signature, args, bits)
            src_p, s0_i, pitch_i, valid_i, dst_p, d0_i, n_i = values
            i32 = ir.IntType(32)
            mask_type = ir.VectorType(ir.IntType(1), lanes_n)
            masked_load = _declared(builder, f"llvm.masked.load.v{lanes_n}{vec.element.intrinsic_name}.p0",
                                    ir.FunctionType(vec, [vec.as_pointer(), i32, mask_type, vec]))
            last = builder.sub(valid_i, const(1))
            starts = []
            for l_ in range(lanes_n):
                row = builder.select(builder.icmp_signed("<", const(l_), valid_i), const(l_), last)
                starts.append(builder.add(s0_i, builder.mul(row, pitch_i)))

            def tile(j0, count):
                if count is None:
                    rows = [builder.load(at(src_p, builder.add(s, j0)), align=size) for s in starts]
                else:
                    mask = lanes_below(builder, count, lanes_n)
                    rows = [builder.call(masked_load, [at(src_p, builder.add(s, j0)), ir.Constant(i32, size), mask,
                                                       ir.Constant(vec, None)]) for s in starts]
                pixels = _transpose(builder, rows, lanes_n)
                for j, pixel in enumerate(pixels):
                    target_p = at(dst_p, builder.add(d0_i, builder.mul(builder.add(j0, const(j)), const(lanes_n))))
                    if count is None:
                        builder.store(pixel, target_p, align=size)
                    else:
                        with builder.if_then(builder.icmp_signed("<", const(j), count)):
                            builder.store(pixel, target_p, align=size)

            full = builder.sdiv(n_i, const(lanes_n))
            with cgutils.for_range(builder, full) as loop:
                tile(builder.mul(loop.index, const(lanes_n)), None)
            j0 = builder.mul(full, const(lanes_n))
            rest = builder.sub(n_i, j0)
            with builder.if_then(builder.icmp_signed(">", rest, const(0))):
                tile(j0, rest)
            return context.get_dummy_value()

        return sig, codegen

    return gather


def scatter_pixels(bits: int):
    """An ``@intrinsic`` ``scatter(src, s0, dst, d0, d_pitch, valid, n)``:

    ``dst[d0 + l * d_pitch + p] = src[s0 + p * L + l]`` for ``p < n``, ``l < valid``

    (``L`` lanes of ``bits``): pixel vectors back into channel rows ``d_pitch`` apart. Per ``L``
    pixels: ``L`` loads, a register transpose, ``valid`` row stores; with ``n >= L`` the last
    ``L`` pixels end at ``n`` (some stored twice, the same values), below that the stores are
    masked. Reads up to ``L * L`` elements from ``s0`` whatever ``n``."""

    @intrinsic
    def scatter(typingctx, src, s0, dst, d0, d_pitch, valid, n):
        if not _takes((src, dst), (s0, d0, d_pitch, valid, n)):
            return None
        sig = types.void(src, s0, dst, d0, d_pitch, valid, n)

        def codegen(context, builder, signature, args):
            from numba.core import cgutils

            values, size, lanes_n, vec, const, at = _helpers(context, builder, signature, args, bits)
            src_p, s0_i, dst_p, d0_i, pitch_i, valid_i, n_i = values
            i32 = ir.IntType(32)
            mask_type = ir.VectorType(ir.IntType(1), lanes_n)
            masked_store = _declared(builder, f"llvm.masked.store.v{lanes_n}{vec.element.intrinsic_name}.p0",
                                     ir.FunctionType(ir.VoidType(), [vec, vec.as_pointer(), i32, mask_type]))

            def tile(p0, mask):
                pixels = [builder.load(at(src_p, builder.add(s0_i, builder.mul(builder.add(p0, const(j)), const(lanes_n)))),
                                       align=size) for j in range(lanes_n)]
                rows = _transpose(builder, pixels, lanes_n)
                for l_, row in enumerate(rows):
                    target_p = at(dst_p, builder.add(builder.add(d0_i, p0), builder.mul(const(l_), pitch_i)))
                    store_it = builder.icmp_signed("<", const(l_), valid_i) if l_ else ir.Constant(ir.IntType(1), 1)
                    with builder.if_then(store_it, likely=True):
                        if mask is None:
                            builder.store(row, target_p, align=size)
                        else:
                            builder.call(masked_store, [row, target_p, ir.Constant(i32, size), mask])

            wide = builder.icmp_signed(">=", n_i, const(lanes_n))
            with builder.if_else(wide) as (then, otherwise):
                with then:
                    tiles = builder.sdiv(builder.add(n_i, const(lanes_n - 1)), const(lanes_n))
                    last = builder.sub(n_i, const(lanes_n))
                    with cgutils.for_range(builder, tiles) as loop:
                        p0 = builder.mul(loop.index, const(lanes_n))
                        tile(builder.select(builder.icmp_signed("<", p0, last), p0, last), None)
                with otherwise:
                    tile(const(0), lanes_below(builder, n_i, lanes_n))
            return context.get_dummy_value()

        return sig, codegen

    return scatter


def pixel_block(kernel_size, stride, dilation, cols: int, bits: int):
    """An ``@intrinsic`` ``block(xs, x0, pitch, w, w0, b, b0, ys, y0, n_store)``:

    ``ys[y0 + c * L + l] = b[b0 + l] + sum_(kh, kw) w[w0 + (kh * kW + kw) * L + l] *
    xs[x0 + kh * dH * pitch + (c * sW + kw * dW) * L + l]``

    for ``c < min(cols, n_store)``, ``l < L``: ``cols`` output pixels of a row in a channels-last
    plane (rows ``pitch`` elements apart), the terms in kernel order, fused. Per kernel row, its
    ``kW`` weight vectors are loaded once and every input vector once, each feeding the sums of
    the taps that read it; the ``cols`` sums stay in registers."""
    (kh_n, kw_n), (_, sw), (dh, dw) = kernel_size, stride, dilation
    reads: dict[int, list[tuple[int, int]]] = {}
    for c in range(cols):
        for kw in range(kw_n):
            reads.setdefault(c * sw + kw * dw, []).append((c, kw))
    reads = dict(sorted(reads.items()))

    @intrinsic
    def block(typingctx, xs, x0, pitch, w, w0, b, b0, ys, y0, n_store):
        if not _takes((xs, w, b, ys), (x0, pitch, w0, b0, y0, n_store)):
            return None
        sig = types.void(xs, x0, pitch, w, w0, b, b0, ys, y0, n_store)

        def codegen(context, builder, signature, args):
            values, size, lanes_n, vec, const, at = _helpers(context, builder, signature, args, bits)
            xs_p, x0_i, pitch_i, w_p, w0_i, b_p, b0_i, ys_p, y0_i, n_i = values
            bias = builder.load(at(b_p, b0_i), align=size)
            sums = [bias] * cols
            # each input column's load and multiply-adds stay between two empty asm statements that
            # take and give the sums (and clobber memory): else LLVM's scheduler hoists the loads
            # and spills what does not fit in the registers (13 spills for a 7x7 block on AVX2 with
            # a statement per kernel row, 120 without; the three took the same time on a Zen 3,
            # whose spills stay in L1, within 4%: the statements are for other cores)
            sum_types = ir.LiteralStructType([vec] * cols)
            constraint = ",".join(["=x"] * cols + [str(i) for i in range(cols)] + ["~{memory}"])
            barrier = ir.InlineAsm(ir.FunctionType(sum_types, [vec] * cols), "", constraint, side_effect=True)
            for kh in range(kh_n):
                if kh:
                    tied = builder.call(barrier, sums)
                    sums = [builder.extract_value(tied, c) for c in range(cols)]
                row0 = builder.add(x0_i, builder.mul(const(kh * dh), pitch_i))
                weights = [builder.load(at(w_p, builder.add(w0_i, const((kh * kw_n + kw) * lanes_n))), align=size)
                           for kw in range(kw_n)]
                for col, pairs in reads.items():
                    if col:
                        tied = builder.call(barrier, sums)
                        sums = [builder.extract_value(tied, c) for c in range(cols)]
                    value = builder.load(at(xs_p, builder.add(row0, const(col * lanes_n))), align=size)
                    for c, kw in pairs:
                        sums[c] = _fma(builder, weights[kw], value, sums[c])
            for c in range(cols):
                target_p = at(ys_p, builder.add(y0_i, const(c * lanes_n)))
                if c == 0:
                    builder.store(sums[c], target_p, align=size)
                    continue
                with builder.if_then(builder.icmp_signed("<", const(c), n_i), likely=True):
                    builder.store(sums[c], target_p, align=size)
            return context.get_dummy_value()

        return sig, codegen

    return block


#: ``padding_mode`` as the driver's ``mode`` argument.
MODES = {"zeros": 0, "reflect": 1, "replicate": 2, "circular": 3}


@njit_serial
def source_index(q, size, mode):
    """The input index padded position ``q`` (input coordinates) copies: ``mode`` 1 reflect, 2
    replicate, 3 circular (``nbconv._padding_modes.source_index``; the caller keeps ``q`` within
    the mode's reach)."""
    if 0 <= q < size:
        return q
    if mode == 1:
        return -q if q < 0 else 2 * (size - 1) - q
    if mode == 2:
        return min(max(q, 0), size - 1)
    return q % size


@njit_serial
def fill_padding(xs, h, w, pt, pb, pl, pr, wp, lanes, mode):
    """Fill the padding of the channels-last plane ``xs`` (``h`` x ``w`` pixels of ``lanes`` at
    row ``pt``, column ``pl``, rows ``wp`` pixels apart) with copies of its pixels by ``mode``:
    first the padding columns of the pixels' rows, then the padding rows whole (so the corners
    copy copies, as a padded copy along H of one along W)."""
    for iy in range(h):
        row = (iy + pt) * wp
        for k in range(pl + pr):
            j = k if k < pl else w + k  # the padded column
            d, s = (row + j) * lanes, (row + pl + source_index(j - pl, w, mode)) * lanes
            for l in range(lanes):
                xs[d + l] = xs[s + l]
    span = (pl + w + pr) * lanes
    for k in range(pt + pb):
        i = k if k < pt else h + k  # the padded row
        d, s = i * wp * lanes, (pt + source_index(i - pt, h, mode)) * wp * lanes
        for e in range(span):
            xs[d + e] = xs[s + e]


def plane_geometry(spec) -> tuple[int, int]:
    """(rows, columns) of the padded channels-last plane: the padded input, or what the outputs
    read if more; at least as wide as a block of ``COLS`` outputs reads."""
    (sh, sw), (dh, dw), (kh, kw) = spec.stride, spec.dilation, spec.kernel_size
    (h, w), (oh, ow) = spec.in_size, spec.out_size
    pt, pb, pl, pr = spec.padding
    hp = max(h + pt + pb, (oh - 1) * sh + (kh - 1) * dh + 1)
    wp = max(w + pl + pr, (max(ow, COLS) - 1) * sw + (kw - 1) * dw + 1)
    return hp, wp


def scratch_elems(spec, lanes_n: int) -> int:
    """Per-thread scratch, ``L`` wide: the padded input plane; the output plane and a tile of
    slack (``scatter_pixels`` reads ``L * L`` elements however few pixels); the weights of a
    channel block (a vector per tap) and its bias."""
    hp, wp = plane_geometry(spec)
    oh, ow = spec.out_size
    taps = spec.kernel_size[0] * spec.kernel_size[1]
    return (hp * wp + oh * ow + lanes_n + taps + 1) * lanes_n


_DRIVER = '''
from nbconv.cpu._depthwise_lanes import fill_padding, gather_rows, pixel_block, scatter_pixels

_gather = gather_rows({bits})
_scatter = scatter_pixels({bits})
_block = pixel_block({kernel_size}, {stride}, {dilation}, {cols}, {bits})

@njit_parallel
def forward(x, w, b, out, scratch, pt, pb, pl, pr, hp, wp, mode):
    """out (N, C, OH, OW) = the depthwise convolution of x (N, C, H, W) by w (C, 1, {kh}, {kw}) + b,
    stride {stride}, dilation {dilation}, the padding zeros (mode 0) or copies of pixels (1
    reflect, 2 replicate, 3 circular): tasks of (image, block of {lanes} channels)."""
    n_img, c, h, wi = x.shape
    oh, ow = out.shape[2], out.shape[3]
    blocks = (c + {lanes} - 1) // {lanes}
    x_flat, out_flat, w_flat = x.reshape(-1), out.reshape(-1), w.reshape(-1)
    pitch = wp * {lanes}
    y0 = hp * pitch
    w0 = y0 + (oh * ow + {lanes}) * {lanes}  # the block's weights, a vector per tap, then its bias
    b0 = w0 + {w_block}
    iy1 = min(h, hp - pt)
    for task in numba.prange(n_img * blocks):
        xs = scratch[numba.get_thread_id()]
        n = task // blocks
        cb = task - n * blocks
        valid = min({lanes}, c - cb * {lanes})
        _gather(w_flat, cb * {w_block}, {taps}, valid, xs, w0, {taps})
        _gather(b, cb * {lanes}, 1, valid, xs, b0, 1)
        s0 = (n * c + cb * {lanes}) * h * wi
        for iy in range(iy1):
            _gather(x_flat, s0 + iy * wi, h * wi, valid, xs, ((iy + pt) * wp + pl) * {lanes}, wi)
        if mode:
            fill_padding(xs, h, wi, pt, pb, pl, pr, wp, {lanes}, mode)
        for oy in range(oh):
            x_row = oy * {sh} * pitch
            if ow < {cols}:
                _block(xs, x_row, pitch, xs, w0, xs, b0, xs, y0 + oy * ow * {lanes}, ow)
            else:
                for bx in range(0, ow, {cols}):
                    ox = min(bx, ow - {cols})  # the last block moves left: a few pixels computed twice
                    _block(xs, x_row + ox * {sw} * {lanes}, pitch, xs, w0, xs, b0, xs, y0 + (oy * ow + ox) * {lanes},
                           {cols})
        _scatter(xs, y0, out_flat, (n * c + cb * {lanes}) * oh * ow, oh * ow, valid, oh * ow)
'''


def module_source(kernel_size, stride, dilation, bits: int, itemsize: int) -> str:
    """The generated module for one kernel size, stride, dilation and vector width (of elements
    of ``itemsize`` bytes); every size is a run-time value."""
    lanes_n = bits // 8 // itemsize
    taps = kernel_size[0] * kernel_size[1]
    what = (f"depthwise {kernel_size[0]}x{kernel_size[1]} with channels in the lanes, stride {stride}, "
            f"dilation {dilation}, {lanes_n} lanes of {bits} bits")
    return _generated.HEADER.format(generator=__name__, version=__version__, what=what) + _DRIVER.format(
        bits=bits, kernel_size=tuple(kernel_size), stride=tuple(stride), dilation=tuple(dilation), cols=COLS,
        lanes=lanes_n, taps=taps, w_block=taps * lanes_n, sh=stride[0], sw=stride[1], kh=kernel_size[0],
        kw=kernel_size[1])


@functools.lru_cache(maxsize=64)
def _module(kernel_size, stride, dilation, itemsize: int):
    return _generated.load(module_source(kernel_size, stride, dilation, target().vector_bits, itemsize),
                           "nbconv_dwlanes")


def depthwise_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, out: np.ndarray, spec) -> None:
    """``out`` = the depthwise convolution of ``spec`` (C-contiguous arrays, ``w`` (C, 1, kH, kW),
    ``b`` (C,) or None, where :func:`applies`)."""
    lanes_n = lanes(x.dtype)
    b = np.zeros(spec.out_channels, x.dtype) if b is None else b
    hp, wp = plane_geometry(spec)
    threads = thread_count()
    mode = MODES[spec.padding_mode]
    # zeros: the padding is never written, every call of this layout writes the same pixels;
    # other modes write the whole padding in every task
    key = ("depthwise_lanes", x.dtype.str, spec.in_size, spec.out_size, spec.padding, hp, wp, mode, threads)
    scratch, = _scratch.reused(key, lambda: (np.zeros((threads, scratch_elems(spec, lanes_n)), x.dtype),))
    pt, pb, pl, pr = spec.padding
    _module(spec.kernel_size, spec.stride, spec.dilation, x.dtype.itemsize).forward(
        x, w, b, out, scratch, pt, pb, pl, pr, hp, wp, mode)
