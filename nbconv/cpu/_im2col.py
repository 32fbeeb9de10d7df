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

import numba
import numpy as np

from .._numba_options import CPU_PARALLEL, CPU_SERIAL
from . import _pointwise, _scratch
from ._pointwise import _N_O, _block, task_block

#: Most terms per output: a block's columns are ``terms`` x one pixel block (16 float32 pixels with
#: AVX2, 64 with AVX-512: 128 KiB and 512 KiB at this bound), kept within L2. ConvNeXt-T's last
#: downsampling layer (384 -> 768, 2x2) has 1536.
MAX_TERMS = 2048


def applies(spec) -> bool:
    """Two or more input channels per group, at most ``MAX_TERMS`` terms per output, at least
    ``_pointwise.O_BLOCK`` output channels per group, no input dilation, at least one image and
    one output."""
    (kh, kw), (oh, ow) = spec.kernel_size, spec.out_size
    terms = spec.in_per_group * kh * kw
    return (spec.in_per_group > 1 and spec.out_per_group >= _pointwise.O_BLOCK and spec.lhs_dilation == (1, 1)
            and spec.batch > 0 and oh * ow > 0 and terms <= MAX_TERMS)


@numba.njit(**CPU_SERIAL)
def _fill_row(cols, row, plane, oy0, ox0, n_pix, ow, sh, sw, dy, dx):
    """cols[row + p] = plane[oy * sh + dy, ox * sw + dx] (0 outside the plane) for the ``n_pix``
    output pixels (oy, ox) from (oy0, ox0) on in row-major order: per output row, zeros, a
    strided copy, zeros, with no test per pixel."""
    h, wd = plane.shape
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
            src = (ox + lo) * sw + dx
            for q in range(lo, hi):
                cols[row + p + q] = plane[iy, src]
                src += sw
            for q in range(hi, span):
                cols[row + p + q] = 0
        else:
            for q in range(span):
                cols[row + p + q] = 0
        p += span
        ox = 0
        oy += 1


@numba.njit(**CPU_PARALLEL)
def _forward(x, w, b, out, scratch, groups, kh_n, kw_n, sh, sw, dh, dw, pt, pl, oh, ow, pix_block, o_chunks):
    """out (N, C_out, OH, OW) = the convolution of x (N, C_in, H, W) by w (C_out, C_in/groups, kH,
    kW) + b: tasks of (image, group, block of output pixels, chunk of output-channel blocks),
    each filling its block's columns (terms x pixels, zero in the padding) into its scratch row,
    then multiplying them by the weights ``_pointwise.O_BLOCK`` output channels at a time."""
    n_img, c_in, h, wd = x.shape
    c_out = out.shape[1]
    cin_g, cout_g = c_in // groups, c_out // groups
    terms = cin_g * kh_n * kw_n
    hw = oh * ow
    p_blocks = (hw + pix_block - 1) // pix_block
    o_blocks = (cout_g + _N_O - 1) // _N_O
    per_chunk = (o_blocks + o_chunks - 1) // o_chunks
    w_flat, out_flat = w.reshape(-1), out.reshape(-1)
    for task in numba.prange(n_img * groups * p_blocks * o_chunks):
        n, g, p0, n_pix, chunk = task_block(task, o_chunks, p_blocks, groups, hw, pix_block)
        cols = scratch[numba.get_thread_id()]
        oy0 = p0 // ow
        ox0 = p0 - oy0 * ow
        for c in range(cin_g):
            plane = x[n, g * cin_g + c]
            for i in range(kh_n):
                for j in range(kw_n):
                    _fill_row(cols, ((c * kh_n + i) * kw_n + j) * pix_block, plane, oy0, ox0, n_pix, ow,
                              sh, sw, i * dh - pt, j * dw - pl)
        for ob in range(chunk * per_chunk, min(o_blocks, (chunk + 1) * per_chunk)):
            oc = g * cout_g + min(ob * _N_O, cout_g - _N_O)
            _block(cols, 0, pix_block, terms, w_flat, oc * terms, terms, b, oc, out_flat, (n * c_out + oc) * hw + p0,
                   hw, n_pix)


def im2col_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, out: np.ndarray, spec) -> None:
    """``out`` = the convolution of ``spec`` (C-contiguous arrays, ``w`` (C_out, C_in/groups, kH,
    kW), where :func:`applies`)."""
    (kh, kw), (oh, ow) = spec.kernel_size, spec.out_size
    hw, terms = oh * ow, spec.in_per_group * kh * kw
    pix_block = _pointwise.pixel_vectors() * _pointwise.vector_lanes(x.dtype)
    threads = numba.get_num_threads()
    o_chunks = _pointwise.output_chunks(spec.batch * spec.groups * -(-hw // pix_block), spec.out_per_group)
    scratch, = _scratch.reused(("im2col", x.dtype.str, terms * pix_block, threads),
                               lambda: (np.empty((threads, terms * pix_block), x.dtype),))
    _forward(x, w, b, out, scratch, spec.groups, kh, kw, *spec.stride, *spec.dilation, spec.padding[0],
             spec.padding[2], oh, ow, pix_block, o_chunks)
