"""Direct grouped convolution on the CPU: row passes that LLVM vectorises along W.

The work is split into tasks of (image, group, block of output channels), run in parallel.
A task keeps its output rows in L1 and adds into each of them, for every (input channel,
kernel row, kernel column) tap, one shifted input row times one weight: the inner loop is a
contiguous ``axpy`` along the output row (for stride 1) that LLVM turns into AVX-512 FMAs.
The valid column range of each tap is computed up front, so padding costs nothing and no
padded copy of the input is made.
"""

from __future__ import annotations

import numba
import numpy as np

from .._numba_options import njit_parallel, njit_serial


@njit_serial
def _valid_range(offset, stride, in_len, out_len):
    """Output indices ``o`` in [lo, hi) with ``0 <= o * stride + offset < in_len``."""
    lo = 0
    if offset < 0:
        lo = (-offset + stride - 1) // stride
    hi = out_len
    last = in_len - 1 - offset  # largest o * stride allowed
    if last < 0:
        hi = 0
    else:
        hi = min(out_len, last // stride + 1)
    return lo, max(lo, hi)


@njit_parallel
def _forward_direct(x, w, b, out, sh, sw, ph, pw, dh, dw, groups, oc_block):
    """out[n, o] = b[o] + sum over the group's input channels and taps of w * x (cross-correlation).

    x: (N, C_in, H, W) C-contiguous; w: (C_out, C_in/groups, kH, kW); b: (C_out,);
    out: (N, C_out, OH, OW) C-contiguous, fully overwritten. ``ph``/``pw`` are the near-side pads.
    """
    n_img, _, in_h, in_w = x.shape
    c_out, cin_g, kh_n, kw_n = w.shape
    out_h, out_w = out.shape[2], out.shape[3]
    cout_g = c_out // groups
    n_blocks = (cout_g + oc_block - 1) // oc_block
    n_tasks = n_img * groups * n_blocks
    for task in numba.prange(n_tasks):
        blk = task % n_blocks
        rest = task // n_blocks
        g = rest % groups
        n = rest // groups
        oc_lo = g * cout_g + blk * oc_block
        oc_hi = min(oc_lo + oc_block, (g + 1) * cout_g)
        for oy in range(out_h):
            for oc in range(oc_lo, oc_hi):
                orow = out[n, oc, oy]
                bv = b[oc]
                for ox in range(out_w):
                    orow[ox] = bv
            for kh in range(kh_n):
                iy = oy * sh - ph + kh * dh
                if iy < 0 or iy >= in_h:
                    continue
                for kw in range(kw_n):
                    off = kw * dw - pw
                    lo, hi = _valid_range(off, sw, in_w, out_w)
                    for ci in range(cin_g):
                        xrow = x[n, g * cin_g + ci, iy]
                        for oc in range(oc_lo, oc_hi):
                            orow = out[n, oc, oy]
                            wv = w[oc, ci, kh, kw]
                            if sw == 1:
                                for ox in range(lo, hi):
                                    orow[ox] += wv * xrow[ox + off]
                            else:
                                for ox in range(lo, hi):
                                    orow[ox] += wv * xrow[ox * sw + off]
    return out


def forward_direct(x: np.ndarray, w: np.ndarray, b: np.ndarray, out: np.ndarray, spec, oc_block: int) -> None:
    sh, sw = spec.stride
    dh, dw = spec.dilation
    _forward_direct(x, w, b, out, sh, sw, spec.padding[0], spec.padding[2], dh, dw, spec.groups, oc_block)
