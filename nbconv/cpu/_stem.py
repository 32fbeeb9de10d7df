"""Dense layers on a few input channels (networks' stems) from phase-split input rows.

A network's first layer (3 input channels, a 3x3 to 7x7 kernel, stride 2) has too few terms per
output (27 to 147) for a matrix product to pay: ``_im2col`` copies a column per term, each with
the stride's gather (27 copies of every output pixel for a 3x3 stem: on a 2-core Zen 2 the copy
took about half the layer's time). Here a task (image, span of output rows) splits each input
row it needs once into its ``sW`` column phases, zero-padded (``D[r][c][p][k] = x_padded[c][row0
+ r][k * sW + p]``), and ``_pointwise``'s block reads every term (input channel, kernel row,
kernel column) straight from them: term ``(c, i, j)`` of output row ``oy`` is the run of ``D``
at row ``(oy - oy0) * sH + i * dH``, phase ``(j * dW) % sW``, from column ``(j * dW) // sW``, a
table of offsets per layer (:func:`term_offsets`). Output channels go by blocks of
``_pointwise.O_BLOCK`` and, for what those leave, of ``NARROW_O`` (:func:`channel_blocks`).
Everything is a run-time value: one compile per dtype.

Each output is ``bias`` plus its terms in the weight's order (input channel, kernel row, column),
each multiply-add fused: the sums of ``_im2col`` and of the reference's order, the same bits.
Results of ``_pointwise.STREAM_BYTES`` or more whose rows are whole cache lines are written with
streaming stores (:func:`_pointwise.streams_whole_rows`).
"""

from __future__ import annotations

import functools

import numba
import numpy as np

from .._numba_options import njit_parallel, njit_serial
from . import _im2col, _pointwise, _scratch
from ._pointwise import _BITS, _N_O, _N_PV, pointwise_block
from ._simd import copy_step1, copy_step2, copy_step4, store_fence
from ._threads import thread_count

#: The wide block, its terms read through a table of offsets, streaming where asked.
_block = pointwise_block(_N_O, _N_PV, _BITS, 0, stream="argument", offsets=True)
#: Output channels of the narrow block, the same pixels: it takes what the wide blocks leave
#: where their count does not divide the outputs' (16 = 6 + 6 + 4, 32 = 4 x 6 + 2 x 4), where
#: wide blocks alone computed 2 to 4 channels twice (18 for 16, 36 for 32). On a 2-core Zen 3 at
#: batch 8, in the networks: 3 -> 16 3x3 s2 from 0.87-0.95x PyTorch to 1.00-1.06x, 3 -> 32 from
#: 0.98-1.04x to 1.25-1.31x (``docs/performance.md``, round 32).
NARROW_O = 4
_block_narrow = pointwise_block(NARROW_O, _N_PV, _BITS, 0, stream="argument", offsets=True)

#: Most input channels of a layer this kernel takes (the stems: 3).
MAX_IN_CHANNELS = 4
#: Output rows per task at most (its phase rows stay in L2: a 7x7 stem's 8 rows take 21 input
#: rows of 3 channels x 2 phases x 115 values, 58 KB of float32).
SPAN_ROWS = 8


def applies(spec) -> bool:
    """A dense layer (one group) on at most ``MAX_IN_CHANNELS`` input channels, at least
    ``_pointwise.O_BLOCK`` outputs, outputs at least one wide block of pixels wide, no input
    dilation, at least one image; not one of non-overlapping patches (ConvNeXt's 4x4 stem at
    stride 4, each input read once: ``_im2col``'s patches were faster)."""
    lanes = _pointwise.vector_lanes(spec.dtype)
    return (spec.groups == 1 and spec.in_channels <= MAX_IN_CHANNELS and spec.out_channels >= _pointwise.O_BLOCK
            and spec.out_size[1] >= _N_PV * lanes and spec.out_size[0] > 0 and spec.lhs_dilation == (1, 1)
            and spec.batch > 0 and not _im2col.takes_patches(spec))


