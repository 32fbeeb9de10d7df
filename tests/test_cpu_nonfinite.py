"""The kinds of non-finite results (``nbconv.cpu._nonfinite``) against the reference's sums: random
geometries, inputs with NaN / +inf / -inf at random shares, weights and gradients with exact
zeros (``0 * inf`` is NaN); then the public ops on all-NaN, all-inf and mixed inputs."""

from __future__ import annotations

import numpy as np
import pytest
from cases import Case, random_arrays
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from reference import conv2d_reference, conv2d_weight_reference

import nbconv
from nbconv._spec import conv2d_spec
from nbconv.cpu import _nonfinite


def _kinds_of(a: np.ndarray) -> np.ndarray:
    """The reference's kinds: 0 finite, 1 NaN, 2 +inf, 3 -inf."""
    return np.select([np.isnan(a), np.isposinf(a), np.isneginf(a)], [1, 2, 3], 0).astype(np.uint8)


def _spoiled(a: np.ndarray, share: float, rng, kinds=(np.nan, np.inf, -np.inf)) -> np.ndarray:
    a = a.copy()
    bad = rng.random(a.shape) < share
    a[bad] = rng.choice(np.array(kinds, a.dtype), size=int(bad.sum()))
    return a


def _with_zeros(a: np.ndarray, rng) -> np.ndarray:
    a = a.copy()
    a[rng.random(a.shape) < 0.2] = 0.0
    return a


geometries = st.tuples(
    st.integers(1, 2),  # batch
    st.integers(1, 3),  # groups
    st.integers(1, 3),  # input channels per group
    st.sampled_from([1, 2, 3, 70]),  # output channels per group (70: two words of bits)
    st.integers(3, 9), st.integers(3, 9),  # input size
    st.integers(1, 3), st.integers(1, 3),  # kernel
    st.integers(1, 2), st.integers(1, 2),  # stride
    st.integers(1, 2),  # dilation
    st.integers(0, 2),  # padding
)


def _problem(geometry, seed: int, share: float, fill: tuple):
    """(case, input with ``fill`` values at a ``share`` of its pixels, weight, generator); a
    geometry without outputs is rejected (``assume``)."""
    n, g, cin_g, cout_g, h, w, kh, kw, sh, sw, d, p = geometry
    assume(h + 2 * p - d * (kh - 1) - 1 >= 0 and w + 2 * p - d * (kw - 1) - 1 >= 0)
    case = Case(n, g * cin_g, (h, w), g * cout_g, (kh, kw), (sh, sw), p, d, g, False)
    x, weight, _ = random_arrays(case, np.float64, seed)
    rng = np.random.default_rng(seed)
    return case, _spoiled(x, share, rng, fill), weight, rng


#: the values an input is spoiled with, per hypothesis' choice
FILLS = {"mixed": (np.nan, np.inf, -np.inf), "nan": (np.nan,), "inf": (np.inf,), "-inf": (-np.inf,)}
given_problems = given(geometry=geometries, share=st.sampled_from([0.05, 0.5, 1.0]), fill=st.sampled_from(sorted(FILLS)),
                       seed=st.integers(0, 2**16))


@settings(max_examples=60, deadline=None)
@given_problems
def test_forward_kinds_are_the_reference_sums_kinds(geometry, share, fill, seed):
    case, x, w, rng = _problem(geometry, seed, share, FILLS[fill])
    w = _with_zeros(w, rng)
    spec = conv2d_spec(x, w, None, **case.conv_args())
    x_kinds = _nonfinite.classify(x)
    assert x_kinds.nonfinite == np.count_nonzero(~np.isfinite(x))
    assert x_kinds.infinite == np.count_nonzero(np.isinf(x))
    with np.errstate(invalid="ignore"):
        want = _kinds_of(conv2d_reference(x, w, **case.conv_args()))
    np.testing.assert_array_equal(_nonfinite.forward_kinds(x_kinds, w, spec), want)


