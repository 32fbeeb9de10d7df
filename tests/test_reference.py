"""The reference itself, checked against a literal 7-deep loop over the definition (tiny shapes)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cases import CASES, random_arrays
from reference import _pads, conv2d_reference


def brute_force(x, w, b, stride, padding, dilation, groups):
    (sh, sw) = (stride, stride) if isinstance(stride, int) else stride
    (dh, dw) = (dilation, dilation) if isinstance(dilation, int) else dilation
    (pt, pb), (pl, pr) = _pads(padding, w.shape[2:], (sh, sw), (dh, dw))
    n, c_in, h, wd = x.shape
    c_out, cin_g, kh, kw = w.shape
    cout_g = c_out // groups
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, c_out, oh, ow))
    for i, o, y, xx in itertools.product(range(n), range(c_out), range(oh), range(ow)):
        g = o // cout_g
        acc = 0.0 if b is None else float(b[o])
        for c, p, q in itertools.product(range(cin_g), range(kh), range(kw)):
            iy, ix = y * sh - pt + p * dh, xx * sw - pl + q * dw
            if 0 <= iy < h and 0 <= ix < wd:
                acc += float(w[o, c, p, q]) * float(x[i, g * cin_g + c, iy, ix])
        out[i, o, y, xx] = acc
    return out


@pytest.mark.parametrize("case", CASES, ids=str)
def test_reference_matches_definition(case):
    x, w, b = random_arrays(case, np.float64)
    np.testing.assert_allclose(
        conv2d_reference(x, w, b, **case.conv_args()), brute_force(x, w, b, **case.conv_args()), rtol=1e-12, atol=1e-12
    )


def test_reference_worked_example():
    x = np.array([100.0, 200.0, 300.0]).reshape(1, 3, 1, 1)
    w = np.arange(6.0).reshape(6, 1, 1, 1)
    np.testing.assert_array_equal(conv2d_reference(x, w, groups=3).ravel(), [0, 100, 400, 600, 1200, 1500])
