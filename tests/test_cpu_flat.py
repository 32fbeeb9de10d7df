"""The depthwise weight gradient on flat planes (``nbconv.cpu._flat``) and its intrinsic
(``nbconv.cpu._simd.flat_plane_sums``): masks at the borders and at the wrap of a row, multipliers,
dilation, asymmetric 'same' padding, planes smaller than a vector, chunks of images, blocks of
channels with a remainder, float32 and float64, non-finite values, against the reference."""

from __future__ import annotations

import re

import numba
import numpy as np
import pytest
from asm import assert_explicit_vectors
from cases import at_each_thread_count
from reference import conv2d_weight_reference

import nbconv
from nbconv._spec import conv2d_weight_spec
from nbconv.cpu import _flat, _simd
from nbconv.cpu._target import target

#: the small cases here must reach the generated kernels (``MIN_GENERATED_MACS``)
pytestmark = pytest.mark.usefixtures("generated_for_small_calls")

#: (batch, channels, multiplier, plane, kernel, padding, dilation)
CASES = [
    (2, 20, 1, (7, 7), (3, 3), 1, 1),  # mbv2_dw_7's geometry; 20 channels: a block of 16 and one of 4
    (17, 3, 1, (7, 7), (3, 3), 1, 1),  # 17 images: two chunks of float32 sums (16 images of 4 vectors)
    (2, 4, 3, (9, 11), (3, 3), 2, 2),  # multiplier 3, dilation 2
    (2, 5, 1, (2, 3), (3, 3), 1, 1),  # a plane smaller than a vector
    (2, 6, 2, (6, 5), (2, 3), "same", 1),  # even kernel: 'same' pads one more on the far side
    (1, 3, 1, (5, 8), (1, 1), 0, 1),  # 1x1: no mask
    (2, 3, 1, (10, 4), (3, 1), (1, 0), 1),  # a column kernel
]


def _arrays(case, dtype, seed=0):
    n, c, mult, hw, k, padding, dilation = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c) + hw).astype(dtype)
    gy = rng.standard_normal((n, c * mult) + hw).astype(dtype)
    args = dict(padding=padding, dilation=dilation, groups=c)
    return x, gy, (c * mult, 1) + k, args


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flat_weight_grad(case, dtype):
    x, gy, w_shape, args = _arrays(case, dtype)
    spec = conv2d_weight_spec(x, w_shape, gy, 1, args["padding"], args["dilation"], args["groups"])
    assert _flat.applies_weight_grad(spec)
    dw = np.full(w_shape, np.nan, dtype)
    _flat.flat_weight_grad(x, gy, dw, spec)
    want = conv2d_weight_reference(x, w_shape, gy, **args)
    tol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(dw, want, rtol=tol, atol=tol * np.abs(want).max())


def test_tap_masks():
    """3x3, padding 1 on 3 x 4: the corner taps read input at 2 x 3 of the 12 pixels, and a
    column tap reads across no row's end."""
    x = np.zeros((1, 1, 3, 4))
    offsets, valid = _flat.tap_masks(conv2d_weight_spec(x, (1, 1, 3, 3), x, 1, 1, 1, 1))
    assert offsets == (-5, -4, -3, -1, 0, 1, 3, 4, 5)
    assert valid[0] == (False,) * 5 + (True,) * 3 + (False, True, True, True)
    assert valid[2] == (False,) * 4 + (True, True, True, False) * 2
    assert all(valid[4]) and [sum(v) for v in valid] == [6, 8, 6, 9, 12, 9, 6, 8, 6]


