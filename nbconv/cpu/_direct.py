"""Direct grouped convolution on the CPU: row passes that LLVM vectorises along W.

The work is split into tasks of (image, group, block of output channels), run in parallel.
A task keeps its output rows in L1 and adds into each of them, for every (input channel,
kernel row, kernel column) tap, one shifted input row times one weight: the inner loop is a
contiguous ``axpy`` along the output row (for stride 1) that LLVM turns into AVX-512 FMAs.
The valid column range of each tap is computed up front, so padding costs nothing and no
padded copy of the input is made.

Arrays are passed flattened and indexed with unsigned integers: Numba then emits no
negative-index wrap-around, which would otherwise keep LLVM from vectorising the inner loops.
"""

from __future__ import annotations

import numba
import numpy as np

from .._numba_options import njit_parallel, njit_serial

_U = numba.uint64


@njit_serial
def valid_range(offset, stride, in_len, out_len):
    """Output indices ``o`` in [lo, hi) with ``0 <= o * stride + offset < in_len``."""
    lo = 0
    if offset < 0:
        lo = (-offset + stride - 1) // stride
    last = in_len - 1 - offset  # largest o * stride allowed
    hi = min(out_len, last // stride + 1) if last >= 0 else 0
    return lo, max(lo, hi)


@njit_parallel
def _forward_direct(x, w, b, out, dims, sh, sw, ph, pw, dh, dw, groups, oc_block):
    """out = conv2d(x, w) + b, all flattened C-order arrays.

    ``dims`` = (N, C_in, H, W, C_out, C_in/groups, kH, kW, OH, OW); ``ph``/``pw`` are the
    near-side pads. ``out`` is fully overwritten.
    """
    n_img, c_in, in_h, in_w, c_out, cin_g, kh_n, kw_n, out_h, out_w = dims
    cout_g = c_out // groups
    n_blocks = (cout_g + oc_block - 1) // oc_block
    for task in numba.prange(n_img * groups * n_blocks):
        blk = task % n_blocks
        rest = task // n_blocks
        g = rest % groups
        n = rest // groups
        oc_lo = g * cout_g + blk * oc_block
        oc_hi = min(oc_lo + oc_block, (g + 1) * cout_g)
        for oy in range(out_h):
            for oc in range(oc_lo, oc_hi):
                orow = ((n * c_out + oc) * out_h + oy) * out_w
                bv = b[oc]
                for ox in range(out_w):
                    out[_U(orow + ox)] = bv
            for kh in range(kh_n):
                iy = oy * sh - ph + kh * dh
                if iy < 0 or iy >= in_h:
                    continue
                for kw in range(kw_n):
                    off = kw * dw - pw
                    lo, hi = valid_range(off, sw, in_w, out_w)
                    for ci in range(cin_g):
                        xrow = ((n * c_in + g * cin_g + ci) * in_h + iy) * in_w + off
                        for oc in range(oc_lo, oc_hi):
                            orow = ((n * c_out + oc) * out_h + oy) * out_w
                            wv = w[_U(((oc * cin_g + ci) * kh_n + kh) * kw_n + kw)]
                            if sw == 1:
                                for ox in range(lo, hi):
                                    out[_U(orow + ox)] += wv * x[_U(xrow + ox)]
                            else:
                                for ox in range(lo, hi):
                                    out[_U(orow + ox)] += wv * x[_U(xrow + ox * sw)]


def forward_direct(x: np.ndarray, w: np.ndarray, b: np.ndarray, out: np.ndarray, spec, oc_block: int) -> None:
    """Run the direct kernel on C-contiguous 4-D ``x``, ``w``, ``out`` and 1-D ``b``."""
    dims = x.shape + w.shape[:1] + w.shape[1:] + out.shape[2:]
    _forward_direct(
        x.reshape(-1), w.reshape(-1), b, out.reshape(-1), dims,
        spec.stride[0], spec.stride[1], spec.padding[0], spec.padding[2],
        spec.dilation[0], spec.dilation[1], spec.groups, oc_block,
    )