@settings(max_examples=60, deadline=None)
@given_problems
def test_weight_grad_kinds_are_the_reference_sums_kinds(geometry, share, fill, seed):
    case, x, w, rng = _problem(geometry, seed, share, FILLS[fill])
    spec = conv2d_spec(x, w, None, **case.conv_args())
    gy = _with_zeros(rng.standard_normal(spec.output_shape), rng)
    with np.errstate(invalid="ignore"):
        want = _kinds_of(conv2d_weight_reference(x, w.shape, gy, **case.conv_args()))
    x_kinds = _nonfinite.classify(x)
    # all images' masks at once, then one image at a time (the early stop across chunks)
    for mask_bytes in (_nonfinite.MASK_BYTES, 1):
        np.testing.assert_array_equal(_nonfinite.weight_grad_kinds(x_kinds, gy, spec, mask_bytes), want)


def test_apply_kinds_counts_the_unexplained():
    dest = np.array([1.0, np.inf, np.nan, 2.0, -np.inf])
    kinds = np.array([0, 0, 1, 2, 3], np.uint8)
    assert _nonfinite.apply_kinds(dest, kinds) == 1  # the inf at 1 has no non-finite term
    np.testing.assert_array_equal(dest, [1.0, np.inf, np.nan, np.inf, -np.inf])


PUBLIC_CASES = [
    Case(2, 8, (9, 9), 8, (3, 3), 2, 1, 1, 2),  # the packed weight gradient (dropped columns)
    Case(2, 6, (8, 7), 12, (3, 3), 1, 1, 1, 3),  # grouped, multiplier
    Case(1, 4, (9, 9), 4, (5, 5), 1, 2, 1, 4),  # depthwise 5x5
]


@pytest.mark.parametrize("fill", ["nan", "inf", "mixed", "half"])
@pytest.mark.parametrize("case", PUBLIC_CASES, ids=str)
def test_public_ops_on_a_diverged_input(case, fill):
    """A diverged step (every or half the pixels non-finite): every op gives the reference's
    non-finite pattern and its finite values."""
    rng = np.random.default_rng(3)
    x, w, b = random_arrays(case, np.float32)
    x = _spoiled(x, {"nan": 1.0, "inf": 1.0, "mixed": 1.0, "half": 0.5}[fill], rng,
                 {"nan": (np.nan,), "inf": (np.inf,)}.get(fill, (np.nan, np.inf, -np.inf)))
    args = case.conv_args()
    gy = rng.standard_normal(nbconv.conv2d(np.zeros_like(x), w, **args).shape).astype(np.float32)
    x64 = x.astype(np.float64)
    with np.errstate(invalid="ignore"):
        want_y = conv2d_reference(x64, w.astype(np.float64), b.astype(np.float64), **args)
        want_dw = conv2d_weight_reference(x64, w.shape, gy.astype(np.float64), **args)
    for got, want in ((nbconv.conv2d(x, w, b, **args), want_y),
                      (nbconv.grad.conv2d_weight(x, w.shape, gy, **args), want_dw)):
        np.testing.assert_array_equal(_kinds_of(got), _kinds_of(want))
        finite = np.isfinite(want)
        np.testing.assert_allclose(got[finite], want[finite], rtol=1e-4, atol=1e-4 * max(1.0, np.abs(want[finite]).max(initial=0)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_classify_names_every_kind(dtype):
    """Each element's kind (finite, NaN, +inf, -inf: subnormals, -0.0 and the largest finite
    values are finite) and the counts, at sizes that leave a remainder past any vector."""
    info = np.finfo(dtype)
    values = np.array([0.0, -0.0, 1.5, info.max, -info.max, info.tiny / 4, np.nan, np.inf, -np.inf, -np.nan], dtype)
    want = [_nonfinite.FINITE] * 6 + [_nonfinite.NAN, _nonfinite.POS_INF, _nonfinite.NEG_INF, _nonfinite.NAN]
    for repeat in (1, 7, 33):
        kinds = _nonfinite.classify(np.tile(values, repeat).reshape(repeat, -1))
        assert kinds.kinds.shape == (repeat, values.size)
        assert kinds.kinds.reshape(-1).tolist() == want * repeat
        assert (kinds.nonfinite, kinds.infinite) == (4 * repeat, 2 * repeat)
