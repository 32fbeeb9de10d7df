"""1x1 layers with one input channel per group (``nbconv.cpu._scale``): each output ``b + w * x``
rounded once; checked against the reference (multipliers, strides, batches, float32/float64),
bit for bit against that expression and against the packed kernel, and for what the launcher
gives it."""

from __future__ import annotations

import numpy as np
import pytest
from cases import Case, at_each_thread_count, check_non_finite_forward, check_path_forward, random_arrays
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import assert_conv_close

import nbconv
from nbconv._spec import conv2d_spec
from nbconv.cpu import _launch, _scale

SCALE_CASES = [
    Case(2, 16, (7, 7), 16, (1, 1), 1, 0, 1, 16),  # a depthwise 1x1 on a 7 x 7 plane
    Case(1, 5, (13, 11), 10, (1, 1), 1, 0, 1, 5),  # multiplier 2, odd planes
    Case(3, 4, (9, 14), 20, (1, 1), (2, 3), 0, 1, 4),  # multiplier 5 (under a 1x1 block), mixed stride
    Case(1, 6, (1, 1), 6, (1, 1), 1, 0, 1, 6, False),  # one pixel, no bias
    Case(2, 3, (20, 33), 9, (1, 1), 2, 0, 2, 3),  # stride 2 (a dilation changes nothing at 1x1)
]


@pytest.mark.parametrize("case,dtype", [(c, d) for c in SCALE_CASES for d in (np.float32, np.float64)], ids=str)
def test_scale_forward(case, dtype):
    check_path_forward(_scale.applies, _scale.scale_forward, case, dtype)


@pytest.mark.parametrize("case", SCALE_CASES, ids=str)
def test_each_output_is_one_fused_multiply_add(case):
    """``b + w * x`` rounded once: the float32 result is the float64 one rounded (the product of
    two float32 values is exact in float64), and the packed kernel's bits."""
    x, w, b = random_arrays(case, np.float32)
    b = np.zeros(case.c_out, np.float32) if b is None else b
    spec = conv2d_spec(x, w, b, **case.conv_args())
    out = np.empty(spec.output_shape, np.float32)
    _scale.scale_forward(x, w, b, out, spec)
    (sh, sw), m = spec.stride, spec.out_per_group
    taken = np.repeat(x, m, axis=1)[:, :, ::sh, ::sw].astype(np.float64)
    exact = b.astype(np.float64)[None, :, None, None] + w.reshape(1, -1, 1, 1).astype(np.float64) * taken
    np.testing.assert_array_equal(out, exact.astype(np.float32))
    packed = np.empty_like(out)
    _launch.FORWARDS["packed"](x, w, b, packed, spec)
    np.testing.assert_array_equal(out, packed)


def test_the_launcher_takes_it_for_one_input_channel_per_group_only():
    x = np.zeros((2, 32, 14, 14), np.float32)
    for m, stride in ((1, 1), (2, 1), (5, 2)):
        spec = conv2d_spec(x, np.zeros((32 * m, 1, 1, 1), np.float32), None, stride, 0, 1, 32)
        assert _launch.forward_kernel(spec) == "scale"
    six = conv2d_spec(x, np.zeros((32 * 6, 1, 1, 1), np.float32), None, 1, 0, 1, 32)
    assert _launch.forward_kernel(six) == "pointwise"  # a 1x1 block's outputs per group
    two_in = conv2d_spec(x, np.zeros((16, 2, 1, 1), np.float32), None, 1, 0, 1, 16)
    assert not _scale.applies(two_in)
    padded = conv2d_spec(x, np.zeros((32, 1, 1, 1), np.float32), None, 1, 1, 1, 32)
    assert not _scale.applies(padded)  # the border is the bias plus w * 0: the other kernels'
    three = conv2d_spec(x, np.zeros((32, 1, 3, 3), np.float32), None, 1, 1, 1, 32)
    assert not _scale.applies(three)


def test_non_finite_inputs_spread_as_in_the_reference():
    case = Case(1, 4, (5, 6), 8, (1, 1), 1, 0, 1, 4)
    for value in (np.inf, np.nan):
        check_non_finite_forward(_scale.scale_forward, case, [(0, 0, 0, 0), (0, 3, 4, 5), (0, 1, 2, 3)], value)


def test_results_do_not_depend_on_the_thread_count():
    x, w, b = random_arrays(Case(3, 24, (9, 9), 48, (1, 1), 1, 0, 1, 24), np.float32)
    one, two = at_each_thread_count(lambda: nbconv.conv2d(x, w, b, groups=24))
    np.testing.assert_array_equal(one, two)


def test_reads_non_contiguous_and_read_only_inputs():
    x, w, b = random_arrays(Case(2, 8, (6, 6), 8, (1, 1), 1, 0, 1, 8), np.float64)
    want = nbconv.conv2d(x, w, b, groups=8)
    strided = np.zeros((2, 8, 6, 12))
    strided[..., ::2] = x
    x_view = strided[..., ::2]
    x_view.flags.writeable = False
    got = nbconv.conv2d(x_view, w, b, groups=8)
    np.testing.assert_array_equal(got, want)
    assert np.array_equal(strided[..., ::2], x)  # nothing written


def test_an_empty_batch_runs_nothing():
    out = nbconv.conv2d(np.zeros((0, 8, 7, 7), np.float32), np.ones((8, 1, 1, 1), np.float32), groups=8)
    assert out.shape == (0, 8, 7, 7)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 12), m=st.integers(1, 5), h=st.integers(1, 20), w=st.integers(1, 20),
       sh=st.integers(1, 3), sw=st.integers(1, 3))
def test_property_against_the_reference(n, c, m, h, w, sh, sw):
    case = Case(n, c, (h, w), c * m, (1, 1), (sh, sw), 0, 1, c)
    x, wt, b = random_arrays(case, np.float32)
    spec = conv2d_spec(x, wt, b, **case.conv_args())
    assert _scale.applies(spec)
    out = np.full(spec.output_shape, np.nan, np.float32)
    _scale.scale_forward(x, wt, b, out, spec)
    assert_conv_close(out, x, wt, b, **case.conv_args())
