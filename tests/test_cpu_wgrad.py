"""The generated weight gradient on the CPU (``nbconv.cpu._wgrad``): each feature of the generated
code (passes of several output channels and their remainder, taps split over passes, stacks of
images with a short last one, slices of a group's channels, stride phases, dilation) against the
reference, and the spec-only choices that keep it deterministic."""

from __future__ import annotations

import numpy as np
import pytest
from cases import Case, at_each_thread_count, random_arrays
from reference import conv2d_weight_reference

import nbconv
from nbconv._spec import conv2d_spec
from nbconv.cpu import _wgrad

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
        assert ob * max(split) <= _wgrad.sum_budget()
    assert _wgrad.choose_passes(spec(32, 32, 3, 32)) == (1, (9,))  # depthwise: one output channel
    # 49 taps in passes of at most 25 sums with AVX-512, 12 with AVX2
    want = {25: (25, 24), 12: (10, 10, 10, 10, 9)}.get(_wgrad.sum_budget())
    assert want is None or _wgrad.choose_passes(spec(8, 8, 7, 8)) == (1, want)
    assert _wgrad.choose_passes(spec(96, 256, 5, 2))[0] >= 2  # input loads shared by output channels
    assert _wgrad.applies(spec(8, 8, 7, 8)) and not _wgrad.applies(spec(8, 8, 9, 8))


def _pixel_terms_by_loop(dw, pixels, x, gy, spec):
    """The non-finite pixels' own terms as a literal loop (what the kernel replaces)."""
    (sh, sw), (dh, dwl) = spec.stride, spec.dilation
    pt, _, pl, _ = spec.padding
    cin_g, cout_g = spec.in_per_group, spec.out_per_group
    for n, ci, iy, ix in pixels:
        g, c = divmod(int(ci), cin_g)
        for kh in range(spec.kernel_size[0]):
            oy, ry = divmod(int(iy) + pt - kh * dh, sh)
            if ry or not 0 <= oy < spec.out_size[0]:
                continue
            for kw in range(spec.kernel_size[1]):
                ox, rx = divmod(int(ix) + pl - kw * dwl, sw)
                if rx or not 0 <= ox < spec.out_size[1]:
                    continue
                outs = slice(g * cout_g, (g + 1) * cout_g)
                dw[outs, c, kh, kw] += gy[n, outs, oy, ox] * x[n, ci, iy, ix]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", [Case(3, 6, (11, 10), 9, (3, 2), (2, 1), (2, 1), (1, 2), 3),
                                  Case(2, 4, (7, 7), 4, (3, 3), 1, 1, 1, 4)], ids=str)
def test_pixel_terms_kernel_is_the_loop_bit_for_bit(case, dtype):
    from nbconv.cpu import _launch

    rng = np.random.default_rng(5)
    x, w, _ = random_arrays(case, dtype)
    spec = conv2d_spec(x, w, None, **case.conv_args())
    gy = rng.standard_normal(spec.output_shape).astype(dtype)
    pixels = np.argwhere(rng.random(x.shape) < 0.3)
    want, got = (rng.standard_normal(w.shape).astype(dtype) for _ in range(2))
    got[...] = want
    _pixel_terms_by_loop(want, pixels, x, gy, spec)
    _launch._add_pixel_terms(got, pixels, x, gy, spec)
    np.testing.assert_array_equal(got, want)


def test_an_all_nan_input_gives_the_reference_pattern():
    """Every input pixel non-finite (a diverged step): the fix-up covers every pixel, fast."""
    case = Case(2, 8, (9, 9), 8, (3, 3), 2, 1, 1, 2)
    x, w, _ = random_arrays(case, np.float32)
    x[...] = np.nan
    x[0, :, 0, 0] = np.inf
    gy = np.random.default_rng(1).standard_normal(nbconv.conv2d(np.zeros_like(x), w, **case.conv_args()).shape)
    got = nbconv.grad.conv2d_weight(x, w.shape, gy.astype(np.float32), **case.conv_args())
    with np.errstate(invalid="ignore"):
        want = conv2d_weight_reference(x.astype(np.float64), w.shape, gy, **case.conv_args())
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
