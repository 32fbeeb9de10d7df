"""1x1 layers with one input channel per group: each output channel a multiple of one input
channel plus its bias (a per-channel scale and shift).

``out[n, o, oy, ox] = b[o] + w[o] * x[n, o // m, oy * sH, ox * sW]`` for ``m`` outputs per group
(a depthwise 1x1, with a channel multiplier of fewer than ``_pointwise.O_BLOCK``; from there
``_pointwise``'s blocks take it). One multiply-add per output, fused as every kernel's first
term is (the same bits as the reference's ``b + w * x`` rounded once), a loop LLVM vectorises: no
packing, no scratch, nothing per geometry. The kernels for layers with more terms (the packed
kernel, ``_depthwise_lanes``) took 30-135 us on a 1 x 128 x 1 x 1 to 8 x 128 x 7 x 7 input on a
2-core Zen 3, PyTorch 0.86x of that on the 7 x 7 planes (``docs/performance.md``, round 32).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

from .._numba_options import njit_parallel
from . import _pointwise
from ._simd import _fma


def applies(spec) -> bool:
    """A 1x1 kernel, one input channel and fewer than ``_pointwise.O_BLOCK`` outputs per group,
    no padding and no input dilation, at least one image and one output pixel."""
    return (spec.kernel_size == (1, 1) and spec.in_per_group == 1 and spec.out_per_group < _pointwise.O_BLOCK
            and not any(spec.padding) and spec.lhs_dilation == (1, 1) and spec.batch > 0
            and min(spec.out_size) > 0)


@intrinsic
def _fused(typingctx, a, b, c):
    """``a * b + c`` rounded once (``llvm.fma``), for float scalars of one type."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        return _fma(builder, *args)

    return a(a, b, c), codegen


@njit_parallel
def _forward(x, w, b, out, sh, sw):
    """out (N, C_out, OH, OW) = b + w * x, each output plane from input plane ``o // m`` of its
    image, every ``sh``-th row and ``sw``-th column; a task per output plane."""
    n_img, c_in, h, wd = x.shape
    c_out, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    m = c_out // c_in
    x_flat, w_flat, out_flat = x.reshape(-1), w.reshape(-1), out.reshape(-1)
    for task in numba.prange(n_img * c_out):
        n = task // c_out
        o = task - n * c_out
        src = (n * c_in + o // m) * h * wd
        dst = task * oh * ow
        scale, shift = w_flat[o], b[o]
        if sh == 1 and sw == 1:
            xs, os = x_flat[src:src + oh * ow], out_flat[dst:dst + oh * ow]  # indices from 0: vectorised
            for i in range(oh * ow):
                os[i] = _fused(scale, xs[i], shift)
        else:
            for oy in range(oh):
                row = src + oy * sh * wd
                for ox in range(ow):
                    out_flat[dst + oy * ow + ox] = _fused(scale, x_flat[row + ox * sw], shift)


def scale_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, out: np.ndarray, spec) -> None:
    """``out`` = the convolution of ``spec`` (C-contiguous arrays, where :func:`applies`)."""
    _forward(x, w, b, out, *spec.stride)