def channel_blocks(c_out: int) -> tuple[int, int]:
    """Wide and narrow blocks of output channels for ``c_out`` outputs (at least ``_N_O``): the
    wide ones from channel 0, the narrow after them, the last block of either moved back to end
    at ``c_out``; the fewest channels computed twice (at most one), then the fewest blocks."""
    q, r = divmod(c_out, _N_O)
    if r == 0 or r == _N_O - 1:  # r = 5: one more wide block moved back by one channel
        return q + (r > 0), 0
    if r > NARROW_O - 2:  # 3, 4: one narrow block (moved back by one channel for 3)
        return q, 1
    return q - 1, 2  # 1, 2: a wide block's channels and r as two narrow blocks


@njit_serial
def block_start(ob, n_wide, c_out):
    """First output channel of block ``ob`` of :func:`channel_blocks`' ``n_wide`` wide blocks and
    the narrow ones after them, the last of each kind moved back to end at ``c_out``."""
    if ob < n_wide:
        return min(ob * _N_O, c_out - _N_O)
    return min(n_wide * _N_O + (ob - n_wide) * NARROW_O, c_out - NARROW_O)


def phase_length(spec) -> int:
    """Values per phase row: the output's columns and those the kernel's last column adds."""
    return spec.out_size[1] + (spec.kernel_size[1] - 1) * spec.dilation[1] // spec.stride[1]


@functools.lru_cache(maxsize=256)
def term_offsets(c_in: int, kernel_size: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
                 length: int) -> np.ndarray:
    """Offset in a task's phase rows of each term (input channel, kernel row, column, in the
    weight's order) for the task's first output row (row pitch ``c_in * sW * length``)."""
    (kh, kw), (_, sw), (dh, dw) = kernel_size, stride, dilation
    row = c_in * sw * length
    offs = [(i * dh) * row + (c * sw + (j * dw) % sw) * length + (j * dw) // sw
            for c in range(c_in) for i in range(kh) for j in range(kw)]
    offs = np.array(offs, np.int64)
    offs.flags.writeable = False
    return offs


