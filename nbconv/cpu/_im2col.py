"""Dense layers as columns (im2col) times the weights: nothing compiled per geometry.

A network's stem (a dense layer on 3 input channels: ResNet's 7x7 at stride 2) has too few
input channels for ``_outer``'s blocks, and the kernels generated per geometry cost it minutes of
compilation (``_outer``: 113 s for ResNet's stem on a 2-core Zen 3, then 22 ms at batch 2).
ConvNeXt's 2x2 downsampling layers (96 -> 192 ... 384 -> 768 at stride 2) ran 2-5x PyTorch's
time in ``_outer`` and the packed kernel. Here a
task (image, group, block of output pixels) copies its block's columns, ``terms = C_in/groups x
kH x kW`` rows of the block's pixels in the weight's own order (zero in the padding), into its
scratch, and ``_pointwise``'s block multiplies them by the (C_out, terms) weight; both loops are
compiled once per dtype (12 ms on that stem at batch 2, PyTorch 4-6 ms). Each output is ``bias``
plus its terms in the weight's order (input channel, kernel row, column), each multiply-add
fused: the reference's order.
"""

from __future__ import annotations

import functools

import numba
import numpy as np

from .._numba_options import njit_parallel, njit_serial
from . import _blas, _pointwise, _scratch
from ._pointwise import _N_O, _N_O_NARROW, copy_plane_rows, task_span, task_span_from
from ._pointwise import _block_cached as _block
from ._pointwise import _block_cached_streams as _block_streams
from ._pointwise import _block_narrow_cached as _block_narrow
from ._simd import copy_step1, copy_step2, store_fence
from ._threads import thread_count

#: Most terms per output: a block's columns are ``terms`` x one pixel block (16 float32 pixels with
#: AVX2, 64 with AVX-512: 128 KiB and 512 KiB at this bound), kept within L2. ConvNeXt-T's last
#: downsampling layer (384 -> 768, 2x2) has 1536.
MAX_TERMS = 2048
#: With the BLAS, which packs the columns itself: up to a dense 3x3 layer of 512 channels.
MAX_BLAS_TERMS = 4608
#: Fewer terms than this stay with ``_pointwise``'s block even where the BLAS is found: stems
#: (27 terms for MobileNetV2's) ran 10-20% faster so on a 2-core Zen 3; with the blocks' results
#: streamed past the caches, ResNet's 7x7 stem (147 terms) and dense strided layers up to 288
#: terms too, on a 2-core Zen 2 (``docs/performance.md``, round 28).
MIN_BLAS_TERMS = 512


def applies(spec) -> bool:
    """Two or more input channels per group, at most ``MAX_TERMS`` terms per output
    (``MAX_BLAS_TERMS`` where the BLAS computes the products), at least
    ``_pointwise.O_BLOCK`` output channels per group, no input dilation, at least one image and
    one output."""
    (kh, kw), (oh, ow) = spec.kernel_size, spec.out_size
    terms = spec.in_per_group * kh * kw
    most = MAX_TERMS if _blas.for_products() is None else MAX_BLAS_TERMS
    return (spec.in_per_group > 1 and spec.out_per_group >= _pointwise.O_BLOCK and spec.lhs_dilation == (1, 1)
            and spec.batch > 0 and oh * ow > 0 and terms <= most)


