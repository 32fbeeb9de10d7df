"""The channels-in-lanes depthwise weight gradient (``nbconv.cpu._channels_last``) and its
register transpose (``nbconv.cpu._simd.transpose_tile``): every feature of the generated kernel
(a partial last block of channels, slices of the batch, planes smaller than a tile, strides,
dilations, non-square kernels, float64's 8 lanes) against the reference."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from asm import assert_loop_vectorised, fresh_asm
from cases import Case, at_each_thread_count, random_arrays
from reference import conv2d_weight_reference

import nbconv
from nbconv._spec import conv2d_spec, conv2d_weight_spec
from nbconv.cpu import _channels_last, _simd

#: the small cases here must reach the generated kernels (``MIN_GENERATED_MACS``)
pytestmark = pytest.mark.usefixtures("generated_for_small_calls")


@pytest.mark.parametrize("n,plan", [(n, _simd.transpose_plan) for n in (2, 4, 8, 16)] + [(16, _simd.perfect_shuffle_plan)]
                         + [(n, _simd.in_lane_plan) for n in (8, 16)])
def test_transpose_plan_transposes(n, plan):
    rows = [np.arange(n) + n * i for i in range(n)]
    for stage in plan(n):
        rows = [np.concatenate([rows[a], rows[b]])[mask] for _, a, b, mask in sorted(stage)]
    np.testing.assert_array_equal(np.array(rows), np.arange(n * n).reshape(n, n).T)


def test_transpose_plan_rejects_other_sides():
    with pytest.raises(ValueError, match="power of two"):
        _simd.transpose_plan(12)
    with pytest.raises(ValueError, match="tiles of 8 or 16"):
        _simd.in_lane_plan(4)


@numba.njit
def _transpose_tile(src, s0, s_pitch, dst, d0, d_pitch):
    _simd.transpose_tile(src, s0, s_pitch, dst, d0, d_pitch)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transpose_tile(dtype):
    """One tile from rows 3 + 21 i of src to rows 5 + 19 j of dst (unaligned, pitches wider than
    the tile); nothing else of dst is written."""
    n = _simd.lanes(np.dtype(dtype))
    src = np.arange(400, dtype=dtype)
    dst = np.full(400, -1, dtype)
    _transpose_tile(src, 3, 21, dst, np.uint64(5), 19)
    tile = src[3:3 + 21 * n].reshape(n, 21)[:, :n]
    written = dst[5:5 + 19 * n].reshape(n, 19)
    np.testing.assert_array_equal(written[:, :n], tile.T)
    assert (written[:, n:] == -1).all() and (dst[:5] == -1).all() and (dst[5 + 19 * n:] == -1).all()


def test_huge_strided_planes_take_other_kernels():
    """A narrow output of a huge strided input would need whole channels-last planes per thread."""
    x = np.zeros((1, 16, 1200, 1200), np.float32)
    spec = conv2d_spec(x, np.zeros((16, 1, 3, 3), np.float32), None, 100, 1, 1, 16)
    assert spec.out_size == (12, 12)
    assert _channels_last.scratch_elems(spec) > _channels_last.MAX_SCRATCH_ELEMS
    assert not _channels_last.applies_weight_grad(spec)


def test_scratch_rows_are_aligned():
    for dtype in (np.float32, np.float64):
        a = _channels_last.aligned_zeros(3, 21, dtype)
        assert a.shape[0] == 3 and a.shape[1] >= 21 and a.flags.c_contiguous and not a.any()
        assert all(row.ctypes.data % _simd.VECTOR_BYTES == 0 for row in a)


WEIGHT_CASES = [
    Case(3, 40, (7, 7), 40, (3, 3), 1, 1, 1, 40),  # 3 blocks (float64: 8 lanes), one slice of the batch each
    Case(5, 6, (8, 8), 6, (5, 5), 1, 2, 1, 6),  # one partial block: 5 slices of one image
    Case(3, 17, (13, 11), 17, (3, 2), (2, 1), 1, (2, 1), 17),  # stride, dilation, even kernel width
    Case(2, 12, (3, 3), 12, (3, 3), 1, 1, 1, 12),  # planes smaller than a tile
]


@pytest.mark.parametrize("case,dtype", [(c, np.float64) for c in WEIGHT_CASES] + [(WEIGHT_CASES[0], np.float32)],
                         ids=str)
def test_channels_last_weight_grad(case, dtype):
    x, w, _ = random_arrays(case, dtype)
    gy = np.random.default_rng(1).standard_normal(nbconv.conv2d(x, w, None, **case.conv_args()).shape).astype(dtype)
    spec = conv2d_weight_spec(x, w.shape, gy, **case.conv_args())
    assert _channels_last.applies_weight_grad(spec)
    got = np.full(w.shape, np.nan, dtype)
    _channels_last.depthwise_weight_grad(x, gy, got, spec)
    want = conv2d_weight_reference(x, w.shape, gy, **case.conv_args())
    tol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


def test_weight_grad_through_the_launcher():
    """Narrow depthwise weight gradients take the path through ``grad.conv2d_weight`` (a
    non-finite pixel reaches only its channel's taps, as in the true sums), bit-identical at
    every thread count."""
    case = WEIGHT_CASES[1]
    x, w, _ = random_arrays(case, np.float64)
    x[1, 2, 0, 7] = np.inf
    gy = np.random.default_rng(1).standard_normal(nbconv.conv2d(x, w, None, **case.conv_args()).shape)
    calls = []
    real = _channels_last.depthwise_weight_grad
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_channels_last, "depthwise_weight_grad", lambda *a: calls.append(1) or real(*a))
        one, two = at_each_thread_count(lambda: nbconv.grad.conv2d_weight(x, w.shape, gy, **case.conv_args()))
    assert len(calls) == 2
    np.testing.assert_array_equal(one, two)
    want = conv2d_weight_reference(x, w.shape, gy, **case.conv_args())
    np.testing.assert_array_equal(np.isfinite(one), np.isfinite(want))
    assert not np.isfinite(one[2]).all() and np.isfinite(np.delete(one, 2, axis=0)).all()


@pytest.mark.asm
def test_generated_loops_vectorise(tmp_path, monkeypatch):
    """The weight-gradient row holds one packed FMA per multiply-add of a vector, at the width
    the target gives a plain loop (a silent 5-10x slowdown otherwise: see
    tests/test_cpu_codegen.py)."""
    from nbconv.cpu import _generated

    monkeypatch.setattr(_generated, "source_dir", lambda: str(tmp_path))
    x = np.ones((2, 32, 7, 7), np.float32)
    spec = conv2d_spec(x, np.ones((32, 1, 3, 3), np.float32), None, 1, 1, 1, 32)
    f32 = numba.types.float32[::1]
    kernel = _generated.load.__wrapped__(_channels_last.weight_grad_source(spec), "nbconv_channels_last_test")._wrow
    sig = (f32, numba.types.int64, f32, numba.types.int64, f32)
    assert_loop_vectorised(fresh_asm(kernel, sig, kernel.targetoptions), 7 * 9, kernel.targetoptions)
