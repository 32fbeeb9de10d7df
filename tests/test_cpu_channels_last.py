"""The channels-in-lanes depthwise CPU path (``nbconv.cpu._channels_last``) and its register
transpose (``nbconv.cpu._simd.transpose_tile``): every feature of the generated forward and
weight-gradient kernels (a partial last block of channels, slices of the batch, planes smaller
than a tile, the last pixel blocks moved up and left, strides, dilations, non-square kernels,
cropping, float64's 8 lanes) against the reference."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from asm import assert_loop_vectorised, fresh_asm
from cases import (
    Case,
    at_each_thread_count,
    check_non_finite_forward,
    check_path_forward,
    random_arrays,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import (
    conv2d_input_reference,
    conv2d_weight_reference,
)

import nbconv
import nbconv.cpu._launch as launch
from nbconv._spec import conv2d_input_spec, conv2d_spec, conv2d_weight_spec
from nbconv.cpu import _channels_last, _simd
from nbconv.cpu._launch import conv2d_forward

#: the small cases here must reach the generated kernels (``MIN_GENERATED_MACS``)
pytestmark = pytest.mark.usefixtures("generated_for_small_calls")


@pytest.mark.parametrize("n,plan", [(n, _simd.transpose_plan) for n in (2, 4, 8, 16)] + [(16, _simd.perfect_shuffle_plan)])
def test_transpose_plan_transposes(n, plan):
    rows = [np.arange(n) + n * i for i in range(n)]
    for stage in plan(n):
        rows = [np.concatenate([rows[a], rows[b]])[mask] for _, a, b, mask in sorted(stage)]
    np.testing.assert_array_equal(np.array(rows), np.arange(n * n).reshape(n, n).T)


def test_transpose_plan_rejects_other_sides():
    with pytest.raises(ValueError, match="power of two"):
        _simd.transpose_plan(12)


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


CASES = [
    Case(2, 40, (7, 7), 40, (3, 3), 1, 1, 1, 40),  # float32: blocks of 16, 16, 8 lanes; 3 x 7 pixels
    Case(2, 16, (14, 14), 16, (5, 5), 1, 2, 1, 16),  # two 7-column blocks per row; rows moved up
    Case(3, 17, (13, 11), 17, (3, 3), 2, 1, 1, 17),  # stride 2, a last block of one channel
    Case(2, 9, (12, 13), 9, (3, 3), 1, 2, 2, 9),  # dilation 2: wider reads than the block
    Case(2, 8, (9, 10), 8, (3, 5), 1, "same", 1, 8, False),  # non-square kernel, no bias
    Case(2, 8, (11, 12), 8, (2, 4), 1, "same", 1, 8),  # even kernel: more padding at the far side
    Case(1, 12, (3, 3), 12, (3, 3), 1, 1, 1, 12),  # planes of 9 pixels: smaller than a tile
    Case(2, 8, (5, 4), 8, (3, 3), 1, "valid", 1, 8),  # 3 x 2 outputs: the whole plane is one block
    Case(2, 24, (15, 14), 24, (4, 3), (2, 3), (0, 2), (1, 2), 24),  # mixed stride, padding, dilation
]


@pytest.mark.parametrize("case,dtype", [(c, np.float64) for c in CASES] + [(CASES[0], np.float32)], ids=str)
def test_channels_last_forward(case, dtype):
    check_path_forward(_channels_last.applies, _channels_last.depthwise_forward, case, dtype)


def test_block_choice():
    def block(hw, k):
        x = np.zeros((8, 32, hw, hw), np.float32)
        return _channels_last.choose_block(conv2d_spec(x, np.zeros((32, 1, k, k), np.float32), None, 1, k // 2, 1, 32))
    assert block(7, 3) == (3, 7)  # 21 sums + 3 weights
    assert block(14, 5) == (2, 7)  # 14 + 5
    assert block(13, 3) == (3, 7)  # 13 columns: 7 + 7 (one computed twice) beats 8 + 8 and 5 x 3
    assert block(3, 3) == (3, 3)
    assert block(56, 7) == (2, 8)


def test_huge_strided_planes_take_other_kernels():
    """A narrow output of a huge strided input would need whole channels-last planes per thread."""
    x = np.zeros((1, 16, 1200, 1200), np.float32)
    spec = conv2d_spec(x, np.zeros((16, 1, 3, 3), np.float32), None, 100, 1, 1, 16)
    assert spec.out_size == (12, 12)
    assert _channels_last.scratch_elems(spec) > _channels_last.MAX_SCRATCH_ELEMS
    assert not _channels_last.applies(spec) and not _channels_last.applies_weight_grad(spec)


def test_the_launcher_gives_depthwise_forwards_to_the_size_generic_kernel():
    """Narrow, 5x5 and wide depthwise forwards all go to ``_depthwise`` or ``_depthwise_lanes``
    (compiled once per kernel kind, where this path compiles per geometry); this path's forward
    is kept for comparison (``python docs/first_forward.py``; ``docs/performance.md``), and gives
    the same bits."""
    rng = np.random.default_rng(0)
    for hw, k in ((7, 3), (28, 5), (20, 3)):
        x = rng.standard_normal((2, 6, hw, hw)).astype(np.float32)
        w = rng.standard_normal((6, 1, k, k)).astype(np.float32)
        spec = conv2d_spec(x, w, None, 1, k // 2, 1, 6)
        assert launch.forward_kernel(spec) in ("depthwise", "depthwise_lanes") and _channels_last.applies(spec)
        mine = np.empty(spec.output_shape, np.float32)
        _channels_last.depthwise_forward(x, w, np.zeros(6, np.float32), mine, spec)
        np.testing.assert_array_equal(nbconv.conv2d(x, w, None, padding=k // 2, groups=6), mine)


def test_input_gradient_with_cropping():
    """The input gradient at stride 1 is a forward convolution with padding k - 1 - p: negative
    (cropping) for p = 3 on a 3x3 kernel."""
    case = Case(2, 20, (9, 8), 20, (3, 3), 1, 3, 1, 20)
    x, w, _ = random_arrays(case, np.float64)
    gy = np.random.default_rng(1).standard_normal(nbconv.conv2d(x, w, None, **case.conv_args()).shape)
    spec = conv2d_input_spec(x.shape, w, gy, **case.conv_args())
    assert spec.padding[0] < 0 and _channels_last.applies(spec)
    out = np.full(x.shape, np.nan)
    conv2d_forward(spec, gy, w, None, out)
    np.testing.assert_allclose(out, conv2d_input_reference(x.shape, w, gy, **case.conv_args()), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("value", [np.inf, np.nan])
def test_non_finite_pixels_reach_only_their_outputs(value):
    """Zero padding and the unused lanes of a partial block must not spread a non-finite pixel."""
    pixels = [(0, 2, 6, 6),  # corner of a plane in the first block
              (1, 19, 0, 0),  # the last channel: the partial block (lanes 16-19 of 24, float64)
              (1, 9, 3, 0)]  # first column
    check_non_finite_forward(_channels_last.depthwise_forward, Case(2, 20, (7, 7), 20, (3, 3), 1, 1, 1, 20), pixels,
                             value)


def test_results_do_not_depend_on_threads():
    case = Case(3, 40, (7, 7), 40, (3, 3), 1, 1, 1, 40)
    x, w, b = random_arrays(case, np.float32)
    one, two = at_each_thread_count(lambda: nbconv.conv2d(x, w, b, **case.conv_args()))
    np.testing.assert_array_equal(one, two)


def test_scratch_rows_are_aligned():
    for dtype in (np.float32, np.float64):
        a = _channels_last.aligned_zeros(3, 21, dtype)
        assert a.shape[0] == 3 and a.shape[1] >= 21 and a.flags.c_contiguous and not a.any()
        assert all(row.ctypes.data % _simd.VECTOR_BYTES == 0 for row in a)


@settings(max_examples=4, deadline=None)
@given(
    n=st.integers(1, 2), c=st.integers(1, 20), h=st.integers(1, 15), wd=st.integers(1, 15),
    kh=st.integers(1, 5), kw=st.integers(1, 5), sh=st.integers(1, 2), sw=st.integers(1, 2),
    dh=st.integers(1, 2), dw=st.integers(1, 2), pad=st.integers(0, 2), f32=st.booleans(),
)
def test_channels_last_property(n, c, h, wd, kh, kw, sh, sw, dh, dw, pad, f32):
    case = Case(n, c, (h + (kh - 1) * dh, wd + (kw - 1) * dw), c, (kh, kw), (sh, sw), pad, (dh, dw), c)
    check_path_forward(_channels_last.applies, _channels_last.depthwise_forward, case,
                       np.float32 if f32 else np.float64)


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
    """The pixel block and the weight-gradient row hold one packed FMA per multiply-add of a
    vector, at the width the target gives a plain loop (a silent 5-10x slowdown otherwise: see
    tests/test_cpu_codegen.py)."""
    from nbconv.cpu import _generated

    monkeypatch.setattr(_generated, "source_dir", lambda: str(tmp_path))
    x = np.ones((2, 32, 7, 7), np.float32)
    spec = conv2d_spec(x, np.ones((32, 1, 3, 3), np.float32), None, 1, 1, 1, 32)
    f32, i64 = numba.types.float32[::1], numba.types.int64
    rows, cols = _channels_last.choose_block(spec)
    for source, name, sig, fmas in [
        (_channels_last.module_source(spec), "_block", (f32, i64, f32, i64, f32, i64, f32, i64), rows * cols * 9),
        (_channels_last.weight_grad_source(spec), "_wrow", (f32, i64, f32, i64, f32), 7 * 9),
    ]:
        kernel = getattr(_generated.load.__wrapped__(source, "nbconv_channels_last_test"), name)
        assert_loop_vectorised(fresh_asm(kernel, sig, kernel.targetoptions), fmas, kernel.targetoptions)
