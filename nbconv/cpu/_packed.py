"""Grouped convolution on the CPU over packed, padded input planes (the default CPU path).

Per task of (stack of images, group, block of output channels) the group's input planes are
copied once into a per-thread scratch buffer, zero-padded and split by phase (padded row ``r``,
column ``c`` go to phase plane ``(r % sH, c % sW)`` at ``(r // sH, c // sW)``), so that every
kernel tap reads a *contiguous* run of the scratch, whatever the stride, with no bounds tests.
Small images are stacked one above the other in each phase plane (image ``j`` starts ``j * Hc``
rows down), so one task's loops run over all of them at once.

Rows are split by phase too, so output rows ``oy`` and ``oy + 1`` read consecutive rows of one
phase plane for any stride: the output is computed in segments of rows that fit in L1,
flattened with the phase plane's pitch (one long vector loop per kernel row; the few columns
past W_out and the seam rows between stacked images are computed and dropped). A kernel row's
column offsets are passed as a tuple, so the kernel width is a compile-time constant: LLVM
unrolls the taps, and each pass loads and stores the accumulator once per kernel row. Four output
channels of a group go through one pass together, sharing every input load.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numba
import numpy as np

from .._numba_options import njit_parallel, njit_reduction, njit_serial
from ._threads import thread_count

_U = numba.uint64

#: Target length (elements) of an accumulator segment: 2048 float32 = 8 KiB, well inside L1.
SEGMENT_ELEMS = 2048
#: Segments are computed in whole multiples of this many elements (the extra ones are dropped), so
#: LLVM's vector loop (16 lanes x 4 interleaved on AVX-512) covers them with no scalar remainder:
#: a 7x7 plane flattened with pitch 9 is 61 elements, all of which the remainder loop would take.
VECTOR_ROUND = 64


@njit_serial
def _round_up(n, m):
    return (n + m - 1) // m * m


@njit_serial
def _row_taps(acc, xs, x0, n, cols, wofs, w, w0, first, bias):
    """acc[p] (+)= sum over t of w[w0 + wofs[t]] * xs[x0 + cols[t] + p], for p < n: one pass (a
    kernel row, or the same kernel row of two input channels).

    ``cols`` and ``wofs`` are tuples, so the number of taps is a compile-time constant: LLVM
    unrolls them and vectorises over p, one load and one store of the accumulator per pass.
    ``first``: the accumulator is not read but set to ``bias`` + the taps (no zeroing pass).
    """
    if first:
        for p in range(n):
            s = bias
            for t in range(len(cols)):
                s += w[w0 + wofs[t]] * xs[_U(x0 + cols[t] + p)]
            acc[p] = s
    else:
        for p in range(n):
            s = acc[p]
            for t in range(len(cols)):
                s += w[w0 + wofs[t]] * xs[_U(x0 + cols[t] + p)]
            acc[p] = s


@njit_serial
def _row_taps4(a0, a1, a2, a3, xs, x0, n, cols, wofs, w, w0, ws, first, b0, b1, b2, b3):
    """``_row_taps`` for four output channels at once (accumulators a0..a3, weights
    ``w[w0 + k * ws:]``): each input load feeds four multiply-adds."""
    if first:
        for p in range(n):
            a0[p] = b0
            a1[p] = b1
            a2[p] = b2
            a3[p] = b3
    for p in range(n):
        s0, s1, s2, s3 = a0[p], a1[p], a2[p], a3[p]
        for t in range(len(cols)):
            v = xs[_U(x0 + cols[t] + p)]
            s0 += w[w0 + wofs[t]] * v
            s1 += w[w0 + ws + wofs[t]] * v
            s2 += w[w0 + 2 * ws + wofs[t]] * v
            s3 += w[w0 + 3 * ws + wofs[t]] * v
        a0[p] = s0
        a1[p] = s1
        a2[p] = s2
        a3[p] = s3


def _phase_offset(r: int, c: int, sh: int, sw: int, plane: int, wc: int) -> int:
    """Offset of padded (row r, column c) in a channel's phase planes: plane (r % sH, c % sW),
    position (r // sH, c // sW). The one definition of the packed layout; the kernels only see
    the tables that ``packed_tables`` builds from it (no integer division in a kernel loop)."""
    return ((r % sh) * sw + c % sw) * plane + (r // sh) * wc + c // sw


@njit_serial
def _pack_group(x, n0, n_cnt, g, cin_g, xs, chan, img, row_dst, runs):
    """Copy the input channels of group ``g`` of images ``n0 .. n0 + n_cnt - 1`` into ``xs``: zero
    padding (or cropping, for negative padding), zeros between pixels for an input dilation, phase
    planes; image ``j`` of the stack starts ``j * img`` elements into each phase plane.

    ``row_dst[iy]``: offset of input row ``iy`` in a channel's planes (-1: cropped);
    ``runs[k]`` = (dst, dst_step, src, src_step, count): the column copies of one row.

    Only input pixels are written, always at the same positions for one layout: the padding, the
    dilation zeros and the slack stay as the zeroed scratch was allocated, call after call. A
    short last stack leaves the previous task's pixels in its unused image slots; only output
    rows that are dropped read them.
    """
    in_h = x.shape[2]
    for ci in range(cin_g):
        for j in range(n_cnt):
            src = x[n0 + j, g * cin_g + ci]
            for iy in range(in_h):
                if row_dst[iy] >= 0:
                    _pack_row(xs, ci * chan + j * img + row_dst[iy], src[iy], runs)


@njit_serial
def _pack_row(xs, row, srow, runs):
    for k in range(runs.shape[0]):
        d0, ds, s0, ss, cnt = runs[k, 0], runs[k, 1], runs[k, 2], runs[k, 3], runs[k, 4]
        if ds == 1 and ss == 1:
            for j in range(cnt):
                xs[_U(row + d0 + j)] = srow[_U(s0 + j)]
        else:
            for j in range(cnt):
                xs[_U(row + d0 + j * ds)] = srow[_U(s0 + j * ss)]


@njit_parallel
def _forward_packed(x, w, b, out, scratch, acc_buf, geo, tables, pass_cols, pass_wofs, groups, oc_block):
    """out (N, C_out, OH, OW) = conv2d(x (N, C_in, H, W), w) + b; all C-contiguous 4-D.

    ``geo`` = (sH, sW, pad_top, pad_left, dH, dW, Hc, Wc, rows_per_segment, lH, lW, stack): the
    scratch holds, per input channel, sH * sW phase planes of (stack * Hc) x Wc: ``stack`` images
    one above the other (padded row r, column c of image j live in plane (r % sH, c % sW) at
    (j * Hc + r // sH, c // sW)); ``tables`` = ``packed_tables(spec, stack)``; ``pass_cols``,
    ``pass_wofs`` = ``tap_passes(spec, stack)``: the offsets of the taps of one pass (a kernel row
    of one input channel, or of two, see ``tap_passes``) and of their weights.
    A task covers (a stack of images, a group, a block of output channels); its segments run down
    the tall stacked plane, so small images make long vector loops (rows of the seams between
    images are computed and dropped). ``scratch`` / ``acc_buf`` have one row per thread.
    """
    row_dst, runs, tap_off = tables
    ch_step = len(pass_cols) // w.shape[3]  # input channels per pass
    n_img = x.shape[0]
    c_out, cin_g, kh_n, kw_n = w.shape
    w_flat = w.reshape(-1)
    out_h, out_w = out.shape[2], out.shape[3]
    sh, sw, pt, pl, dh, dw, hc, wc, seg_rows, lh, lw, stack = geo
    chan = sh * sw * stack * hc * wc
    cout_g = c_out // groups
    n_blocks = (cout_g + oc_block - 1) // oc_block
    n_stacks = (n_img + stack - 1) // stack
    for task in numba.prange(n_stacks * groups * n_blocks):
        tid = numba.get_thread_id()
        xs = scratch[tid]
        acc = acc_buf[tid]
        blk = task % n_blocks
        rest = task // n_blocks
        g = rest % groups
        n0 = (rest // groups) * stack
        n_cnt = min(stack, n_img - n0)
        oc_lo = g * cout_g + blk * oc_block
        oc_hi = min(oc_lo + oc_block, (g + 1) * cout_g)

        _pack_group(x, n0, n_cnt, g, cin_g, xs, chan, hc * wc, row_dst, runs)

        # segments of ``rows`` rows of the stacked planes, flattened with pitch Wc (columns >= OW
        # and the seam rows between images are computed and dropped)
        tall = (n_cnt - 1) * hc + out_h
        seg_j, seg_oy = 0, 0
        for oy0 in range(0, tall, seg_rows):
            rows = min(seg_rows, tall - oy0)
            if oy0 > 0:
                seg_oy += seg_rows
                while seg_oy >= hc:
                    seg_j, seg_oy = seg_j + 1, seg_oy - hc
            n_el = _round_up((rows - 1) * wc + out_w, VECTOR_ROUND)
            ws = cin_g * kh_n * kw_n  # weights per output channel
            oc = oc_lo
            while oc < oc_hi:
                quad = oc + 4 <= oc_hi  # four output channels share every input load
                for ci in range(0, cin_g, ch_step):
                    for kh in range(kh_n):
                        x0 = ci * chan + oy0 * wc + tap_off[kh, 0]
                        w0 = ((oc * cin_g + ci) * kh_n + kh) * kw_n
                        first = ci == 0 and kh == 0
                        if quad:
                            _row_taps4(acc[0], acc[1], acc[2], acc[3], xs, x0, n_el, pass_cols, pass_wofs, w_flat,
                                       w0, ws, first, b[oc], b[oc + 1], b[oc + 2], b[oc + 3])
                        else:
                            _row_taps(acc[0], xs, x0, n_el, pass_cols, pass_wofs, w_flat, w0, first, b[oc])
                j, oy = seg_j, seg_oy  # (image, row) of the segment's first row, no division
                for r in range(rows):
                    if r > 0:
                        oy += 1
                        if oy == hc:
                            j, oy = j + 1, 0
                    if oy < out_h:
                        for k in range(4 if quad else 1):
                            dst = out[n0 + j, oc + k, oy]
                            for ox in range(out_w):
                                dst[ox] = acc[k, r * wc + ox]
                oc += 4 if quad else 1


def _shared_pitch(data: int, before: int, read: int, out: int) -> int:
    """Pitch (of rows, or of images in a stack) at unit stride, where one block's trailing zeros
    are the next block's leading ones: a block holds ``before`` zeros then ``data`` elements, and
    an output at ``o < out`` reads ``o + [0, read - out]``. Reads that run past a block of pitch
    ``P`` land in the next block's first ``read - P`` elements, which must be its leading zeros
    (``read - P <= before``); the data must fit (``before + data <= P``), and so must the outputs.
    14 x 14 with padding 1: a pitch of 15 instead of 16, so about 12% fewer positions computed
    and dropped per plane."""
    return max(before + data, read - before, out)


@functools.lru_cache(maxsize=256)
class PackedGeometry(NamedTuple):
    """The packed layout of one geometry: strides, near paddings (top, left) and dilations; the
    rows and columns of one phase plane (``hc`` x ``wc``, ``wc`` the row pitch); rows per segment
    of the forward's vector loops; input dilations; images per stack. The kernels take it as a
    plain tuple in this order."""

    sh: int
    sw: int
    pt: int
    pl: int
    dh: int
    dw: int
    hc: int
    wc: int
    seg_rows: int
    lh: int
    lw: int
    stack: int

    @property
    def channel_elems(self) -> int:
        """Elements of one input channel's phase planes (all phases, the whole stack)."""
        return self.sh * self.sw * self.stack * self.hc * self.wc


class Packing(NamedTuple):
    """A geometry's packed layout and the per-thread elements it needs."""

    geometry: PackedGeometry
    scratch_elems: int
    acc_elems: int


@functools.lru_cache(maxsize=1024)
def packed_geometry(spec, stack: int = 1) -> Packing:
    """The packed layout for stacks of ``stack`` images, and the scratch and accumulator elements
    per thread it takes."""
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    pt, pb, pl, pr = spec.padding
    (kh, kw), (oh, ow), (lh, lw) = spec.kernel_size, spec.out_size, spec.lhs_dilation
    dilated = ((spec.in_size[0] - 1) * lh + 1, (spec.in_size[1] - 1) * lw + 1)
    hp = max(dilated[0] + pt + pb, (oh - 1) * sh + (kh - 1) * dh + 1)
    wp = max(dilated[1] + pl + pr, (ow - 1) * sw + (kw - 1) * dw + 1)
    hc, wc = -(-hp // sh), -(-wp // sw)
    if min(spec.padding) >= 0:  # shared padding (see _shared_pitch)
        if sh == 1:
            hc = _shared_pitch(dilated[0], pt, (oh - 1) + (kh - 1) * dh + 1, oh)
        if sw == 1:
            wc = _shared_pitch(dilated[1], pl, (ow - 1) + (kw - 1) * dw + 1, ow)
    overflow = max(0, (oh - 1) * sh + (kh - 1) * dh + 1 - hc * sh)  # rows the last image reads past its plane
    seg_rows = max(1, min((stack - 1) * hc + oh, SEGMENT_ELEMS // wc))
    acc_elems = -(-((seg_rows - 1) * wc + ow) // VECTOR_ROUND) * VECTOR_ROUND
    # slack: the dropped elements of a segment read up to one row plus VECTOR_ROUND past the last plane
    scratch_elems = spec.in_per_group * sh * sw * stack * hc * wc + (overflow + 1) * wc + VECTOR_ROUND
    return Packing(PackedGeometry(sh, sw, pt, pl, dh, dw, hc, wc, seg_rows, lh, lw, stack), scratch_elems, acc_elems)


#: Most scratch elements per thread that stacking images may take (1 MiB of float32).
STACK_SCRATCH_ELEMS = 1 << 18


def stack_bucket(stack: int) -> int:
    """The largest power of two up to ``stack``. The kernels generated for stacks are generated
    per stack (not per batch): a power of two, with a shorter last stack where the batch is not
    a multiple, keeps the modules of a layer to a few whatever the batch (a training loop's short
    last batch takes one of them)."""
    return 1 << (max(1, stack).bit_length() - 1)


def stack_limit(spec, target_elems: int, phases: bool = False, bound_by_batch: bool = True) -> int:
    """Images per stack so that one channel's stacked planes (one phase plane, or all of them
    with ``phases``) hold about ``target_elems`` and the whole scratch (all channels of a group,
    all phases) stays within ``STACK_SCRATCH_ELEMS``; at most the batch unless not
    ``bound_by_batch``."""
    geo = packed_geometry(spec).geometry
    plane = geo.hc * geo.wc  # one image and phase
    per_image = spec.in_per_group * geo.sh * geo.sw * plane
    target_plane = plane * (geo.sh * geo.sw if phases else 1)
    limit = min(target_elems // target_plane, STACK_SCRATCH_ELEMS // per_image)
    return max(1, min(spec.batch, limit) if bound_by_batch else limit)


@functools.lru_cache(maxsize=256)
def packed_tables(spec, stack: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The index tables of the packed layout, built once per call from ``_phase_offset``:

    ``row_dst`` (H,): offset of input row iy in a channel's phase planes, -1 where cropped;
    ``runs`` (k, 5): (dst, dst_step, src, src_step, count) column copies that pack one row;
    ``tap_off`` (kH, kW): offset of tap (kh, kw) relative to its output position's row start.
    The layout separates rows and columns, and tap (0, 0) sits at 0, so ``tap_off[kh, 0]`` is
    kernel row kh's offset and ``tap_off[0, kw]`` column kw's.
    """
    geo = packed_geometry(spec, stack).geometry
    sh, sw, pt, pl, dh, dw, hc, wc, lh, lw = geo.sh, geo.sw, geo.pt, geo.pl, geo.dh, geo.dw, geo.hc, geo.wc, geo.lh, geo.lw
    plane = stack * hc * wc
    in_h, in_w = spec.in_size
    row_dst = np.full(in_h, -1, np.int64)
    for iy in range(in_h):
        r = iy * lh + pt
        if 0 <= r < hc * sh:
            row_dst[iy] = _phase_offset(r, 0, sh, sw, plane, wc)
    # padded column c = ix * lW + pad_left (kept when 0 <= c < Wc * sW), in runs of equal steps
    cols = [(ix, _phase_offset(0, ix * lw + pl, sh, sw, plane, wc)) for ix in range(in_w)
            if 0 <= ix * lw + pl < wc * sw]
    runs: list[list[int]] = []
    for ph in range(sw):  # the columns of one phase are equally spaced in source and destination
        phase = [(ix, d) for ix, d in cols if (ix * lw + pl) % sw == ph]
        if len(phase) == 1:
            runs.append([phase[0][1], 1, phase[0][0], 1, 1])
        elif phase:
            ds, ss = phase[1][1] - phase[0][1], phase[1][0] - phase[0][0]
            runs.append([phase[0][1], ds, phase[0][0], ss, len(phase)])
    tap_off = np.array([[_phase_offset(kh * dh, kw * dw, sh, sw, plane, wc) for kw in range(spec.kernel_size[1])]
                        for kh in range(spec.kernel_size[0])], np.int64).reshape(spec.kernel_size)
    return row_dst, np.array(runs, np.int64).reshape(-1, 5), tap_off


#: Most taps one pass of the four-channel loop unrolls: up to 6 x 4 multiply-adds per vector LLVM
#: still vectorises (152 GFLOP/s per core against 110 for 3 taps); at 7 x 4 it gives up (8);
#: ``python docs/inner_loops.py`` measures it.
MAX_PASS_TAPS = 6


@functools.lru_cache(maxsize=256)
def tap_passes(spec, stack: int = 1) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(tap offsets, weight offsets) of one pass, as tuples (compile-time lengths): one kernel row,
    or, when two fit in ``MAX_PASS_TAPS`` and the group's input channels pair up, the same kernel
    row of two consecutive input channels (the second ``chan`` elements and kH * kW weights on)."""
    cols = tuple(int(c) for c in packed_tables(spec, stack)[2][0])  # the columns' offsets
    kw = len(cols)
    if 2 * kw <= MAX_PASS_TAPS and spec.in_per_group % 2 == 0:
        chan = packed_geometry(spec, stack).geometry.channel_elems
        k_n = spec.kernel_size[0] * kw
        return cols + tuple(chan + c for c in cols), tuple(range(kw)) + tuple(k_n + t for t in range(kw))
    return cols, tuple(range(kw))


def forward_packed(x: np.ndarray, w: np.ndarray, b: np.ndarray, out: np.ndarray, spec, oc_block: int,
                   stack: int = 1) -> None:
    """``out`` = the convolution of ``spec`` (any input dilation); ``w`` in (C_out, C_in/groups, kH, kW);
    tasks of ``stack`` images by ``oc_block`` output channels."""
    geo, scratch_elems, acc_elems = packed_geometry(spec, stack)
    threads = thread_count()
    scratch = np.zeros((threads, scratch_elems), x.dtype)
    acc = np.empty((threads, 4, acc_elems), x.dtype)  # four output channels' accumulators
    _forward_packed(x, w, b, out, scratch, acc, tuple(geo), packed_tables(spec, stack), *tap_passes(spec, stack),
                    spec.groups, oc_block)


@njit_reduction
def _dot3(g0, xs, x0, n, o0, o1, o2, zero):
    """The sums over p < n of g0[p] * xs[x0 + o_k + p] for the three taps k: one pass over the
    output gradient feeds three dot products (vector partial sums in registers)."""
    s0, s1, s2 = zero, zero, zero
    for p in range(n):
        q = _U(x0 + p)
        g = g0[_U(p)]
        s0 += g * xs[q + _U(o0)]
        s1 += g * xs[q + _U(o1)]
        s2 += g * xs[q + _U(o2)]
    return s0, s1, s2


@njit_reduction
def _dot3x4(g0, g1, g2, g3, xs, x0, n, o0, o1, o2, zero):
    """``_dot3`` for four output channels' gradients at once: every input load feeds four
    multiply-adds, twelve sums in registers; (channel 0's three taps, channel 1's, ...)."""
    s00, s01, s02, s10, s11, s12 = zero, zero, zero, zero, zero, zero
    s20, s21, s22, s30, s31, s32 = zero, zero, zero, zero, zero, zero
    for p in range(n):
        q = _U(x0 + p)
        va, vb, vc = xs[q + _U(o0)], xs[q + _U(o1)], xs[q + _U(o2)]
        h0, h1, h2, h3 = g0[_U(p)], g1[_U(p)], g2[_U(p)], g3[_U(p)]
        s00 += h0 * va
        s01 += h0 * vb
        s02 += h0 * vc
        s10 += h1 * va
        s11 += h1 * vb
        s12 += h1 * vc
        s20 += h2 * va
        s21 += h2 * vb
        s22 += h2 * vc
        s30 += h3 * va
        s31 += h3 * vb
        s32 += h3 * vc
    return s00, s01, s02, s10, s11, s12, s20, s21, s22, s30, s31, s32


@njit_parallel
def _weight_grad_packed(x, gy, dw_out, scratch, gy_buf, tot_buf, geo, tables, groups, oc_block, zero):
    """dw_out (C_out, C_in/groups, kH, kW) = sum over n, oy, ox of gy[n, o, oy, ox] * x_tap.

    One task per (group, block of output channels) walks the images in order, in stacks of
    ``stack`` (the last of ``geo``) images packed like the forward kernel's. The output gradient planes of a stack
    are laid out the same way (pitch Wc, zeros past the last column, in the seam rows and at the
    end), so that every tap is one contiguous dot product with the packed input: three taps of
    four output channels per pass. Every weight element is summed by one task, per stack in the
    dot product's fixed order, then over stacks in float64, so the result does not depend on the
    number of threads as long as ``oc_block`` does not (the launcher keeps it a multiple of 4, so
    the channels that go four at a time are always the same). ``zero``: 0 in the data's dtype (the dot products' type).
    """
    row_dst, runs, tap_off = tables
    n_img = x.shape[0]
    c_out, cin_g, kh_n, kw_n = dw_out.shape
    out_h, out_w = gy.shape[2], gy.shape[3]
    sh, sw, pt, pl, dh, dw, hc, wc, seg_rows, lh, lw, stack = geo
    chan = sh * sw * stack * hc * wc
    k_n = kh_n * kw_n
    cout_g = c_out // groups
    n_blocks = (cout_g + oc_block - 1) // oc_block
    for task in numba.prange(groups * n_blocks):
        tid = numba.get_thread_id()
        xs = scratch[tid]
        gbs = gy_buf[tid]
        tot = tot_buf[tid]
        blk = task % n_blocks
        g = task // n_blocks
        oc_lo = g * cout_g + blk * oc_block
        oc_hi = min(oc_lo + oc_block, (g + 1) * cout_g)
        tot[: (oc_hi - oc_lo) * cin_g * k_n] = 0
        for k in range(min(4, oc_hi - oc_lo)):  # the planes this task uses
            gbs[k, :] = 0  # valid positions are written per stack: seams and dropped columns stay zero
        for n0 in range(0, n_img, stack):
            n_cnt = min(stack, n_img - n0)
            valid = ((n_cnt - 1) * hc + out_h) * wc
            n_el = _round_up(valid, VECTOR_ROUND)
            _pack_group(x, n0, n_cnt, g, cin_g, xs, chan, hc * wc, row_dst, runs)
            oc = oc_lo
            while oc < oc_hi:
                quad = oc + 4 <= oc_hi  # four output channels share every input load
                for k in range(4 if quad else 1):
                    gb = gbs[k]
                    # the rounding reaches into the next image slot, which a short last stack
                    # leaves holding an earlier stack's gradient (and the scratch its pixels)
                    gb[valid:n_el] = 0
                    for j in range(n_cnt):
                        for oy in range(out_h):
                            src = gy[n0 + j, oc + k, oy]
                            row = (j * hc + oy) * wc
                            for ox in range(out_w):
                                gb[row + ox] = src[ox]
                base = (oc - oc_lo) * cin_g * k_n
                for ci in range(cin_g):
                    for kh in range(kh_n):
                        taps = tap_off[kh]
                        for kw0 in range(0, kw_n, 3):
                            nt = min(3, kw_n - kw0)
                            o0 = taps[kw0]
                            o1 = taps[min(kw0 + 1, kw_n - 1)]
                            o2 = taps[min(kw0 + 2, kw_n - 1)]
                            t = base + ci * k_n + kh * kw_n + kw0
                            if quad:
                                s = _dot3x4(gbs[0], gbs[1], gbs[2], gbs[3], xs, ci * chan, n_el, o0, o1, o2, zero)
                                for k in range(4):
                                    for i in range(nt):
                                        tot[t + k * cin_g * k_n + i] += s[3 * k + i]
                            else:
                                s3 = _dot3(gbs[0], xs, ci * chan, n_el, o0, o1, o2, zero)
                                for i in range(nt):
                                    tot[t + i] += s3[i]
                oc += 4 if quad else 1
        t = 0
        for oc in range(oc_lo, oc_hi):
            for ci in range(cin_g):
                for kh in range(kh_n):
                    for kw in range(kw_n):
                        dw_out[oc, ci, kh, kw] = tot[t]
                        t += 1


def weight_grad_packed(x: np.ndarray, gy: np.ndarray, dw_out: np.ndarray, spec, oc_block: int,
                       stack: int = 1) -> None:
    """``dw_out`` = the weight gradient of the convolution ``spec`` (C-contiguous arrays), images
    packed in stacks of ``stack``."""
    geo, scratch_elems, _ = packed_geometry(spec, stack)
    threads = thread_count()
    n_el = -(-((stack - 1) * geo.hc + spec.out_size[0]) * geo.wc // VECTOR_ROUND) * VECTOR_ROUND
    scratch = np.zeros((threads, scratch_elems), x.dtype)
    gy_buf = np.empty((threads, 4, n_el), x.dtype)  # four output channels' gradient planes
    tot = np.empty((threads, oc_block * spec.in_per_group * spec.kernel_size[0] * spec.kernel_size[1]), np.float64)
    _weight_grad_packed(x, gy, dw_out, scratch, gy_buf, tot, tuple(geo), packed_tables(spec, stack), spec.groups,
                        oc_block, x.dtype.type(0))


@njit_parallel
def _bias_grad(gy, out):
    """out[c] = sum over n, y, x of gy[n, c, y, x], per channel in a fixed order (float64 sums)."""
    n_img, c_n, h, w = gy.shape
    for c in numba.prange(c_n):
        acc = np.zeros(w, np.float64)
        for n in range(n_img):
            for y in range(h):
                row = gy[n, c, y]
                for x in range(w):
                    acc[x] += row[x]
        s = 0.0
        for x in range(w):
            s += acc[x]
        out[c] = s


def bias_grad(gy: np.ndarray, out: np.ndarray) -> None:
    _bias_grad(gy, out)
