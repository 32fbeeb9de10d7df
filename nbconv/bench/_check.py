"""A compact NumPy check of a benchmark result (im2col by sliding windows + einsum per group).

The test suite has its own, slower, independent reference (tests/reference.py); this one is
fast enough for the benchmark's full-size shapes.
"""

from __future__ import annotations

import numpy as np


def conv2d_numpy(x, w, b, stride, padding, dilation, groups) -> np.ndarray:
    """float64 grouped conv2d of host arrays; ``padding`` is (top, bottom, left, right)."""
    x = np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), padding[:2], padding[2:]))
    w = np.asarray(w, np.float64)
    (sh, sw), (dh, dw) = stride, dilation
    c_out, cin_g, kh, kw = w.shape
    span = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    win = np.lib.stride_tricks.sliding_window_view(x, span, axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
    n, c_in, oh, ow = win.shape[:4]
    win = win.reshape(n, groups, cin_g, oh, ow, kh, kw)
    wg = w.reshape(groups, c_out // groups, cin_g, kh, kw)
    out = np.einsum("ngchwij,gocij->ngohw", win, wg, optimize=True).reshape(n, c_out, oh, ow)
    if b is not None:
        out += np.asarray(b, np.float64)[None, :, None, None]
    return out


def max_scaled_error(got, want) -> float:
    """max |got - want| / max(1, max |want|)."""
    want = np.asarray(want, np.float64)
    return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / max(1.0, float(np.max(np.abs(want)))))


def conv2d_weight_numpy(x, weight_size, gy, stride, padding, dilation, groups) -> np.ndarray:
    """float64 weight gradient: per group, the windows of x contracted with gy over (n, y, x)."""
    x = np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), padding[:2], padding[2:]))
    gy = np.asarray(gy, np.float64)
    (sh, sw), (dh, dw) = stride, dilation
    c_out, cin_g, kh, kw = weight_size
    n, _, oh, ow = gy.shape
    span = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    win = np.lib.stride_tricks.sliding_window_view(x, span, axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
    win = win[:, :, :oh, :ow].reshape(n, groups, cin_g, oh, ow, kh, kw)
    gyg = gy.reshape(n, groups, c_out // groups, oh, ow)
    return np.einsum("ngchwij,ngohw->gocij", win, gyg, optimize=True).reshape(weight_size)


def conv2d_input_numpy(input_size, w, gy, stride, padding, dilation, groups) -> np.ndarray:
    """float64 input gradient: each tap's contribution scattered into a padded buffer, then cropped."""
    w = np.asarray(w, np.float64)
    gy = np.asarray(gy, np.float64)
    (sh, sw), (dh, dw) = stride, dilation
    pt, pb, pl, pr = padding
    c_out, cin_g, kh, kw = w.shape
    n, c_in, h, wd = input_size
    oh, ow = gy.shape[2:]
    gx = np.zeros((n, c_in, h + pt + pb + sh, wd + pl + pr + sw))  # slack: taps that fall off the end
    gyg = gy.reshape(n, groups, c_out // groups, oh, ow)
    wg = w.reshape(groups, c_out // groups, cin_g, kh, kw)
    for i in range(kh):
        for j in range(kw):
            tap = np.einsum("ngohw,goc->ngchw", gyg, wg[..., i, j]).reshape(n, c_in, oh, ow)
            gx[:, :, i * dh: i * dh + sh * oh: sh, j * dw: j * dw + sw * ow: sw] += tap
    return gx[:, :, pt: pt + h, pl: pl + wd]