@njit_serial
def _fill_row(cols, row, x_flat, plane0, h, wd, oy0, ox0, n_pix, ow, sh, sw, dy, dx):
    """cols[row + p] = x_flat[plane0 + iy * wd + ix], with (iy, ix) = (oy * sh + dy, ox * sw + dx)
    (0 outside the h x wd plane), for the ``n_pix`` output pixels (oy, ox) from (oy0, ox0) on in
    row-major order: per output row, zeros, a copy, zeros, with no test per pixel. The copies at
    column strides 1 and 2 are vector copies (``_simd.copy_span``), which leave up to a
    vector of zeros past their end: the next pixels are filled after them, and ``cols`` needs a
    vector of slack past its last row."""
    oy, ox, p = oy0, ox0, 0
    while p < n_pix:
        span = min(ow - ox, n_pix - p)
        iy = oy * sh + dy
        if 0 <= iy < h:
            # the pixels of [ox, ox + span) whose column ox * sw + dx lies in [0, wd)
            lo = min(span, max(0, (-dx + sw - 1) // sw - ox)) if dx < 0 else 0
            hi = max(lo, min(span, (wd - 1 - dx) // sw + 1 - ox)) if wd - 1 - dx >= 0 else lo
            for q in range(lo):
                cols[row + p + q] = 0
            src = plane0 + iy * wd + (ox + lo) * sw + dx
            if hi > lo:
                if sw == 1:
                    copy_step1(x_flat, src, cols, row + p + lo, hi - lo)
                elif sw == 2:
                    copy_step2(x_flat, src, cols, row + p + lo, hi - lo)
                else:
                    for q in range(lo, hi):
                        cols[row + p + q] = x_flat[src]
                        src += sw
            for q in range(hi, span):
                cols[row + p + q] = 0
        else:
            for q in range(span):
                cols[row + p + q] = 0
        p += span
        ox = 0
        oy += 1


@njit_serial
def _fill_span(cols, pitch, x_flat, plane0, cin_g, h, wd, kh_n, kw_n, s0, m, ow, sh, sw, dh, dw, pt, pl):
    """The columns of output pixels ``s0 .. s0 + m - 1`` (row-major in planes ``ow`` wide) into
    ``cols``, a row of ``pitch`` per term, in the weight's order (input channel, kernel row,
    column); the group's first input plane starts at ``x_flat[plane0]``."""
    oy0 = s0 // ow
    ox0 = s0 - oy0 * ow
    for c in range(cin_g):
        for i in range(kh_n):
            for j in range(kw_n):
                _fill_row(cols, ((c * kh_n + i) * kw_n + j) * pitch, x_flat, plane0 + c * h * wd, h, wd, oy0, ox0,
                          m, ow, sh, sw, i * dh - pt, j * dw - pl)


@njit_parallel
def _forward(x, w, b, out, scratch, groups, kh_n, kw_n, sh, sw, dh, dw, pt, pl, oh, ow, pix_block, span_blocks,
             o_chunks, shift, streams):
    """out (N, C_out, OH, OW) = the convolution of x (N, C_in, H, W) by w (C_out, C_in/groups, kH,
    kW) + b: tasks of (image, group, span of ``span_blocks`` pixel blocks, chunk of output-channel
    blocks), each filling its span's columns (terms x pixels, zero in the padding) into its
    scratch row, then multiplying them by the weights, ``_pointwise.O_BLOCK`` output channels x
    one pixel block at a time. A span's last block moves left to end at the span's end (pixels
    computed twice by the same task, to the same bits); only a plane under one block is masked.
    Spans start at pixel ``shift`` (after a head span of the pixels before it, where ``shift`` >
    0); with ``streams`` the blocks are written with streaming stores where their rows start at
    a vector's start (``_pointwise.streaming_shift`` gives the ``shift`` that puts every span's
    blocks at a line's start) and each task ends with a store fence."""
    n_img, c_in, h, wd = x.shape
    c_out = out.shape[1]
    cin_g, cout_g = c_in // groups, c_out // groups
    terms = cin_g * kh_n * kw_n
    hw = oh * ow
    pitch = span_blocks * pix_block
    spans = (1 if shift > 0 else 0) + (hw - shift + pitch - 1) // pitch
    o_blocks = (cout_g + _N_O - 1) // _N_O
    per_chunk = (o_blocks + o_chunks - 1) // o_chunks
    x_flat, w_flat, out_flat = x.reshape(-1), w.reshape(-1), out.reshape(-1)
    for task in numba.prange(n_img * groups * spans * o_chunks):
        n, g, s0, m, chunk = task_span_from(task, o_chunks, spans, pitch, groups, hw, shift)
        cols = scratch[numba.get_thread_id()]
        _fill_span(cols, pitch, x_flat, (n * c_in + g * cin_g) * h * wd, cin_g, h, wd, kh_n, kw_n, s0, m, ow,
                   sh, sw, dh, dw, pt, pl)
        for q in range(0, m, pix_block):
            q0 = max(0, min(q, m - pix_block))
            n_pix = min(pix_block, m - q0)
            for ob in range(chunk * per_chunk, min(o_blocks, (chunk + 1) * per_chunk)):
                oc = g * cout_g + min(ob * _N_O, cout_g - _N_O)
                _block_streams(cols, q0, pitch, terms, w_flat, oc * terms, terms, b, oc, out_flat,
                               (n * c_out + oc) * hw + s0 + q0, hw, n_pix, streams)
        if streams:
            store_fence()


@njit_parallel
def _forward_blas(fn, x, w, b, out, scratch, groups, kh_n, kw_n, sh, sw, dh, dw, pt, pl, oh, ow, pitch, o_parts):
    """As :func:`_forward`, the products by the BLAS at address ``fn`` (``_blas.gemm``): tasks of
    (image, group, span of ``pitch`` pixels, part of the group's output channels), each filling
    its span's columns, setting its outputs to the bias and adding the product of its weights by
    the columns."""
    n_img, c_in, h, wd = x.shape
    c_out = out.shape[1]
    cin_g, cout_g = c_in // groups, c_out // groups
    terms = cin_g * kh_n * kw_n
    hw = oh * ow
    spans = (hw + pitch - 1) // pitch
    rows = (cout_g + o_parts - 1) // o_parts
    x_flat, w_flat, out_flat = x.reshape(-1), w.reshape(-1), out.reshape(-1)
    for task in numba.prange(n_img * groups * spans * o_parts):
        n, g, s0, m, part = task_span(task, o_parts, spans, pitch, groups, hw)
        r0 = g * cout_g + part * rows
        r1 = min((g + 1) * cout_g, r0 + rows)
        if r1 <= r0:
            continue
        cols = scratch[numba.get_thread_id()]
        _fill_span(cols, pitch, x_flat, (n * c_in + g * cin_g) * h * wd, cin_g, h, wd, kh_n, kw_n, s0, m, ow,
                   sh, sw, dh, dw, pt, pl)
        _blas.product_onto_bias(fn, r1 - r0, m, terms, w_flat, r0 * terms, b, r0, cols, 0, pitch, out_flat,
                                (n * c_out + r0) * hw + s0, hw)


#: Most column elements a task fills (its scratch: 256 KiB of float32), within L2 with the weights.
SPAN_ELEMS = 1 << 16
#: Most pixel blocks per span: past this the fill's per-row work is long paid for.
MAX_SPAN_BLOCKS = 32
#: With the BLAS: most column elements and pixels a task fills (the BLAS packs them again in its
#: own blocks; wider products pay its per-call packing of the weights less often).
BLAS_SPAN_ELEMS = 1 << 18
BLAS_MAX_SPAN = 1024


def span_blocks(terms: int, hw: int, pix_block: int, tasks_per_span: int) -> int:
    """Pixel blocks per task: as many as ``SPAN_ELEMS`` of columns hold (each column row's fill then
    runs over many pixels: MobileNetV2's stem took 2.4 ms in tasks of one block on a 2-core Zen 3,
    most of it the fill's per-call work), at most ``MAX_SPAN_BLOCKS``, and few enough that the
    plane's spans x ``tasks_per_span`` (images x groups) give every thread 4 tasks."""
    blocks = -(-hw // pix_block)
    most = max(1, min(MAX_SPAN_BLOCKS, SPAN_ELEMS // max(1, terms * pix_block), blocks))
    want_spans = -(-4 * thread_count() // max(1, tasks_per_span))
    return max(1, min(most, -(-blocks // want_spans)))


def takes_patches(spec) -> bool:
    """Whether the layer is one of non-overlapping patches 2 or 4 pixels wide (ConvNeXt's 2x2
    downsampling at stride 2, its 4x4 stem at stride 4): kernel and stride equal, kernel
    columns 2 or 4, no padding, no dilation. Those are computed as patches copied as channels
    (:func:`_patch_forward`: a span of output rows per task, or the whole batch's by
    :func:`_patches`), then a 1x1 product by ``_pointwise``'s blocks: on a 2-core Zen 5 at
    batch 8, ConvNeXt-T's three downsamplings took 3.5-4.4 ms as columns per task (most of it
    the fill's work per output row of 14-28 pixels), 2.9-3.2 ms as the whole batch's patches.
    The stem, while its column copies at stride 4 were element
    by element, stayed with the columns; with vector copies of every fourth lane
    (``_simd.copy_step4``) it takes the patches too: columns took 1.20-1.32x the time
    (``python docs/pointwise_blocks.py --only stem``)."""
    (kh, kw), (sh, sw) = spec.kernel_size, spec.stride
    return (kw == sw and kw in (2, 4) and kh == sh and spec.dilation == (1, 1) and not any(spec.padding)
            and spec.lhs_dilation == (1, 1))


@njit_parallel
def _patches(x, out, kh, kw, lanes):
    """out[n, (c * kh + i) * kw + j, oy, ox] = x[n, c, oy * kh + i, ox * kw + j]: each image's
    non-overlapping kh x kw patches as channels, in the weight's order (input channel, kernel
    row, column), a task per input plane, each output plane by ``_pointwise.copy_plane_rows``
    (vector copies of every kw-th lane at kw 2 and 4, nothing written past the plane)."""
    n_img, c, h, wd = x.shape
    oh, ow = out.shape[2], out.shape[3]
    xf, of = x.reshape(-1), out.reshape(-1)
    for task in numba.prange(n_img * c):
        for i in range(kh):
            for j in range(kw):
                copy_plane_rows(xf, task * h * wd + i * wd + j, kh * wd, kw, of,
                                ((task * kh + i) * kw + j) * oh * ow, oh, ow, lanes)


#: Patches are copied and multiplied a span of output rows at a time, into a task's scratch
#: (:func:`_forward_patch_spans`), where a span size wastes little of the blocks' lanes: the whole
#: batch's patches are written to memory and read back. On a 2-core Intel Xeon (``python
#: docs/pointwise_blocks.py --only patches``) the whole batch's copy took ConvNeXt-T's stem and
#: first two downsamplings 1.09-1.11x the spans' time at batch 8 with the input out of cache (as
#: in a network pass), 1.02-1.03x in cache; at batch 2 the stem 1.27-1.48x, the first
#: downsampling 1.10x out of cache and 0.97x in it.
#:
#: Most column elements of a span (its scratch: 1 MiB of float32, the L2 of one core).
PATCH_SPAN_ELEMS = 1 << 18
#: Most pixels of a span: ConvNeXt-T's stem at batch 8 (2-core Intel Xeon, after a PyTorch pass,
#: as in ``nbconv bench --network``) took 1.87 ms in spans of its whole 56 x 56 plane, 1.69 in
#: spans of 16 rows (896 pixels), 1.79 in spans of 8 (one-off timing; script not kept).
PATCH_SPAN_PIXELS = 1024
#: Most lane work of a span's blocks for its pixels, as a multiple of them (a last block moved
#: left computes pixels twice; a block over fewer pixels than its width computes lanes for
#: nothing).
PATCH_SPAN_MAX_WORK = 1.1


def _span_lane_work(m: int, pix_block: int, lanes: int, narrow: bool) -> int:
    """Lanes computed per output channel by :func:`_forward_patch_spans` for a span of ``m``
    pixels: whole blocks (the last moved left), or a narrow vector for a tail of at most
    ``lanes`` pixels where ``narrow`` (groups of ``_N_O_NARROW`` outputs or more)."""
    tail = m % pix_block
    if narrow and m > pix_block and 0 < tail <= lanes:
        return m - tail + lanes
    return -(-m // pix_block) * pix_block


def patch_span_rows(spec, threads: int) -> int:
    """Output rows per task of :func:`_forward_patch_spans` for a layer that
    :func:`takes_patches`, or 0 where the whole batch's patches are copied first: where the
    BLAS takes the product (it packs them itself; ``_blas.takes_product``), or where no span
    size of at most
    ``PATCH_SPAN_ELEMS`` column elements and ``PATCH_SPAN_PIXELS`` pixels (or one row) wastes at
    most ``PATCH_SPAN_MAX_WORK`` of the blocks' lanes and gives every thread 4 tasks. Of those
    that do, the least waste, then the most rows. A function of the sizes and the thread count
    (the sums are in one order whatever the split), kept per layer (``functools.lru_cache``:
    the search took 50-70 us in a one-off timing, a fifth of the stem's call at batch 2)."""
    (kh, kw), (oh, ow) = spec.kernel_size, spec.out_size
    terms = spec.in_per_group * kh * kw
    if (_blas.for_products() is not None and _blas.takes_product(terms, oh * ow)
            and oh * ow * terms * spec.out_per_group >= _blas.MIN_MACS):
        return 0
    lanes = _pointwise.vector_lanes(spec.dtype)
    return _span_rows(spec.batch * spec.groups, spec.in_per_group * kh * kw, oh, ow,
                      spec.out_per_group >= _N_O_NARROW, threads, lanes, _pointwise.pixel_vectors() * lanes,
                      PATCH_SPAN_ELEMS, PATCH_SPAN_PIXELS, PATCH_SPAN_MAX_WORK)


@functools.lru_cache(maxsize=1024)
def _span_rows(planes: int, terms: int, oh: int, ow: int, narrow: bool, threads: int, lanes: int, pix_block: int,
               most_elems: int, most_pixels: int, max_work: float) -> int:
    """:func:`patch_span_rows` of ``planes`` (images x groups) output planes of oh x ow."""
    best, best_key = 0, None
    for rows in range(1, max(1, min(oh, most_elems // max(1, terms * ow), most_pixels // ow)) + 1):
        spans = -(-oh // rows)
        if planes * spans < 4 * threads:
            continue
        work = sum(_span_lane_work(min(rows, oh - s * rows) * ow, pix_block, lanes, narrow) for s in range(spans))
        waste = work / (oh * ow)
        key = (round(waste, 2), -rows)
        if waste <= max_work and (best_key is None or key < best_key):
            best, best_key = rows, key
    return best


@njit_parallel
def _forward_patch_spans(x, w, b, out, scratch, groups, kh, kw, oh, ow, span_rows, pix_block, lanes):
    """:func:`_patch_forward`'s result, a span of ``span_rows`` output rows per task: tasks of
    (image, group, span), each copying its span's patches (terms x the span's pixels, in the
    weight's order) into its scratch row (``_pointwise.copy_plane_rows``), then multiplying them
    by the weights as ``_pointwise``'s blocks do: wide blocks (the last moved left to end at the
    span's end), or, for a tail of at most ``lanes`` pixels in groups of ``_N_O_NARROW`` outputs
    or more, wide blocks and one narrow vector. Each output is the bias plus its terms in the
    weight's order, as by the whole batch's patches."""
    n_img, c_in, h, wd = x.shape
    c_out = out.shape[1]
    cin_g, cout_g = c_in // groups, c_out // groups
    terms = cin_g * kh * kw
    hw = oh * ow
    spans = (oh + span_rows - 1) // span_rows
    pitch = span_rows * ow
    o_blocks = (cout_g + _N_O - 1) // _N_O
    x_flat, w_flat, out_flat = x.reshape(-1), w.reshape(-1), out.reshape(-1)
    for task in numba.prange(n_img * groups * spans):
        s = task % spans
        g = (task // spans) % groups
        n = task // (spans * groups)
        oy0 = s * span_rows
        rows = min(span_rows, oh - oy0)
        m = rows * ow
        cols = scratch[numba.get_thread_id()]
        for ci in range(cin_g):
            src = ((n * c_in + g * cin_g + ci) * h + oy0 * kh) * wd
            for i in range(kh):
                for j in range(kw):
                    copy_plane_rows(x_flat, src + i * wd + j, kh * wd, kw, cols, ((ci * kh + i) * kw + j) * pitch,
                                    rows, ow, lanes)
        tail = m % pix_block
        narrow = m > pix_block and 0 < tail <= lanes and cout_g >= _N_O_NARROW
        wide = m - tail if narrow else m
        o0 = n * c_out * hw + oy0 * ow
        for q in range(0, wide, pix_block):
            q0 = max(0, min(q, wide - pix_block))
            for ob in range(o_blocks):
                oc = g * cout_g + min(ob * _N_O, cout_g - _N_O)
                _block(cols, q0, pitch, terms, w_flat, oc * terms, terms, b, oc, out_flat, o0 + oc * hw + q0, hw,
                       min(pix_block, wide - q0))
        if narrow:
            for nb in range((cout_g + _N_O_NARROW - 1) // _N_O_NARROW):
                oc = g * cout_g + min(nb * _N_O_NARROW, cout_g - _N_O_NARROW)
                _block_narrow(cols, m - lanes, pitch, terms, w_flat, oc * terms, terms, b, oc, out_flat,
                              o0 + oc * hw + m - lanes, hw, lanes)


def _patch_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, out: np.ndarray, spec) -> None:
    """:func:`im2col_forward` where :func:`takes_patches`: the patches as channels, then their 1x1
    product, the whole batch's at once, or a span of output rows per task where
    :func:`patch_span_rows` says. Each output is the bias plus its terms in the weight's order,
    as by the columns."""
    (kh, kw), (oh, ow) = spec.kernel_size, spec.out_size
    threads = thread_count()
    rows = patch_span_rows(spec, threads)
    if rows:
        lanes = _pointwise.vector_lanes(x.dtype)
        size = spec.in_per_group * kh * kw * rows * ow
        scratch, = _scratch.reused(("patch spans", x.dtype.str, size, threads),
                                   lambda: (np.empty((threads, size), x.dtype),))
        _forward_patch_spans(x, w, b, out, scratch, spec.groups, kh, kw, oh, ow, rows,
                             _pointwise.pixel_vectors() * lanes, lanes)
        return
    shape = (spec.batch, x.shape[1] * kh * kw, oh, ow)
    patches, = _scratch.reused(("patches", x.dtype.str, shape), lambda: (np.empty(shape, x.dtype),))
    _patches(x, patches, kh, kw, _pointwise.vector_lanes(x.dtype))  # every element written: reusable
    _pointwise.plane_products(patches, w, b, out, spec.groups, oh * ow)


def im2col_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, out: np.ndarray, spec) -> None:
    """``out`` = the convolution of ``spec`` (C-contiguous arrays, ``w`` (C_out, C_in/groups, kH,
    kW), where :func:`applies`)."""
    if takes_patches(spec):
        _patch_forward(x, w, b, out, spec)
        return
    (kh, kw), (oh, ow) = spec.kernel_size, spec.out_size
    hw, terms = oh * ow, spec.in_per_group * kh * kw
    pix_block = _pointwise.pixel_vectors() * _pointwise.vector_lanes(x.dtype)
    threads = thread_count()
    blas = _blas.for_products()
    if blas is not None and terms >= MIN_BLAS_TERMS and hw * terms * spec.out_per_group >= _blas.MIN_MACS:
        # spans and parts from the sizes alone (the BLAS's sums depend on the split)
        blocks = max(1, min(BLAS_MAX_SPAN // pix_block, BLAS_SPAN_ELEMS // (terms * pix_block), -(-hw // pix_block)))
        pitch = blocks * pix_block
        o_parts = -(-spec.out_per_group // _blas.TASK_ROWS)
        size = terms * pitch + pix_block  # a vector of slack (see _fill_row)
        scratch, = _scratch.reused(("im2col", x.dtype.str, size, threads),
                                   lambda: (np.empty((threads, size), x.dtype),))
        with _blas.single_threaded(blas):
            _forward_blas(blas.address(x.dtype), x, w, b, out, scratch, spec.groups, kh, kw, *spec.stride,
                          *spec.dilation, spec.padding[0], spec.padding[2], oh, ow, pitch, o_parts)
        return
    blocks = span_blocks(terms, hw, pix_block, spec.batch * spec.groups)
    spans = -(-hw // (blocks * pix_block))
    o_chunks = _pointwise.output_chunks(spec.batch * spec.groups * spans, spec.out_per_group)
    size = terms * blocks * pix_block + pix_block  # a vector of slack (see _fill_row)
    scratch, = _scratch.reused(("im2col", x.dtype.str, size, threads),
                               lambda: (np.empty((threads, size), x.dtype),))
    shift = _pointwise.streaming_shift(out, hw, spec.out_per_group)
    _forward(x, w, b, out, scratch, spec.groups, kh, kw, *spec.stride, *spec.dilation, spec.padding[0],
             spec.padding[2], oh, ow, pix_block, blocks, o_chunks, max(0, shift), int(shift >= 0))
