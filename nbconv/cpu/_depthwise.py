"""Depthwise convolution on the CPU compiled once per kernel size, stride, dilation, dtype and target.

One input channel per group, any channel multiplier, any padding (negative: cropped), no input
dilation. Every size (batch, channels, image, padding) is a run-time value, so a network's
depthwise layers of one kind (MobileNetV2's 3x3 at stride 1 on 112, 56, 28, 14 and 7 pixels) share
one compiled kernel, where ``_rowblock`` and ``_channels_last`` compile one per geometry (about 4
and 10 s each on a 2-core Zen 3: ``python docs/first_forward.py``).

A task (image, input channel) packs the channel's plane once into a zero-padded plane split into
``sH x sW`` phase planes (padded pixel ``(r, c)`` goes to phase ``(r % sH, c % sW)`` at ``(r // sH,
c // sW)``), so that every tap of every stride reads a run of consecutive elements; outputs of
at most a vector at column stride 1 skip the packing and read the input where it lies, with
masked loads where a tap meets padding (:func:`reads_directly`). Then, for each
of the channel's output channels, :func:`depthwise_rows` computes ``R`` output rows x one vector
of columns at a time (output columns in the lanes, read and written with plain vector loads and
stores; the last vector of a row moves left to end at the row's end; a row narrower than a
vector is stored whole where its excess lands on rows stored after it, else masked). Each input vector is loaded once per block and feeds every sum whose
tap reads it; the weights are broadcast once per call when they fit in registers.

An output is ``bias`` plus its taps in kernel order (row by row), each multiply-add fused: the
order of the reference, fixed by the kernel size, so results are the same whatever the thread
count, the image size or the blocking (columns computed twice get the same bits).
"""

from __future__ import annotations

import functools

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .._numba_options import njit_serial
from .._version import __version__
from . import _generated, _pointwise, _scratch
from ._simd import (
    _declared,
    _fma,
    _splat,
    _takes,
    copy_step1,
    copy_step2,
    lanes_below,
    vector_args,
)
from ._target import target, target_lanes
from ._threads import thread_count

#: Output rows per block (sums in registers beside the weights and the loaded input vectors).
ROWS = 4
#: Output rows per block on planes of ``SMALL_PLANE_ROWS`` output rows: one block of 7 (two on 14
#: rows) instead of blocks of 4 whose last moves up to recompute rows, and each weight broadcast
#: once per 7 rows. Interleaved, 2-core Zen 3, batch 8, two sittings (``python
#: docs/depthwise_rows.py``): 7 x 7 planes 0.72-0.88x the time of blocks of 4, 14 x 14 0.88-1.00x.
#: On 28 x 28 and larger 3x3 planes blocks of 7 took 1.05-1.11x in a first trial, so those keep
#: blocks of 4.
SMALL_ROWS = 7
SMALL_PLANE_ROWS = range(7, 15)


def vector_lanes(dtype) -> int:
    """Elements of ``dtype`` per vector register of the target."""
    return target_lanes(dtype)


def applies(spec) -> bool:
    """Depthwise (one input channel per group), at least one image and one output, no input
    dilation (a transposed convolution's stride), at most ``_generated.MAX_TAPS`` taps."""
    kh, kw = spec.kernel_size
    return (spec.in_per_group == 1 and spec.batch > 0 and spec.lhs_dilation == (1, 1)
            and kh * kw <= _generated.MAX_TAPS and min(spec.out_size) > 0)


