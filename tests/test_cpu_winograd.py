"""The Winograd CPU path (``nbconv.cpu._winograd``): the transform matrices, then each feature of
the generated kernel (partial tiles at the plane's edges, a task's partial block of tiles, input
and output channel blocks and their sizes, non-square kernels, negative padding of a transposed
convolution, non-finite values and overflow) against the reference."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from cases import Case, at_each_thread_count, random_arrays
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from reference import assert_conv_close, conv2d_input_reference, conv2d_reference

import nbconv
from nbconv._spec import conv2d_input_spec, conv2d_spec
from nbconv.cpu import _outer, _simd, _winograd


@pytest.fixture(autouse=True)
def winograd_for_small_calls(monkeypatch, generated_for_small_calls):
    """The small cases here must reach the Winograd kernel: no minimum of channels or tiles."""
    monkeypatch.setattr(_winograd, "MIN_CHANNELS", 1)
    monkeypatch.setattr(_winograd, "MIN_TILES", 1)


@pytest.mark.parametrize("m,r", sorted(_winograd.POINTS))
def test_transform_matrices_are_exact(m, r):
    """A^T ((G w) * (B^T d)) is the correlation of d with w, in exact rational arithmetic."""
    at, g, bt = _winograd.transform_matrices(m, r)
    t = m + r - 1
    rng = np.random.default_rng(m * 10 + r)
    for _ in range(5):
        d = [Fraction(int(v)) for v in rng.integers(-9, 10, t)]
        w = [Fraction(int(v)) for v in rng.integers(-9, 10, r)]
        gw = [sum(g[k][j] * w[j] for j in range(r)) for k in range(t)]
        bd = [sum(bt[k][i] * d[i] for i in range(t)) for k in range(t)]
        y = [sum(at[i][k] * gw[k] * bd[k] for k in range(t)) for i in range(m)]
        assert y == [sum(w[j] * d[i + j] for j in range(r)) for i in range(m)]


def _abs_matrices(m: int, r: int):
    return [np.abs(np.array(mat, dtype=np.float64)) for mat in _winograd.transform_matrices(m, r)]


def winograd_magnitude(x, w, b, padding, groups) -> np.ndarray:
    """The Winograd algorithm run on |x|, |w|, |b| with the absolute values of its matrices: a bound
    on the magnitude of every intermediate sum behind each output."""
    (kh, kw), (n, c_in, h, wd) = w.shape[2:], x.shape
    (mh, mw) = _winograd.TILE_FOR_KERNEL[kh], _winograd.TILE_FOR_KERNEL[kw]
    (ath, gh, bth), (atw, gw, btw) = _abs_matrices(mh, kh), _abs_matrices(mw, kw)
    pt, pb, pl, pr = padding
    oh, ow = h + pt + pb - kh + 1, wd + pl + pr - kw + 1
    ty, tx = -(-oh // mh), -(-ow // mw)
    xp = np.zeros((n, c_in, ty * mh + kh - 1, tx * mw + kw - 1))
    xp[:, :, pt:pt + h, pl:pl + wd] = np.abs(x)[:, :, :xp.shape[2] - pt, :xp.shape[3] - pl]
    tiles = np.lib.stride_tricks.sliding_window_view(xp, (mh + kh - 1, mw + kw - 1), axis=(2, 3))[:, :, ::mh, ::mw]
    v = np.einsum("ia,ncyxab,jb->ncyxij", bth, tiles, btw)
    u = np.einsum("ia,ocab,jb->ocij", gh, np.abs(w), gw)
    cin_g, cout_g = c_in // groups, w.shape[0] // groups
    prods = np.concatenate([np.einsum("ocij,ncyxij->noyxij", u[k * cout_g:(k + 1) * cout_g],
                                      v[:, k * cin_g:(k + 1) * cin_g]) for k in range(groups)], axis=1)
    y = np.einsum("ai,noyxij,bj->noyaxb", ath, prods, atw).reshape(n, w.shape[0], ty * mh, tx * mw)[:, :, :oh, :ow]
    return y if b is None else y + np.abs(b)[None, :, None, None]


def assert_winograd_close(got, x, w, b, padding, groups):
    """|got - ref| <= (eps_out + D * eps_acc) * magnitude, D the rounding steps one output goes
    through (both 1-D transforms of the input, of the weight and of the products, and the sum over
    the group's input channels) and magnitude :func:`winograd_magnitude`."""
    spec = conv2d_spec(x, w, b, padding=padding, groups=groups)
    (kh, kw), geo = spec.kernel_size, _winograd.geometry(spec)
    steps = 2 * (geo.th + geo.tw) + kh + kw + spec.in_per_group + 1
    eps = float(np.finfo(got.dtype).eps)
    tol = (eps + steps * eps) * winograd_magnitude(x, w, b, spec.padding, groups)
    err = np.abs(got - conv2d_reference(x, w, b, padding=padding, groups=groups))
    assert (err <= tol).all(), f"worst |got - ref| / tol = {np.max(err / tol):.3g}"


WINOGRAD_CASES = [
    Case(3, 4, (9, 11), 16, (3, 3), 1, 1, 1, 1),  # F(4x4, 3x3): partial tiles on both sides (and the geometry
    # of test_cpu_winograd_wgrad.CASES[1] and of test_cpu_scratch: compiled once, CI time)
    Case(3, 6, (13, 13), 4, (5, 5), 1, 2, 1, 2),  # F(3x3, 5x5), groups: 75 tiles, a partial block of 4
    Case(1, 8, (7, 12), 10, (3, 5), 1, (1, 2), 1, 2),  # non-square kernel: F(4x3, 3x5)
    Case(2, 6, (8, 9), 9, (5, 3), 1, "valid", 1, 3),  # 'valid', 5x3
    Case(1, 14, (6, 6), 20, (3, 3), 1, "same", 1, 1, False),  # 14 input channels: blocks of 2
    Case(1, 7, (5, 7), 130, (3, 3), 1, 1, 1, 1),  # 130 output channels: blocks of 65, 7 inputs: of 1
]


@pytest.mark.parametrize("case,dtype", [(c, np.float64) for c in WINOGRAD_CASES] + [(WINOGRAD_CASES[1], np.float32)],
                         ids=str)
def test_winograd_forward(case, dtype):
    x, w, b = random_arrays(case, dtype)
    spec = conv2d_spec(x, w, b, **case.conv_args())
    assert _winograd.applies(spec)
    out = np.full(spec.output_shape, np.nan, dtype)
    _winograd.winograd_forward(x, w, np.zeros(case.c_out, dtype) if b is None else b, out, spec)
    assert_winograd_close(out, x, w, b, case.padding, case.groups)


def test_winograd_error_bound_catches_a_dropped_tap():
    """The bound is tight enough that one tap left out fails it."""
    case = WINOGRAD_CASES[1]
    x, w, b = random_arrays(case, np.float64)
    wrong = nbconv.conv2d(x, w, b, **case.conv_args())
    w_less = w.copy()
    w_less[0, 0, 4, 4] = 0.0
    with pytest.raises(AssertionError):
        assert_winograd_close(wrong, x, w_less, b, case.padding, case.groups)


@pytest.mark.parametrize("op", ["conv_transpose2d", "conv2d_input"])
def test_transposed_and_input_gradient(op):
    """conv_transpose2d and grad.conv2d_input at stride 1 are Winograd convolutions of the flipped
    weight: padding k - 1 - p, negative (a crop) where p > k - 1."""
    rng = np.random.default_rng(1)
    gy = rng.standard_normal((2, 6, 13, 8))
    w = rng.standard_normal((6, 2, 5, 3))  # conv weight (C_out, C_in/groups, kH, kW), groups 2
    padding = (5, 1)  # rows: 5 > kH - 1, so the transposed convolution crops
    size = (2, 4, 13 + 5 - 1 - 2 * 5, 8 + 3 - 1 - 2 * 1)
    spec = conv2d_input_spec(size, w, gy, 1, padding, 1, 2)
    assert _winograd.applies(spec)
    if op == "conv_transpose2d":
        got = nbconv.conv_transpose2d(gy, w, padding=padding, groups=2)
    else:
        got = nbconv.grad.conv2d_input(size, w, gy, padding=padding, groups=2)
    np.testing.assert_allclose(got, conv2d_input_reference(size, w, gy, 1, padding, 1, 2), rtol=1e-11, atol=1e-11)


def test_results_do_not_depend_on_threads():
    case = WINOGRAD_CASES[1]  # 2 groups x 5 blocks of tiles: 10 tasks; compiled already for float32 (CI time)
    x, w, b = random_arrays(case, np.float32)
    one, two = at_each_thread_count(lambda: nbconv.conv2d(x, w, b, **case.conv_args()))
    np.testing.assert_array_equal(one, two)
    assert _winograd.applies(conv2d_spec(x, w, b, **case.conv_args()))


@pytest.mark.parametrize("n_tiles", [1, 4, 16, 17, 64, 75, 98, 392, 1000])
@pytest.mark.parametrize("groups", [1, 2, 3, 32])
@pytest.mark.parametrize("threads", [1, 2, 3, 4])
def test_chunk_count(n_tiles, groups, threads):
    chunks = _winograd.chunk_count(n_tiles, groups, threads)
    fewest = -(-n_tiles // _winograd.TB)
    assert fewest <= chunks < fewest + threads
    blocks = -(-n_tiles // _winograd.TT)
    assert -(-blocks // chunks) * _winograd.TT <= _winograd.TB  # every chunk fits the per-thread scratch
    even = [c for c in range(fewest, fewest + threads) if groups * c % threads == 0]
    assert chunks == (even[0] if even else fewest)


def test_chunks_do_not_change_sums(monkeypatch):
    """However a group's tiles are chunked (from 5 chunks of 16 down to one register block of 4 a
    chunk), every tile's sums are the same bits: the thread count picks the chunks."""
    case = WINOGRAD_CASES[1]  # 75 tiles a group (19 blocks, the last partial), compiled already (CI time)
    x, w, b = random_arrays(case, np.float32)
    spec = conv2d_spec(x, w, b, **case.conv_args())
    results = []
    for chunks in (5, 6, 7, 10, 19):
        monkeypatch.setattr(_winograd, "chunk_count", lambda n_tiles, groups, threads, c=chunks: c)
        out = np.full(spec.output_shape, np.nan, np.float32)
        _winograd.winograd_forward(x, w, b, out, spec)
        results.append(out)
    assert_winograd_close(results[0], x, w, b, case.padding, case.groups)
    for out in results[1:]:
        np.testing.assert_array_equal(out, results[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cout_g", [8, 16, 20, 48, 64, 80, 96, 128, 136, 256])
def test_product_vectors(cout_g, dtype):
    """A block of output channels that is whole vectors goes to register blocks of at most the
    target's budget of vectors, as few as that allows and as even as whole vectors go."""
    x, w = np.zeros((1, 4, 8, 8), dtype), np.zeros((2 * cout_g, 2, 3, 3), dtype)
    spec = conv2d_spec(x, w, None, padding=1, groups=2)
    lanes, ob = _simd.lanes(np.dtype(dtype)), _winograd.blocking(spec)[1]
    vectors = _winograd.product_vectors(spec)
    if ob % lanes:
        assert vectors is None
        return
    most = max(1, min(_winograd.MAX_PRODUCT_VECTORS, _outer.block_sums() // _winograd.TT))
    assert sum(vectors) * lanes == ob
    assert max(vectors) <= most and max(vectors) - min(vectors) <= 1
    assert len(vectors) == -(-(ob // lanes) // most)


def test_products_in_register_blocks():
    """80 output channels a group of float32 are 5 vectors: register blocks of several sizes over
    18 tiles a group (the last register block of tiles partial)."""
    case = Case(2, 6, (9, 10), 160, (3, 3), 1, 1, 1, 2)
    x, w, b = random_arrays(case, np.float32)
    spec = conv2d_spec(x, w, b, **case.conv_args())
    assert len(_winograd.product_vectors(spec)) >= 2
    assert "tile_products(" in _winograd.module_source(spec)
    out = np.full(spec.output_shape, np.nan, np.float32)
    _winograd.winograd_forward(x, w, b, out, spec)
    assert_winograd_close(out, x, w, b, case.padding, case.groups)


def test_two_pass_transforms_are_the_same_bits(monkeypatch):
    """The transforms of F(3x3, 5x5) tiles (49 terms) run in two passes through memory: the same
    sums in the same order as in one pass, so the same bits."""
    case = WINOGRAD_CASES[1]  # compiled already in two passes for float32 (CI time)
    x, w, b = random_arrays(case, np.float32)
    spec = conv2d_spec(x, w, b, **case.conv_args())
    assert _winograd.geometry(spec).positions >= _winograd.TWO_PASS_MIN_TERMS
    results, sources = [], []
    for threshold in (_winograd.TWO_PASS_MIN_TERMS, 1000):
        monkeypatch.setattr(_winograd, "TWO_PASS_MIN_TERMS", threshold)
        _winograd._module.cache_clear()
        sources.append(_winograd.module_source(spec))
        results.append(np.full(spec.output_shape, np.nan, np.float32))
        _winograd.winograd_forward(x, w, b, results[-1], spec)
    _winograd._module.cache_clear()
    assert sources[0].count("for c in range(") > sources[1].count("for c in range(")  # more loops: two passes
    np.testing.assert_array_equal(results[0], results[1])


def test_non_finite_pixel_spoils_only_its_outputs():
    """An infinite pixel makes its whole tile non-finite in the transform: the launcher computes such
    calls with the direct kernel, so only the outputs whose windows read it are non-finite."""
    case = WINOGRAD_CASES[0]  # a geometry compiled already (CI time)
    x, w, b = random_arrays(case, np.float64)
    x[0, 1, 5, 6] = np.inf
    spec = conv2d_spec(x, w, b, **case.conv_args())
    raw = np.empty(spec.output_shape)
    _winograd.winograd_forward(x, w, b, raw, spec)
    got = nbconv.conv2d(x, w, b, **case.conv_args())
    assert np.count_nonzero(~np.isfinite(raw)) > np.count_nonzero(~np.isfinite(got))  # the fallback mattered
    bad = np.zeros(got.shape, bool)
    bad[0, :, 4:7, 5:8] = True  # the 3x3 outputs around (5, 6) of image 0
    np.testing.assert_array_equal(~np.isfinite(got), bad)
    finite = x.copy()
    finite[0, 1, 5, 6] = 0.0
    np.testing.assert_allclose(got[~bad], nbconv.conv2d(finite, w, b, **case.conv_args())[~bad], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fill", [np.nan, np.inf, "mixed"], ids=str)
def test_a_diverged_input_takes_the_kinds_of_its_sums(monkeypatch, fill):
    """Every input pixel non-finite (a diverged step): the outputs take the kinds
    ``_nonfinite`` finds, without the direct kernel, and are the reference's."""
    from nbconv.cpu import _launch

    case = WINOGRAD_CASES[0]  # a geometry compiled already (CI time)
    x, w, b = random_arrays(case, np.float64)
    x[...] = fill if fill != "mixed" else np.random.default_rng(2).choice([np.nan, np.inf, -np.inf], x.shape)
    w[0, 0, 1, 1] = 0.0  # 0 x inf is NaN
    monkeypatch.setattr(_launch, "direct_forward_kernel", lambda spec: pytest.fail("the direct kernel ran"))
    got = nbconv.conv2d(x, w, b, **case.conv_args())
    with np.errstate(invalid="ignore"):
        want = conv2d_reference(x, w, b, **case.conv_args())
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(got[~np.isnan(want)], want[~np.isnan(want)])


def test_overflow_in_the_transform_falls_back():
    """Pixels near the largest float32 overflow in the input transform (a row of |B^T| (x) |B^T|
    sums to up to 15^2 = 225 for F(3x3, 5x5)) where the direct sums, with small weights, stay
    finite."""
    case = WINOGRAD_CASES[1]  # F(3x3, 5x5), compiled already for float32 (CI time)
    x, w, _ = random_arrays(case, np.float32)
    x[0, :, 3:6, 3:6] = 3e38
    w *= np.float32(1e-4)
    spec = conv2d_spec(x, w, None, **case.conv_args())
    raw = np.empty(spec.output_shape, np.float32)
    _winograd.winograd_forward(x, w, np.zeros(case.c_out, np.float32), raw, spec)
    assert not np.isfinite(raw).all()
    got = nbconv.conv2d(x, w, **case.conv_args())
    assert np.isfinite(got).all()
    assert_conv_close(got, x, w, **case.conv_args())


def test_launcher_input_layouts():
    """Strided and read-only inputs reach the kernel as the launcher copies them; nothing is written."""
    case = WINOGRAD_CASES[0]  # a geometry compiled already (CI time)
    x, w, b = random_arrays(case, np.float64)
    xs = np.asfortranarray(np.repeat(x, 2, axis=3)[..., ::2])
    xs.setflags(write=False)
    w.setflags(write=False)
    before = xs.copy()
    assert_conv_close(nbconv.conv2d(xs, w, b, **case.conv_args()), x, w, b, **case.conv_args())
    np.testing.assert_array_equal(xs, before)


@settings(max_examples=2, deadline=None)  # 3 compiles an example, 8-13 s each on CI's machine
@given(n=st.integers(1, 3), g=st.integers(1, 2), cin_g=st.integers(1, 8), cout_g=st.integers(1, 9),
       h=st.integers(1, 14), wd=st.integers(1, 14), kh=st.sampled_from([3, 5]), kw=st.sampled_from([3, 5]),
       pad=st.integers(0, 2))
def test_winograd_property(n, g, cin_g, cout_g, h, wd, kh, kw, pad):
    case = Case(n, g * cin_g, (h + kh - 1 - 2 * pad, wd + kw - 1 - 2 * pad), g * cout_g, (kh, kw), 1, pad, 1, g)
    assume(min(case.hw) >= 1)
    x, w, b = random_arrays(case, np.float64)
    spec = conv2d_spec(x, w, b, **case.conv_args())
    out = np.full(spec.output_shape, np.nan)
    _winograd.winograd_forward(x, w, b, out, spec)
    assert_winograd_close(out, x, w, b, pad, g)
