"""The flat-plane depthwise CPU path (``nbconv.cpu._flatplane``): same-size stride-1 depthwise
convolutions of narrow planes over the flattened input with masked weights. Checked against the
reference for every geometry feature it handles (kernel sizes, dilation, even kernels' far-side
padding, channel blocks with a remainder, the bounds-checked edges at both ends of the array),
and for what it must not do: let a non-finite pixel leak into a neighbour through a zero weight."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nbconv
import nbconv.cpu._launch as launch
from cases import Case, random_arrays
from nbconv._spec import conv2d_input_spec, conv2d_spec
from nbconv.cpu import _flatplane
from reference import assert_conv_close, conv2d_input_reference, conv2d_reference

@pytest.fixture(autouse=True)
def _generated_for_small_calls(monkeypatch):
    """The public ops take the generated kernels from a size on (``MIN_GENERATED_MACS``); these
    small cases must reach them too."""
    monkeypatch.setattr(launch, "MIN_GENERATED_MACS", 0)


FLAT_CASES = [
    Case(2, 5, (7, 7), 5, (3, 3), 1, 1, 1, 5),  # MobileNet's 7x7 layer
    Case(1, 3, (14, 14), 3, (5, 5), 1, 2, 1, 3, False),  # EfficientNet's 5x5; N = 1: both array ends
    Case(3, 7, (5, 9), 7, (3, 3), 1, "same", (2, 1), 7),  # dilation
    Case(2, 4, (6, 6), 4, (4, 2), 1, "same", 1, 4),  # even kernel: far-side padding
    Case(2, 3, (1, 1), 3, (3, 3), 1, 1, 1, 3),  # one pixel: only the centre tap
    Case(2, 4, (9, 15), 4, (1, 7), 1, (0, 3), 1, 4),  # 1x7 kernel, widest plane this path takes
]


@pytest.mark.parametrize("case,dtype,threads", [(c, np.float64, 2) for c in FLAT_CASES]
                         + [(FLAT_CASES[1], np.float32, 1)], ids=str)
def test_flatplane_forward(case, dtype, threads):
    x, w, b = random_arrays(case, dtype)
    spec = conv2d_spec(x, w, b, **case.conv_args())
    assert _flatplane.applies(spec)
    out = np.full(spec.output_shape, np.nan, dtype)
    b = np.zeros(case.c_out, dtype) if b is None else b
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        assert _flatplane.depthwise_forward(x, w, b, out, spec)
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    assert_conv_close(out, x, w, b, **case.conv_args())


def test_channel_blocks_with_a_remainder(monkeypatch):
    monkeypatch.setattr(_flatplane, "BLOCK_ELEMS", 3 * 49)  # blocks of 3 channels, 10 = 3 + 3 + 3 + 1
    case = Case(2, 10, (7, 7), 10, (3, 3), 1, 1, 1, 10)
    x, w, b = random_arrays(case, np.float64)
    spec = conv2d_spec(x, w, b, **case.conv_args())
    assert _flatplane.channels_per_block(spec, 1) == 3
    out = np.full(spec.output_shape, np.nan)
    assert _flatplane.depthwise_forward(x, w, b, out, spec)
    assert_conv_close(out, x, w, b, **case.conv_args())


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_non_finite_pixels_reach_only_their_outputs(value):
    """A non-finite pixel at a plane's edge sits next to the neighbouring row and channel in the
    flat layout: the result must still be NaN/inf only where a tap really reads it."""
    case = Case(2, 6, (7, 7), 6, (3, 3), 1, 1, 1, 6)
    x, w, b = random_arrays(case, np.float64)
    x[0, 2, 6, 6] = value  # last pixel of a plane: the next channel's first row wraps onto it
    x[1, 5, 0, 0] = value  # first pixel of the last plane of the array
    spec = conv2d_spec(x, w, b, **case.conv_args())
    out = np.empty(spec.output_shape)
    assert not _flatplane.depthwise_forward(x, w, b, out, spec)  # flagged: the launcher recomputes
    got = nbconv.conv2d(x, w, b, **case.conv_args())
    want = conv2d_reference(x, w, b, **case.conv_args())
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-12, atol=1e-12)


def test_input_gradient_through_the_path():
    """grad.conv2d_input of a 'same' depthwise layer is a flipped-weight 'same' convolution."""
    case = Case(3, 8, (7, 7), 8, (3, 3), 1, 1, 1, 8)
    x, w, _ = random_arrays(case, np.float64)
    gy = np.random.default_rng(1).standard_normal(x.shape)
    spec = conv2d_input_spec(x.shape, w, gy, **case.conv_args())
    assert _flatplane.applies(spec)
    got = nbconv.grad.conv2d_input(x.shape, w, gy, **case.conv_args())
    np.testing.assert_allclose(got, conv2d_input_reference(x.shape, w, gy, **case.conv_args()), rtol=1e-12, atol=1e-12)


def test_choice():
    def spec(c_in, hw, c_out, k, stride=1, padding=1):
        x = np.zeros((2, c_in, hw, hw), np.float32)
        return conv2d_spec(x, np.zeros((c_out, 1, k, k), np.float32), None, stride, padding, 1, c_in)
    assert _flatplane.applies(spec(960, 7, 960, 3))
    assert not _flatplane.applies(spec(8, 7, 16, 3))  # multiplier 2
    assert not _flatplane.applies(spec(8, 7, 8, 3, stride=2))
    assert not _flatplane.applies(spec(8, 7, 8, 3, padding=0))  # output smaller than the input
    assert not _flatplane.applies(spec(8, 16, 8, 3))  # wide enough for the row-blocked path
    assert not _flatplane.applies(spec(8, 7, 8, 9, padding=4))  # 81 taps


@settings(max_examples=3, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 9), h=st.integers(1, 12), wd=st.integers(1, 15),
       k=st.sampled_from([1, 3, 5]), d=st.integers(1, 2))
def test_flatplane_property(n, c, h, wd, k, d):
    case = Case(n, c, (h, wd), c, (k, k), 1, "same", d, c)
    x, w, b = random_arrays(case, np.float64)
    got = nbconv.conv2d(x, w, b, **case.conv_args())
    assert _flatplane.applies(conv2d_spec(x, w, b, **case.conv_args()))
    assert_conv_close(got, x, w, b, **case.conv_args())
