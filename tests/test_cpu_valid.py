"""``nbconv.cpu._valid``: which taps read input pixels (not padding) at which output pixels,
against a pixel-by-pixel count."""

from __future__ import annotations

import numpy as np
import pytest

from nbconv._spec import conv2d_spec
from nbconv.cpu._valid import valid_tap_regions


def _reads_input(spec, oy, ox, kh, kw):
    (sh, sw), (dh, dw), (h, w) = spec.stride, spec.dilation, spec.in_size
    iy, ix = oy * sh + kh * dh - spec.padding[0], ox * sw + kw * dw - spec.padding[2]
    return 0 <= iy < h and 0 <= ix < w


@pytest.mark.parametrize("hw,k,stride,padding,dilation", [
    ((14, 14), (3, 3), 1, 1, 1), ((9, 11), (5, 3), 1, (2, 1), 1), ((13, 11), (3, 3), 2, 1, 1),
    ((12, 13), (3, 3), 1, 2, 2), ((10, 9), (4, 3), (2, 3), (0, 2), (1, 2)), ((7, 7), (1, 1), 1, 0, 1),
    ((8, 8), (3, 3), 1, "same", 3), ((6, 20), (7, 5), (1, 3), (3, 2), 1), ((5, 5), (3, 3), 1, 3, 1),
])
def test_valid_tap_regions_are_the_taps_that_read_input(hw, k, stride, padding, dilation):
    """The regions tile the output once, and a region's taps are exactly those that read an
    input pixel (not padding) at each of its pixels; None where some pixel reads padding only."""
    x = np.zeros((1, 2) + hw)
    spec = conv2d_spec(x, np.zeros((2, 2) + k), None, stride, padding, dilation, 1)
    (oh, ow), (kh_n, kw_n) = spec.out_size, spec.kernel_size
    regions = valid_tap_regions(spec)
    reads = {(oy, ox): {kh * kw_n + kw for kh in range(kh_n) for kw in range(kw_n) if _reads_input(spec, oy, ox, kh, kw)}
             for oy in range(oh) for ox in range(ow)}
    if regions is None:
        assert any(not taps for taps in reads.values())
        return
    seen = {}
    for r0, r1, c0, c1, taps in regions:
        for pixel in ((oy, ox) for oy in range(r0, r1) for ox in range(c0, c1)):
            assert pixel not in seen
            seen[pixel] = set(taps)
    assert seen == reads


def test_valid_tap_regions_of_resnext_g32_14():
    """3x3, padding 1, 14 x 14: nine rectangles; the padding's terms are 9% of all (196 x 9)."""
    spec = conv2d_spec(np.zeros((1, 32, 14, 14)), np.zeros((32, 16, 3, 3)), None, 1, 1, 1, 2)
    regions = valid_tap_regions(spec)
    assert [(r0, r1, c0, c1) for r0, r1, c0, c1, _ in regions] == [
        (r0, r1, c0, c1) for r0, r1 in ((0, 1), (1, 13), (13, 14)) for c0, c1 in ((0, 1), (1, 13), (13, 14))]
    assert regions[4][4] == tuple(range(9)) and regions[0][4] == (4, 5, 7, 8)
    assert sum((r1 - r0) * (c1 - c0) * len(taps) for r0, r1, c0, c1, taps in regions) == 40 * 40