@njit_serial
def _split_rows(x_flat, plane0, h, wd, c_in, d, iy0, rows, sw, pl, length):
    """``d[(r * c_in + c) * sw * length + p * length + k] = x[c, iy0 + r, k * sw + p - pl]`` (0 outside
    the h x wd planes from ``x_flat[plane0]``), rows ``r < rows``, filled in increasing order
    (a vector copy leaves up to a vector of zeros past its end, overwritten next)."""
    for r in range(rows):
        iy = iy0 + r
        for c in range(c_in):
            for p in range(sw):
                d0 = ((r * c_in + c) * sw + p) * length
                if iy < 0 or iy >= h:
                    for k in range(length):
                        d[d0 + k] = 0
                    continue
                lo = min(length, max(0, (pl - p + sw - 1) // sw))
                hi = max(lo, min(length, (wd - 1 - p + pl) // sw + 1))
                for k in range(lo):
                    d[d0 + k] = 0
                src = plane0 + (c * h + iy) * wd + lo * sw + p - pl
                if hi > lo:
                    if sw == 1:
                        copy_step1(x_flat, src, d, d0 + lo, hi - lo)
                    elif sw == 2:
                        copy_step2(x_flat, src, d, d0 + lo, hi - lo)
                    elif sw == 4:
                        copy_step4(x_flat, src, d, d0 + lo, hi - lo)
                    else:
                        for k in range(hi - lo):
                            d[d0 + lo + k] = x_flat[src + k * sw]
                for k in range(hi, length):
                    d[d0 + k] = 0


@njit_parallel
def _forward(x, w, b, out, scratch, offs, kh, sh, sw, dh, pt, pl, span_rows, length, pix_block, streams, n_wide,
             n_narrow):
    """out (N, C_out, OH, OW) = the dense convolution of x (N, C_in, H, W) by w (C_out, C_in, kH,
    kW) + b: tasks of (image, span of ``span_rows`` output rows), each splitting its input rows
    into phases (:func:`_split_rows`), then computing each output row a wide block of pixels at a
    time (the last moved left to end at the row's end) for every block of output channels
    (``n_wide`` wide, then ``n_narrow`` narrow: :func:`channel_blocks`); where
    ``streams``, each block of output channels over the whole row in turn (its lines written one
    after the other: on a 2-core Zen 3 the 3x3 stems 1.06-1.08x faster than block by block)."""
    n_img, c_in, h, wd = x.shape
    c_out, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    hw = oh * ow
    terms = offs.shape[0]
    row = c_in * sw * length
    spans = (oh + span_rows - 1) // span_rows
    o_blocks = n_wide + n_narrow
    x_flat, w_flat, out_flat = x.reshape(-1), w.reshape(-1), out.reshape(-1)
    for task in numba.prange(n_img * spans):
        n = task // spans
        oy0 = (task - n * spans) * span_rows
        oy1 = min(oh, oy0 + span_rows)
        d = scratch[numba.get_thread_id()]
        _split_rows(x_flat, n * c_in * h * wd, h, wd, c_in, d, oy0 * sh - pt, (oy1 - oy0 - 1) * sh + (kh - 1) * dh + 1,
                    sw, pl, length)
        for oy in range(oy0, oy1):
            x0 = (oy - oy0) * sh * row
            if streams:  # each channel block's row of lines one after the other
                for ob in range(o_blocks):
                    wide = ob < n_wide
                    oc = block_start(ob, n_wide, c_out)
                    for q in range(0, ow, pix_block):
                        q0 = min(q, ow - pix_block)
                        o0 = (n * c_out + oc) * hw + oy * ow + q0
                        if wide:
                            _block(d, x0 + q0, offs, terms, w_flat, oc * terms, terms, b, oc, out_flat, o0, hw,
                                   pix_block, streams)
                        else:
                            _block_narrow(d, x0 + q0, offs, terms, w_flat, oc * terms, terms, b, oc, out_flat, o0,
                                          hw, pix_block, streams)
            else:
                for q in range(0, ow, pix_block):
                    q0 = min(q, ow - pix_block)
                    for ob in range(o_blocks):
                        oc = block_start(ob, n_wide, c_out)
                        o0 = (n * c_out + oc) * hw + oy * ow + q0
                        if ob < n_wide:
                            _block(d, x0 + q0, offs, terms, w_flat, oc * terms, terms, b, oc, out_flat, o0, hw,
                                   pix_block, streams)
                        else:
                            _block_narrow(d, x0 + q0, offs, terms, w_flat, oc * terms, terms, b, oc, out_flat, o0,
                                          hw, pix_block, streams)
        if streams:
            store_fence()


def span_rows(spec, threads: int) -> int:
    """Output rows per task: at most ``SPAN_ROWS``, and few enough that every thread gets 4
    tasks where the layer has that many rows."""
    oh = spec.out_size[0]
    return max(1, min(SPAN_ROWS, -(-spec.batch * oh // (4 * threads))))


def stem_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, out: np.ndarray, spec) -> None:
    """``out`` = the convolution of ``spec`` (C-contiguous arrays, where :func:`applies`; a
    ValueError elsewhere: the blocks would write past rows narrower than a wide block)."""
    if not applies(spec):
        raise ValueError(f"_stem: the stem kernel does not take this layer ({spec})")
    kh, (sh, sw), dh = spec.kernel_size[0], spec.stride, spec.dilation[0]
    length = phase_length(spec)
    threads = thread_count()
    rows = span_rows(spec, threads)
    rows_in = (rows - 1) * sh + (kh - 1) * dh + 1
    size = rows_in * spec.in_channels * sw * length + _pointwise.vector_lanes(x.dtype)  # a vector of slack
    scratch, = _scratch.reused(("stem", x.dtype.str, size, threads), lambda: (np.empty((threads, size), x.dtype),))
    offs = term_offsets(spec.in_channels, spec.kernel_size, spec.stride, spec.dilation, length)
    _forward(x, w, b, out, scratch, offs, kh, sh, sw, dh, spec.padding[0], spec.padding[2], rows, length,
             _N_PV * _pointwise.vector_lanes(x.dtype), int(_pointwise.streams_whole_rows(out)),
             *channel_blocks(spec.out_channels))
