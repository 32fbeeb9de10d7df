"""The generated weight gradient on the CPU (``nbconv.cpu._wgrad``): each feature of the generated
code (passes of several output channels and their remainder, taps split over passes, stacks of
images with a short last one, slices of a group's channels, stride phases, dilation) against the
reference, and the spec-only choices that keep it deterministic."""

from __future__ import annotations

import numpy as np
import pytest

import nbconv
from cases import Case, at_each_thread_count, random_arrays
from nbconv._spec import conv2d_spec
from nbconv.cpu import _wgrad
from reference import conv2d_weight_reference

#: the small cases here must reach the generated kernels (``MIN_GENERATED_MACS``)
pytestmark = pytest.mark.usefixtures("generated_for_small_calls")


def _arrays(case: Case, dtype, seed: int = 0):
    x, w, _ = random_arrays(case, dtype, seed)
    spec = conv2d_spec(x, w, None, **case.conv_args())
    gy = np.random.default_rng(seed + 1).standard_normal(spec.output_shape).astype(dtype)
    return x, w, gy, spec


WGRAD_CASES = [
    # (case, stack, slices)
    (Case(5, 6, (9, 11), 6, (3, 3), 1, 1, 1, 6), 2, 1),  # depthwise: 1 channel x 9 taps; short last stack
    (Case(3, 8, (13, 10), 14, (3, 3), 2, 1, 1, 2), 1, 2),  # stride 2; 7 outputs per group: passes of 3 + 1
    (Case(2, 3, (12, 12), 3, (7, 7), 1, 3, 1, 3), 2, 1),  # 49 taps in two passes
    (Case(3, 4, (11, 9), 6, (3, 2), (2, 1), (0, 1), (1, 2), 2), 2, 3),  # mixed stride, padding, dilation
]


@pytest.mark.parametrize("case,stack,slices", WGRAD_CASES, ids=str)
def test_weight_grad(case, stack, slices):
    x, w, gy, spec = _arrays(case, np.float64)
    dw = np.full(w.shape, np.nan)
    _wgrad.weight_grad(x, gy, dw, spec, stack, slices)
    ref = conv2d_weight_reference(x, w.shape, gy, **case.conv_args())
    np.testing.assert_allclose(dw, ref, rtol=1e-12, atol=1e-12)


def test_public_op_float32_and_non_finite_pixels():
    """Through ``grad.conv2d_weight``: float32, and an inf pixel (the dot products run with it
    zeroed, then its own terms are added exactly), which must not poison other weights."""
    case = WGRAD_CASES[1][0]
    x, w, gy, _ = _arrays(case, np.float32)
    ref = conv2d_weight_reference(x.astype(np.float64), w.shape, gy.astype(np.float64), **case.conv_args())
    got = nbconv.grad.conv2d_weight(x, w.shape, gy, **case.conv_args())
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5 * np.abs(ref).max())
    x[1, 3, 4, 5] = np.inf
    got = nbconv.grad.conv2d_weight(x, w.shape, gy, **case.conv_args())
    with np.errstate(invalid="ignore"):
        ref = conv2d_weight_reference(x.astype(np.float64), w.shape, gy.astype(np.float64), **case.conv_args())
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(ref))
    finite = np.isfinite(ref)
    assert finite.any() and not finite.all()
    np.testing.assert_allclose(got[finite], ref[finite], rtol=2e-5, atol=2e-5 * np.abs(ref[finite]).max())


def test_weight_grad_does_not_depend_on_the_thread_count():
    """Slices follow the thread count, the passes and stacks do not: bit-identical results."""
    case = WGRAD_CASES[1][0]
    x, w, gy, _ = _arrays(case, np.float32)
    one, two = at_each_thread_count(lambda: nbconv.grad.conv2d_weight(x, w.shape, gy, **case.conv_args()))
    np.testing.assert_array_equal(one, two)


def test_pass_choice():
    def spec(c_in, c_out, k, groups):
        x = np.zeros((8, c_in, 14, 14), np.float32)
        return conv2d_spec(x, np.zeros((c_out, c_in // groups, k, k), np.float32), None, 1, k // 2, 1, groups)
    for s in (spec(32, 32, 3, 32), spec(32, 64, 3, 32), spec(128, 128, 3, 32), spec(96, 256, 5, 2),
              spec(8, 8, 7, 8)):
        ob, split = _wgrad.choose_passes(s)
        assert sum(split) == s.kernel_size[0] * s.kernel_size[1]
        assert 1 <= ob <= min(_wgrad.MAX_OUT_BLOCK, s.out_per_group)
        assert ob * max(split) <= _wgrad.SUM_BUDGET
    assert _wgrad.choose_passes(spec(32, 32, 3, 32)) == (1, (9,))  # depthwise: one output channel
    assert _wgrad.choose_passes(spec(8, 8, 7, 8)) == (1, (25, 24))
    assert _wgrad.choose_passes(spec(96, 256, 5, 2))[0] >= 2  # input loads shared by output channels
    assert _wgrad.applies(spec(8, 8, 7, 8)) and not _wgrad.applies(spec(8, 8, 9, 8))