def tap_reads(kernel_size, stride, dilation) -> tuple[tuple[int, int, int], ...]:
    """For each tap in kernel order, (phase plane, row offset, column offset) of what output pixel
    (0, 0) reads in the phase planes (output ``(oy, ox)`` reads ``(oy + row, ox + column)``)."""
    (kh_n, kw_n), (sh, sw), (dh, dw) = kernel_size, stride, dilation
    return tuple(((kh * dh % sh) * sw + kw * dw % sw, kh * dh // sh, kw * dw // sw)
                 for kh in range(kh_n) for kw in range(kw_n))


def plane_geometry(spec) -> tuple[int, int]:
    """(rows, columns) of one phase plane: the padded input, or what the outputs read if more,
    over the stride."""
    (sh, sw), (dh, dw), (kh, kw) = spec.stride, spec.dilation, spec.kernel_size
    (h, w), (oh, ow) = spec.in_size, spec.out_size
    pt, pb, pl, pr = spec.padding
    hp = max(h + pt + pb, (oh - 1) * sh + (kh - 1) * dh + 1)
    wp = max(w + pl + pr, (ow - 1) * sw + (kw - 1) * dw + 1)
    return -(-hp // sh), -(-wp // sw)


def depthwise_rows(taps: tuple[tuple[int, int, int], ...], rows: int, bits: int, keep_weights: bool,
                   direct_stride: int = 0):
    """An ``@intrinsic`` ``block(xs, x0, pitch, plane, w, w0, bias, out, o0, out_pitch, ow, iy0, h,
    col0, streams)``:

    ``out[o0 + r * out_pitch + p] = bias + sum_t w[w0 + t] * xs[x0 + plane_t * plane + (r + row_t)
    * pitch + column_t + p]``

    for ``r < rows`` and ``p < ow``, ``(plane_t, row_t, column_t) = taps[t]``, the terms in tap
    order, fused. Columns go a vector of the target (``bits``) at a time. With ``ow`` under one
    vector the loads read up to a vector past a row (the packed planes end with that much slack),
    and a row's store is whole where its excess lands on the block's next rows, stored after it
    (rows ``out_pitch`` apart in increasing order, ``out_pitch`` at least ``ow``), else masked:
    nothing past the block's last row is written. ``keep_weights``: broadcast each weight once
    per call (else once per vector of columns, folded into the multiply-adds' memory operand).
    ``streams`` not 0: whole vectors aligned to their size are written with streaming stores
    (past the caches, no read of the line first; the caller fences, ``_simd.store_fence``).

    ``direct_stride`` (the row stride) > 0 reads the input plane itself (``pitch`` its width,
    ``h`` its height; ``taps`` from :func:`direct_taps`): output row ``r`` meets input row ``iy0 +
    r * direct_stride + row_t`` and column ``col0 + column_t + p``, and only the lanes inside the
    plane are loaded (the others are the padding's zeros). ``iy0``, ``h`` and ``col0`` are unused
    otherwise."""

    @intrinsic
    def block(typingctx, xs, x0, pitch, plane, w, w0, bias, out, o0, out_pitch, ow, iy0, h, col0, streams):
        if not (_takes((xs, w, out), (x0, pitch, plane, w0, o0, out_pitch, ow, iy0, h, col0, streams))
                and isinstance(bias, types.Float)):
            return None
        sig = types.void(xs, x0, pitch, plane, w, w0, bias, out, o0, out_pitch, ow, iy0, h, col0, streams)

        def codegen(context, builder, signature, args):
            from numba.core import cgutils

            values, size, lanes, vec, intp = vector_args(context, builder, signature, args, bits)
            (xs_p, x0_i, pitch_i, plane_i, w_p, w0_i, _, out_p, o0_i, out_pitch_i, ow_i, iy0_i, h_i,
             col0_i, streams_i) = values
            i32 = ir.IntType(32)
            nontemporal = builder.module.add_metadata([ir.Constant(i32, 1)])
            streams_on = builder.icmp_signed("!=", streams_i, ir.Constant(intp, 0))
            bias_v = context.cast(builder, args[6], signature.args[6], signature.args[0].dtype)

            def const(i):
                return ir.Constant(intp, i)

            def at(base, index, as_vector=True):
                p = builder.gep(base, [index], inbounds=True)
                return builder.bitcast(p, vec.as_pointer()) if as_vector else p

            def weight(t):
                return _splat(builder, builder.load(at(w_p, builder.add(w0_i, const(t)), False)), vec)

            mask_type = ir.VectorType(ir.IntType(1), lanes)
            masked_store = _declared(builder, f"llvm.masked.store.v{lanes}{vec.element.intrinsic_name}.p0",
                                     ir.FunctionType(ir.VoidType(), [vec, vec.as_pointer(), i32, mask_type]))
            kept = [weight(t) for t in range(len(taps))] if keep_weights else None
            bias_vec = _splat(builder, bias_v, vec)
            masked_load = _declared(builder, f"llvm.masked.load.v{lanes}{vec.element.intrinsic_name}.p0",
                                    ir.FunctionType(vec, [vec.as_pointer(), i32, mask_type, vec]))

            def row_of(row_t, r):  # the input row (direct) or the row in the phase plane
                return r * direct_stride + row_t if direct_stride else row_t + r

            # the row and phase offsets of every (plane, row) the block reads, at run time; reading
            # the input where it lies, whether the row is in the image
            row_base, row_in = {}, {}
            for plane_t, row_t, _ in taps:
                for r in range(rows):
                    key = (plane_t, row_of(row_t, r))
                    if key not in row_base:
                        row_base[key] = builder.add(builder.mul(const(plane_t), plane_i),
                                                    builder.mul(const(key[1]), pitch_i))
                        if direct_stride:
                            iy = builder.add(iy0_i, const(key[1]))
                            inside = builder.and_(builder.icmp_signed(">=", iy, const(0)), builder.icmp_signed("<", iy, h_i))
                            row_in[key] = _splat(builder, inside, mask_type)

            def columns_in(start):  # lanes whose column start + j lies in [0, pitch)
                return builder.and_(lanes_below(builder, builder.sub(pitch_i, start), lanes),
                                    builder.not_(lanes_below(builder, builder.neg(start), lanes)))

            def columns(p0, mask, streaming=False):
                """The block's ``rows`` x one vector of columns from column ``p0`` on (whole
                vectors by streaming stores where ``streaming``)."""
                xb = builder.add(x0_i, p0)
                if direct_stride:  # the block's first input row and column
                    xb = builder.add(xb, builder.add(builder.mul(iy0_i, pitch_i), col0_i))
                weights = kept or [weight(t) for t in range(len(taps))]
                loaded, sums, col_masks = {}, [bias_vec] * rows, {}
                for t, (plane_t, row_t, col_t) in enumerate(taps):
                    for r in range(rows):
                        key = (plane_t, row_of(row_t, r), col_t)
                        if key not in loaded:
                            index = builder.add(xb, builder.add(row_base[key[:2]], const(col_t)))
                            if not direct_stride:
                                loaded[key] = builder.load(at(xs_p, index), align=size)
                            else:  # only the lanes on input pixels are read; the others are zero
                                if col_t not in col_masks:
                                    col_masks[col_t] = columns_in(builder.add(builder.add(col0_i, p0), const(col_t)))
                                lanes_on = builder.and_(col_masks[col_t], row_in[key[:2]])
                                loaded[key] = builder.call(masked_load, [at(xs_p, index), ir.Constant(i32, size), lanes_on,
                                                                         ir.Constant(vec, None)])
                        sums[r] = _fma(builder, weights[t], loaded[key], sums[r])
                for r in range(rows):
                    target_p = at(out_p, builder.add(builder.add(o0_i, p0), builder.mul(const(r), out_pitch_i)))
                    if mask is None and streaming:
                        builder.store(sums[r], target_p, align=size * lanes).set_metadata("nontemporal", nontemporal)
                        continue
                    if mask is None:
                        builder.store(sums[r], target_p, align=size)
                        continue
                    # a narrow row's excess may land on the block's next rows, stored after it
                    # (only where it stays within the block: (rows - r) * out_pitch >= lanes)
                    room = builder.icmp_signed(">=", builder.mul(const(rows - r), out_pitch_i), const(lanes))
                    with builder.if_else(room) as (whole, masked):
                        with whole:
                            builder.store(sums[r], target_p, align=size)
                        with masked:
                            builder.call(masked_store, [sums[r], target_p, ir.Constant(i32, size), mask])

            def whole_vectors(streaming):
                n_chunks = builder.sdiv(builder.add(ow_i, const(lanes - 1)), const(lanes))
                last = builder.sub(ow_i, const(lanes))
                with cgutils.for_range(builder, n_chunks) as loop:
                    p0 = builder.mul(loop.index, const(lanes))
                    columns(builder.select(builder.icmp_signed("<", p0, last), p0, last), None, streaming)

            # streaming stores where asked and every vector is at its size's alignment: the rows'
            # first, the rows' pitch and their width (no last vector moved left) its multiples
            vector_bytes = const(size * lanes - 1)
            first = builder.ptrtoint(at(out_p, o0_i, False), intp)
            misaligned = builder.or_(builder.or_(first, builder.mul(out_pitch_i, const(size))),
                                     builder.mul(ow_i, const(size)))
            streaming = builder.and_(streams_on, builder.icmp_signed("==", builder.and_(misaligned, vector_bytes),
                                                                     const(0)))
            wide = builder.icmp_signed(">=", ow_i, const(lanes))
            with builder.if_else(wide) as (then, otherwise):
                with then:  # whole vectors, the last one moved left to end at the row's end
                    with builder.if_else(streaming) as (streamed, plain):
                        with streamed:
                            whole_vectors(True)
                        with plain:
                            whole_vectors(False)
                with otherwise:
                    columns(const(0), lanes_below(builder, ow_i, lanes))
            return context.get_dummy_value()

        return sig, codegen

    return block




@njit_serial
def pack_plane(x_flat, s0, h, w, xs, sh, sw, pt, pl, hc, wc, plane):
    """The input plane ``x_flat[s0:s0 + h * w]`` (h x w), padded by ``pt`` rows above and ``pl``
    columns left (negative: cropped), into ``xs``'s phase planes: padded pixel (r, c) at ``((r % sh) * sw + c % sw) *
    plane + (r // sh) * wc + c // sw``, ``plane`` at least ``hc * wc`` plus a vector. Only pixels
    are written, row after row of each phase plane, each followed by zeros up to a vector's end
    (``_simd.copy_span``): padding, or the next row's pixels, written after them. The padding's
    zeros are those of the zeroed scratch, which every call of one geometry leaves as they are.
    Column strides over 2 are copied element by element."""
    for px in range(sw):
        # columns j whose input column ix = j * sw + px - pl is in [0, w): no division per row
        lo = min(wc, max(0, (pl - px + sw - 1) // sw))
        count = min(wc, max(lo, (w - 1 + pl - px) // sw + 1)) - lo
        src = s0 + lo * sw + px - pl
        iy0 = max(0, -pt)  # negative padding crops the first rows
        i, py = (iy0 + pt) // sh, (iy0 + pt) % sh  # padded row pt + iy is row i of phase py
        for iy in range(iy0, h):
            if i >= hc:
                break
            d = (py * sw + px) * plane + i * wc + lo
            if sw == 1:
                copy_step1(x_flat, src + iy * w, xs, d, count)
            elif sw == 2:
                copy_step2(x_flat, src + iy * w, xs, d, count)
            else:
                for j in range(count):
                    xs[d + j] = x_flat[src + iy * w + j * sw]
            py += 1
            if py == sh:
                py, i = 0, i + 1


_DRIVER = '''
from nbconv.cpu._depthwise import depthwise_rows, pack_plane
from nbconv.cpu._simd import store_fence

_rows = depthwise_rows({taps}, {rows}, {bits}, {keep})
_rows_small = depthwise_rows({taps}, {small}, {bits}, {keep_small})
_row1 = depthwise_rows({taps}, 1, {bits}, {keep})
{direct_rows}

@njit_parallel
def forward(x, w, b, out, scratch, sh, sw, pt, pl, hc, wc, direct, streams):
    """out (N, C_out, OH, OW) = the depthwise convolution of x (N, C_in, H, W) by w (C_out, 1,
    {kh}, {kw}) + b at stride ({sh}, {sw}) and dilation {dilation}: tasks of (image, input channel).
    ``direct``: read the input where it lies (column stride 1), no packing. ``streams``: whole
    vectors at their size's alignment written with streaming stores, each task ending with a
    store fence."""
    n_img, c_in, h, wi = x.shape
    c_out, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    mult = c_out // c_in
    x_flat, w_flat, out_flat = x.reshape(-1), w.reshape(-1), out.reshape(-1)
    plane = hc * wc + {slack}  # a vector of slack after each phase plane (see pack_plane)
    for task in numba.prange(n_img * c_in):
        xs = scratch[numba.get_thread_id()]
        n = task // c_in
        c = task - n * c_in
        if not direct:
            pack_plane(x_flat, task * h * wi, h, wi, xs, sh, sw, pt, pl, hc, wc, plane)
        for oc in range(c * mult, (c + 1) * mult):
            o_plane = (n * c_out + oc) * oh * ow
            w0 = oc * {n_taps}
            if oh < {rows}:
                for oy in range(oh):
                    if direct:
                        {direct_row1}
                    else:
                        _row1(xs, oy * wc, wc, plane, w_flat, w0, b[oc], out_flat, o_plane + oy * ow, ow, ow, 0, 0, 0,
                              streams)
            elif {small_lo} <= oh <= {small_hi}:
                for blk in range(0, oh, {small}):
                    oy = min(blk, oh - {small})
                    if direct:
                        {direct_small_call}
                    else:
                        _rows_small(xs, oy * wc, wc, plane, w_flat, w0, b[oc], out_flat, o_plane + oy * ow, ow, ow, 0, 0, 0,
                                    streams)
            else:
                for blk in range(0, oh, {rows}):
                    oy = min(blk, oh - {rows})  # the last block moves up: a few rows computed twice
                    if direct:
                        {direct_rows_call}
                    else:
                        _rows(xs, oy * wc, wc, plane, w_flat, w0, b[oc], out_flat, o_plane + oy * ow, ow, ow, 0, 0, 0,
                              streams)
        if streams:
            store_fence()
'''


def direct_taps(kernel_size, dilation) -> tuple[tuple[int, int, int], ...]:
    """For each tap in kernel order, (0, row offset, column offset) in the input itself."""
    (kh_n, kw_n), (dh, dw) = kernel_size, dilation
    return tuple((0, kh * dh, kw * dw) for kh in range(kh_n) for kw in range(kw_n))


#: Widest output (in vectors of the target) read where it lies rather than packed: masked loads
#: for the padding cost less than the packing on narrow planes.
DIRECT_MAX_VECTORS = 1


def reads_directly(spec, lanes: int) -> bool:
    """Whether the forward reads the input where it lies (column stride 1, outputs at most
    ``DIRECT_MAX_VECTORS`` vectors wide) instead of packing it."""
    return spec.stride[1] == 1 and spec.out_size[1] <= DIRECT_MAX_VECTORS * lanes


def keeps_weights(taps: int, rows: int) -> bool:
    """Whether the weights stay in registers beside the ``rows`` sums and a few loaded vectors."""
    return taps + rows + 4 <= target().vector_registers


def module_source(kernel_size, stride, dilation) -> str:
    """The generated module for one kernel size, stride and dilation (every size at run time)."""
    taps = tap_reads(kernel_size, stride, dilation)
    bits = target().vector_bits
    what = f"depthwise {kernel_size[0]}x{kernel_size[1]}, stride {stride}, dilation {dilation}, {bits}-bit vectors"
    keep, keep_small = keeps_weights(len(taps), ROWS), keeps_weights(len(taps), SMALL_ROWS)
    if stride[1] == 1:
        direct = direct_taps(kernel_size, dilation)
        direct_rows = (f"_rows_direct = depthwise_rows({direct}, {ROWS}, {bits}, {keep}, {stride[0]})\n"
                       f"_rows_small_direct = depthwise_rows({direct}, {SMALL_ROWS}, {bits}, {keep_small}, {stride[0]})\n"
                       f"_row1_direct = depthwise_rows({direct}, 1, {bits}, {keep}, {stride[0]})\n")
        call = ("{name}(x_flat, task * h * wi, wi, 0, w_flat, w0, b[oc], out_flat, o_plane + oy * ow, ow, ow, "
                "oy * sh - pt, h, -pl, streams)")
        direct_row1 = [call.format(name="_row1_direct")]
        direct_rows_call = [call.format(name="_rows_direct")]
        direct_small_call = [call.format(name="_rows_small_direct")]
    else:
        direct_rows, direct_row1, direct_rows_call, direct_small_call = "", ["pass"], ["pass"], ["pass"]
    return _generated.HEADER.format(generator=__name__, version=__version__, what=what) + _generated.fill(_DRIVER,
        taps=taps, rows=ROWS, bits=bits, slack=bits // 32, keep=keep, kh=kernel_size[0], kw=kernel_size[1],
        sh=stride[0], sw=stride[1], dilation=dilation, n_taps=len(taps), direct_rows=direct_rows,
        direct_row1=direct_row1, direct_rows_call=direct_rows_call, direct_small_call=direct_small_call,
        small=SMALL_ROWS, keep_small=keep_small, small_lo=SMALL_PLANE_ROWS.start, small_hi=SMALL_PLANE_ROWS.stop - 1)


@functools.lru_cache(maxsize=64)
def _module(kernel_size, stride, dilation):
    return _generated.load(module_source(kernel_size, stride, dilation), "nbconv_depthwise")


def depthwise_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, out: np.ndarray, spec) -> None:
    """``out`` = the depthwise convolution of ``spec`` (C-contiguous arrays, ``w`` (C_out, 1, kH,
    kW), where :func:`applies`)."""
    hc, wc = plane_geometry(spec)
    (sh, sw), slack = spec.stride, target().vector_bits // 32
    # a vector (of float32, so of either dtype) of slack after each phase plane, as the driver's
    # plane pitch has: narrow rows are read and written a whole vector at a time
    elems = sh * sw * (hc * wc + slack) + slack
    threads = thread_count()
    # zeros where no pixel goes, kept as they are by every call of this layout
    key = ("depthwise", x.dtype.str, spec.in_size, spec.stride, spec.padding[0], spec.padding[2], hc, wc, threads)
    scratch, = _scratch.reused(key, lambda: (np.zeros((threads, elems), x.dtype),))
    direct = reads_directly(spec, vector_lanes(x.dtype))
    _module(spec.kernel_size, spec.stride, spec.dilation).forward(
        x, w, b, out, scratch, sh, sw, spec.padding[0], spec.padding[2], hc, wc, direct, int(_pointwise.streams_whole_rows(out)))