def test_applies():
    def spec(hw=(7, 7), k=3, stride=1, padding=1, groups=4, c_out=4):
        x = np.zeros((1, 4) + hw)
        gy = np.zeros((1, c_out) + tuple((s + 2 * padding - k) // stride + 1 for s in hw))
        return conv2d_weight_spec(x, (c_out, 4 // groups, k, k), gy, stride, padding, 1, groups)

    assert _flat.applies_weight_grad(spec())
    assert not _flat.applies_weight_grad(spec(stride=2))  # strided
    assert not _flat.applies_weight_grad(spec(padding=0))  # the output smaller than the input
    assert not _flat.applies_weight_grad(spec(groups=2))  # two input channels per group
    assert not _flat.applies_weight_grad(spec(k=5, padding=2))  # 25 taps: the channels-last kernel
    assert not _flat.applies_weight_grad(spec(hw=(17, 16)))  # 17 vectors


@pytest.mark.parametrize("value", [np.inf, np.nan])
@pytest.mark.parametrize("where", ["corner", "middle", "input"])
def test_non_finite(value, where):
    """A non-finite gradient value at a corner meets the padding's zeros: NaN for those taps, as
    in the reference; an inf input pixel reaches only the taps that read it."""
    case = (2, 20, 1, (7, 7), (3, 3), 1, 1)
    x, gy, w_shape, args = _arrays(case, np.float64)
    if where == "input":
        x[1, 17, 6, 0] = value
    else:
        gy[1, 17][(0, 0) if where == "corner" else (3, 3)] = value
    spec = conv2d_weight_spec(x, w_shape, gy, 1, 1, 1, 20)
    dw = np.empty(w_shape)
    _flat.flat_weight_grad(x, gy, dw, spec)
    with np.errstate(invalid="ignore"):
        want = conv2d_weight_reference(x, w_shape, gy, **args)
    np.testing.assert_array_equal(np.isnan(dw), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(dw), np.isinf(want))
    assert not np.isfinite(want[17]).all() and np.isfinite(np.delete(want, 17, axis=0)).all()
    assert np.isnan(want).any() == (where == "corner" or value != np.inf)
    finite = np.isfinite(want)
    np.testing.assert_allclose(dw[finite], want[finite], rtol=1e-12, atol=1e-12)


def test_launcher_routing_and_threads(monkeypatch):
    """``grad.conv2d_weight`` of a 3x3 depthwise 'same' convolution on 7 x 7 planes comes here;
    the thread count changes no bit."""
    calls = []
    real = _flat.flat_weight_grad
    monkeypatch.setattr(_flat, "flat_weight_grad", lambda *a: calls.append(a[-1]) or real(*a))
    x, gy, w_shape, args = _arrays((3, 40, 1, (7, 7), (3, 3), 1, 1), np.float32)
    one, two = at_each_thread_count(lambda: nbconv.grad.conv2d_weight(x, w_shape, gy, **args))
    np.testing.assert_array_equal(one, two)
    assert len(calls) == 2
    np.testing.assert_allclose(one, conv2d_weight_reference(x, w_shape, gy, **args), rtol=2e-6, atol=2e-6)


@pytest.mark.asm
def test_sums_compile_to_masked_loads_and_multiply_adds():
    """mbv2_dw_7's plane: 4 vectors x 9 taps = 36 FMAs (the last vector's loads masked; the
    border taps' too: masked moves with AVX-512), and no stack traffic between them."""
    x = np.zeros((1, 1, 7, 7), np.float32)
    offsets, valid = _flat.tap_masks(conv2d_weight_spec(x, (1, 1, 3, 3), x, 1, 1, 1, 1))
    sums = _simd.flat_plane_sums(49, offsets, valid)

    @numba.njit
    def run(g, g0, xs, x0, acc, a0):
        sums(g, g0, xs, x0, acc, a0)

    f32, i64 = numba.types.float32[::1], numba.types.int64
    run.compile((f32, i64, f32, i64, f32, i64))
    asm = run.inspect_asm(run.signatures[-1])
    assert_explicit_vectors(asm, 36, exact=True)
    if target().vector_bits == 512:
        assert len(re.findall(r"vmovups\s+[^\n]*\{%k\d\}\s*\{z\}", asm)) >= 9
        assert "%rsp" not in asm[asm.index("vfmadd"):asm.rindex("vfmadd")]
