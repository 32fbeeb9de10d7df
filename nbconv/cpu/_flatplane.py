"""Depthwise convolution of small planes on the CPU, over the flattened input with masked weights.

For a stride-1 depthwise convolution whose output has the input's size (``padding='same'``, the
usual MobileNet/EfficientNet layer) and one output channel per input channel, output element
``i`` of the flattened (C, H, W) block of an image reads input elements ``i + d_t`` of the same
block, one constant ``d_t`` per tap. So one long vector loop runs over whole blocks of channels,
with no packing and no unpacking (the packed path's cost on 7x7 and 14x14 planes, where a row is
shorter than a vector): taps that would read padding (or wrap into the next row or channel) are
given a zero weight, from per-tap weight planes ``we[t, i] = w[c(i), t] * valid_t(i)`` built once
per block of channels and used for every image.

A zero weight times a finite pixel adds an exact zero. A wrapped-in non-finite pixel would add
NaN where the true sum has no such term, so each block's outputs are checked (``v - v`` summed:
NaN if any is not finite); when one is, the launcher computes the call again on the packed path,
which reads padding as zeros. An output is the bias plus its terms in kernel order, each
multiply-add fused: a fixed order, so results are the same run after run and whatever the thread
count (which only changes the blocks of channels).
"""

from __future__ import annotations

import functools

import numba
import numpy as np

from .._version import __version__
from . import _generated

#: Elements of one block of channels (per-tap weight planes of (taps + 1) x this many elements
#: stay in L2); fewer when needed to give every thread 4 blocks.
BLOCK_ELEMS = 2048
#: Widest output this path takes: from 16 columns on, ``_rowblock`` shares loads between rows.
MAX_OUT_WIDTH = 15


def applies(spec) -> bool:
    """Depthwise, multiplier 1, stride 1, no input dilation, output the input's size, narrow, at
    most ``_generated.MAX_TAPS`` taps."""
    return (
        spec.in_per_group == 1
        and spec.out_per_group == 1
        and spec.stride == (1, 1)
        and spec.lhs_dilation == (1, 1)
        and spec.out_size == spec.in_size
        and spec.out_size[1] <= MAX_OUT_WIDTH
        and spec.kernel_size[0] * spec.kernel_size[1] <= _generated.MAX_TAPS
    )


def tap_shifts(spec) -> tuple[int, ...]:
    """``d_t``: flat offset from an output element to the input element tap ``t`` reads."""
    (kh_n, kw_n), (dh, dw) = spec.kernel_size, spec.dilation
    pt, _, pl, _ = spec.padding
    width = spec.in_size[1]
    return tuple((kh * dh - pt) * width + kw * dw - pl for kh in range(kh_n) for kw in range(kw_n))


@functools.lru_cache(maxsize=64)
def tap_masks(spec) -> np.ndarray:
    """(taps, H * W) of the spec's dtype: 1 where tap ``t`` of output position ``q`` reads an input pixel, 0
    where it reads padding."""
    (kh_n, kw_n), (dh, dw) = spec.kernel_size, spec.dilation
    pt, _, pl, _ = spec.padding
    h, w = spec.in_size
    oy, ox = np.divmod(np.arange(h * w), w)
    rows = [((oy + kh * dh - pt >= 0) & (oy + kh * dh - pt < h) & (ox + kw * dw - pl >= 0) & (ox + kw * dw - pl < w))
            for kh in range(kh_n) for kw in range(kw_n)]
    return np.array(rows, spec.dtype)


