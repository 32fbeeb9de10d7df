"""The Winograd weight gradient on the CPU (``nbconv.cpu._winograd_wgrad``): its transform
matrices, the generated kernel against the reference within a bound on Winograd's rounding
(partial tiles, padding, groups, both kernel sizes, float32 and float64), and the launcher's
fallback for non-finite values and overflow."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from cases import Case, at_each_thread_count, random_arrays
from reference import conv2d_weight_reference

import nbconv
from nbconv._spec import conv2d_spec
from nbconv.cpu import _launch, _winograd_wgrad

TILE = _winograd_wgrad.TILE


@pytest.fixture(autouse=True)
def winograd_for_small_calls(monkeypatch, generated_for_small_calls):
    """The small cases here must reach the Winograd kernel: no minimum of channels."""
    monkeypatch.setattr(_winograd_wgrad, "MIN_CHANNELS", 1)


@pytest.mark.parametrize("r", sorted(_winograd_wgrad.POINTS))
def test_transform_matrices_are_exact(r):
    """A^T ((G g) * (B^T d)) is y[k] = sum_j g[j] d[j + k], in exact rational arithmetic."""
    at, g, bt = _winograd_wgrad.transform_matrices(r)
    t = r + TILE - 1
    rng = np.random.default_rng(r)
    for _ in range(5):
        d = [Fraction(int(v)) for v in rng.integers(-9, 10, t)]
        gr = [Fraction(int(v)) for v in rng.integers(-9, 10, TILE)]
        gg = [sum(g[k][j] * gr[j] for j in range(TILE)) for k in range(t)]
        bd = [sum(bt[k][i] * d[i] for i in range(t)) for k in range(t)]
        y = [sum(at[i][k] * gg[k] * bd[k] for k in range(t)) for i in range(r)]
        assert y == [sum(gr[j] * d[i + j] for j in range(TILE)) for i in range(r)]


def _problem(case, dtype, seed=0):
    x, w, _ = random_arrays(case, dtype, seed)
    spec = conv2d_spec(x, w, None, **case.conv_args())
    gy = np.random.default_rng(seed + 1).standard_normal(spec.output_shape).astype(dtype)
    return x, w, gy, spec


def winograd_magnitude(x, gy, spec) -> np.ndarray:
    """The algorithm run on |x|, |gy| with the absolute values of its matrices: a bound on every
    intermediate sum behind each weight."""
    r = spec.kernel_size[0]
    t = r + TILE - 1
    at, g, bt = (np.abs(np.array(m, np.float64)) for m in _winograd_wgrad.transform_matrices(r))
    (oh, ow), (pt, _, pl, _) = spec.out_size, spec.padding
    ty, tx = -(-oh // TILE), -(-ow // TILE)
    n, c_in, h, wd = x.shape
    xp = np.zeros((n, c_in, ty * TILE + r - 1, tx * TILE + r - 1))
    xp[:, :, pt:pt + h, pl:pl + wd] = np.abs(x)[:, :, :xp.shape[2] - pt, :xp.shape[3] - pl]
    gp = np.zeros((n, gy.shape[1], ty * TILE, tx * TILE))
    gp[:, :, :oh, :ow] = np.abs(gy)
    d = np.lib.stride_tricks.sliding_window_view(xp, (t, t), axis=(2, 3))[:, :, ::TILE, ::TILE]
    gt = gp.reshape(n, gy.shape[1], ty, TILE, tx, TILE).transpose(0, 1, 2, 4, 3, 5)
    v = np.einsum("ia,ncyxab,jb->ncyxij", bt, d, bt)
    u = np.einsum("ia,noyxab,jb->noyxij", g, gt, g)
    cin_g, cout_g = spec.in_per_group, spec.out_per_group
    m = np.concatenate([np.einsum("noyxij,ncyxij->ocij", u[:, k * cout_g:(k + 1) * cout_g], v[:, k * cin_g:(k + 1) * cin_g])
                        for k in range(spec.groups)])
    return np.einsum("ia,ocab,jb->ocij", at, m, at)


def assert_winograd_close(got, x, gy, spec, w_shape):
    """|got - ref| <= (steps) * eps * magnitude: the transforms (2 t + 2 TILE + 2 r rounding
    steps), a product, and the sum over one image's tiles (float32 or float64 per image, float64
    over images)."""
    r, t = spec.kernel_size[0], spec.kernel_size[0] + TILE - 1
    tiles = -(-spec.out_size[0] // TILE) * -(-spec.out_size[1] // TILE)
    steps = 2 * t + 2 * TILE + 2 * r + 1 + tiles + spec.batch
    tol = steps * float(np.finfo(got.dtype).eps) * winograd_magnitude(x, gy, spec)
    args = {"stride": spec.stride, "padding": spec.padding[::2], "dilation": spec.dilation, "groups": spec.groups}
    err = np.abs(got - conv2d_weight_reference(x, w_shape, gy, **args))
    assert (err <= tol).all(), f"worst |got - ref| / tol = {np.max(err / tol):.3g}"


CASES = [
    Case(2, 6, (7, 8), 32, (5, 5), 1, 2, 1, 2),  # 5x5, partial tiles on both sides, 2 groups
    Case(3, 4, (9, 11), 16, (3, 3), 1, 1, 1, 1),  # 3x3: F(3x3, 3x3)
    Case(1, 12, (8, 6), 64, (3, 3), 1, 0, 1, 1),  # no padding; blocks of 6 channels x 4 vectors
    Case(2, 8, (5, 5), 32, (5, 5), 1, (3, 1), 1, 2),  # padding past the kernel's reach on the rows
]


@pytest.mark.parametrize("case,dtype", [(c, np.float64) for c in CASES] + [(CASES[0], np.float32)], ids=str)
def test_winograd_weight_grad(case, dtype):
    x, w, gy, spec = _problem(case, dtype)
    if dtype == np.float64:  # 8 lanes: the same cases have whole vectors of outputs
        assert _winograd_wgrad.applies(spec)
    dw = np.full(w.shape, np.nan, dtype)
    _winograd_wgrad.winograd_weight_grad(x, gy, dw, spec)
    assert_winograd_close(dw, x, gy, spec, w.shape)


def test_bound_catches_a_dropped_term():
    """The bound is tight enough that the terms of one output pixel left out fail it."""
    x, w, gy, spec = _problem(CASES[0], np.float64)
    dw = np.empty_like(w)
    less = gy.copy()
    less[0, :, 3, 4] = 0.0
    _winograd_wgrad.winograd_weight_grad(x, less, dw, spec)
    with pytest.raises(AssertionError):
        assert_winograd_close(dw, x, gy, spec, w.shape)


def test_applies(monkeypatch):
    monkeypatch.setattr(_winograd_wgrad, "MIN_CHANNELS", 48)  # the default, not the fixture's 1
    x = np.zeros((2, 96, 27, 27), np.float32)

    def spec(k=5, stride=1, dilation=1, c_out=256, groups=2, dtype=np.float32):
        return conv2d_spec(x.astype(dtype), np.zeros((c_out, 96 // groups, k, k), dtype), None, stride, k // 2,
                           dilation, groups)
    assert _winograd_wgrad.applies(spec()) and _winograd_wgrad.applies(spec(k=3))
    assert not _winograd_wgrad.applies(spec(k=7))
    assert not _winograd_wgrad.applies(spec(stride=2)) and not _winograd_wgrad.applies(spec(dilation=2))
    assert not _winograd_wgrad.applies(spec(groups=4))  # 24 input channels per group
    assert not _winograd_wgrad.applies(spec(c_out=200))  # 100 outputs per group: not whole vectors
    big = conv2d_spec(np.zeros((1, 512, 8, 8), np.float32), np.zeros((512, 512, 3, 3), np.float32), None, 1, 1)
    assert not _winograd_wgrad.applies(big)  # 25 x 512 x 512 float64 totals: over MAX_TOTALS
    half = conv2d_spec(np.zeros((1, 256, 8, 8), np.float32), np.zeros((256, 256, 3, 3), np.float32), None, 1, 1)
    assert _winograd_wgrad.applies(half)


@pytest.mark.parametrize("sums, alexnet_block, dense_block", [(28, (6, 4), (4, 4)), (6, (6, 1), (4, 1))])
def test_blocking_keeps_its_sums_in_the_registers(monkeypatch, sums, alexnet_block, dense_block):
    """AVX-512 (28 sums) keeps 6 x 4 blocks; AVX2 (6) one vector of outputs at a time, whose 6 x 4
    block spilled its sums in the loop (2.3x slower products on a Zen 3)."""
    monkeypatch.setattr(_winograd_wgrad._outer, "block_sums", lambda: sums)

    def spec(c_in, c_out, groups, k):
        return conv2d_spec(np.zeros((1, c_in, 27, 27), np.float32), np.zeros((c_out, c_in // groups, k, k), np.float32),
                           None, 1, k // 2, 1, groups)
    assert _winograd_wgrad.blocking(spec(96, 256, 2, 5)) == alexnet_block  # 48 -> 128 a group
    assert _winograd_wgrad.blocking(spec(64, 64, 1, 3)) == dense_block
    for c_in, c_out in [(48, 16), (7, 32), (64, 512)]:
        n_c, n_vec = _winograd_wgrad.blocking(spec(c_in, c_out, 1, 3))
        assert n_c * n_vec <= sums and c_in % n_c == 0 and (c_out // 16) % n_vec == 0


def _direct(monkeypatch, fn):
    """``fn()`` with the Winograd weight gradient switched off in the launcher."""
    with monkeypatch.context() as m:
        m.setattr(_winograd_wgrad, "applies", lambda spec: False)
        return fn()


@pytest.mark.parametrize("where", ["input", "grad_output"])
def test_non_finite_values_fall_back_to_the_direct_sums(monkeypatch, where):
    """An inf spoils its tile's transforms (inf - inf): the launcher recomputes such a call with
    the direct kernels, whose non-finite weights are exactly those the sums make."""
    case = CASES[0]
    x, w, gy, spec = _problem(case, np.float64)
    (x if where == "input" else gy)[0, 1, 3, 4] = np.inf
    raw = np.empty_like(w)
    _winograd_wgrad.winograd_weight_grad(x, gy, raw, spec)
    got = nbconv.grad.conv2d_weight(x, w.shape, gy, **case.conv_args())
    want = _direct(monkeypatch, lambda: nbconv.grad.conv2d_weight(x, w.shape, gy, **case.conv_args()))
    assert np.count_nonzero(~np.isfinite(raw)) > 0
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("fill", [np.nan, np.inf, "half"], ids=str)
def test_a_diverged_input_takes_the_kinds_of_its_sums(monkeypatch, fill):
    """Every (or every other) input pixel non-finite: the Winograd sums' non-finite weights take
    the kinds ``_nonfinite`` finds, without the direct kernels, and equal the direct sums."""
    from nbconv.cpu import _launch

    case = CASES[0]
    x, w, gy, _ = _problem(case, np.float64)
    if fill == "half":
        x[:, :, ::2] = np.inf
        x[:, :, 1::4] = -np.inf
    else:
        x[...] = fill
    want = _direct(monkeypatch, lambda: nbconv.grad.conv2d_weight(x, w.shape, gy, **case.conv_args()))
    monkeypatch.setattr(_launch, "_weight_grad_kernel", lambda *a: pytest.fail("the direct kernels ran"))
    got = nbconv.grad.conv2d_weight(x, w.shape, gy, **case.conv_args())
    np.testing.assert_array_equal(got, want)


def test_overflow_in_the_transforms_falls_back(monkeypatch):
    """Values near the largest float32 overflow in the transforms where the direct sums, with a
    small gradient, stay finite."""
    case = CASES[0]
    x, w, gy, spec = _problem(case, np.float32)
    x[0, :, 2:5, 2:5] = 3e38
    gy *= np.float32(1e-6)
    raw = np.empty_like(w)
    _winograd_wgrad.winograd_weight_grad(x, gy, raw, spec)
    assert not np.isfinite(raw).all()
    got = nbconv.grad.conv2d_weight(x, w.shape, gy, **case.conv_args())
    assert np.isfinite(got).all()
    want = _direct(monkeypatch, lambda: nbconv.grad.conv2d_weight(x, w.shape, gy, **case.conv_args()))
    np.testing.assert_array_equal(got, want)


def test_launcher_routing_and_threads(monkeypatch):
    """The public op takes this path (before the direct kernels); results are the same at one
    and two threads."""
    calls = []
    real = _winograd_wgrad.winograd_weight_grad
    monkeypatch.setattr(_winograd_wgrad, "winograd_weight_grad", lambda *a: calls.append(a[-1]) or real(*a))
    case = CASES[0]  # compiled already for float32 (CI time)
    x, w, gy, spec = _problem(case, np.float32)
    one, two = at_each_thread_count(lambda: nbconv.grad.conv2d_weight(x, w.shape, gy, **case.conv_args()))
    np.testing.assert_array_equal(one, two)
    assert len(calls) == 2 and _launch.worth_generating(calls[0])
    assert_winograd_close(one, x, gy, spec, w.shape)