def channels_per_block(spec, threads: int) -> int:
    plane = spec.in_size[0] * spec.in_size[1]
    cb = max(1, BLOCK_ELEMS // plane)
    return max(1, min(cb, -(-spec.in_channels // (4 * threads))))


def module_source(spec, cb: int) -> str:
    """The generated module: weight-plane builder, vector body, bounds-checked edges, driver."""
    shifts = tap_shifts(spec)
    plane = spec.in_size[0] * spec.in_size[1]
    n_taps, pitch = len(shifts), cb * plane
    lo_margin, hi_margin = max(0, -min(shifts)), max(0, max(shifts))
    what = f"flat depthwise for shifts {shifts}, planes of {plane}, {cb} channels per block"
    lines = [_generated.HEADER.format(generator=__name__, version=__version__, what=what)]
    # per-tap weight planes, then the bias plane (row n_taps)
    lines += ["", "", "@njit_serial", "def _build(we, w_flat, b, mask, c0, c1):",
              f"    for t in range({n_taps}):",
              "        for cc in range(c1 - c0):",
              f"            wt = w_flat[_U((c0 + cc) * {n_taps} + t)]",
              f"            for q in range({plane}):",
              f"                we[_U(t * {pitch} + cc * {plane} + q)] = wt * mask[_U(t * {plane} + q)]",
              "    for cc in range(c1 - c0):",
              "        bias = b[c0 + cc]",
              f"        for q in range({plane}):",
              f"            we[_U({n_taps * pitch} + cc * {plane} + q)] = bias"]
    lines += ["", "", "@njit_serial", "def _body(out_flat, x_flat, we, base, lo, hi):",
              "    for i in range(lo, hi):", "        q = base + i"]
    lines += [f"        s = we[_U({n_taps * pitch} + i)]"]
    lines += [f"        s += we[_U({t * pitch} + i)] * x_flat[_U(q + {d})]" for t, d in enumerate(shifts)]
    lines += ["        out_flat[_U(q)] = s"]
    lines += ["", "", "@njit_serial", "def _edge(out_flat, x_flat, we, base, lo, hi, total):",
              "    for i in range(lo, hi):", "        q = base + i",
              f"        s = we[{n_taps * pitch} + i]"]
    for t, d in enumerate(shifts):
        lines += [f"        if 0 <= q + {d} < total:", f"            s += we[{t * pitch} + i] * x_flat[q + {d}]"]
    lines += ["        out_flat[q] = s"]
    lines += ["", "", "@njit_reduction", "def _nonfinite(out_flat, base, n, zero):",
              "    s = zero", "    for i in range(n):", "        v = out_flat[_U(base + i)]", "        s += v - v",
              "    return s != s"]
    lines += ["", "", "@njit_parallel", "def forward(x, w, b, out, mask, we_buf, flags, zero):",
              f'    """out = x (N, C, H, W) convolved with w (C, 1, kH, kW) + b, per block of {cb} channels."""',
              "    n_img, c_n = x.shape[0], x.shape[1]",
              "    x_flat, out_flat, w_flat = x.reshape(-1), out.reshape(-1), w.reshape(-1)",
              "    mask_flat = mask.reshape(-1)",
              f"    total = n_img * c_n * {plane}",
              f"    for blk in numba.prange((c_n + {cb - 1}) // {cb}):",
              "        we = we_buf[numba.get_thread_id()]",
              f"        c0 = blk * {cb}", f"        c1 = min(c0 + {cb}, c_n)",
              f"        n_el = (c1 - c0) * {plane}",
              "        _build(we, w_flat, b, mask_flat, c0, c1)",
              "        bad = False",
              "        for n in range(n_img):",
              f"            base = (n * c_n + c0) * {plane}",
              f"            lo = min(n_el, max(0, {lo_margin} - base))",
              f"            hi = max(lo, min(n_el, total - {hi_margin} - base))",
              "            _edge(out_flat, x_flat, we, base, 0, lo, total)",
              "            _body(out_flat, x_flat, we, base, lo, hi)",
              "            _edge(out_flat, x_flat, we, base, hi, n_el, total)",
              "            bad = bad or _nonfinite(out_flat, base, n_el, zero)",
              "        flags[blk] = bad"]
    return "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=128)
def _module(spec, cb: int):
    return _generated.load(module_source(spec, cb), "nbconv_flatplane")


def depthwise_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, out: np.ndarray, spec) -> bool:
    """``out`` = the convolution of ``spec`` (C-contiguous arrays, :func:`applies`); False when
    some output is not finite and so may hold a wrapped-in NaN (the caller computes it again)."""
    threads = numba.get_num_threads()
    cb = channels_per_block(spec, threads)
    plane = spec.in_size[0] * spec.in_size[1]
    n_taps = spec.kernel_size[0] * spec.kernel_size[1]
    we = np.empty((threads, (n_taps + 1) * cb * plane), x.dtype)
    flags = np.zeros(-(-spec.in_channels // cb), np.bool_)
    _module(spec, cb).forward(x, w, b, out, tap_masks(spec), we, flags, x.dtype.type(0))
    return not flags.any()
