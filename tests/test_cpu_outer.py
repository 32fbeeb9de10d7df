"""The CPU path with output channels in the vector lanes (``nbconv.cpu._outer``) and its
outer-product intrinsic (``nbconv.cpu._simd.outer_product_row``): blocks of pixels and channel
vectors, rows in blocks of two widths, strides, dilations, input dilation and cropping (the
gradient forms), 1x1 kernels, channel multipliers, float32 and float64, against the reference."""

from __future__ import annotations

import re

import numba
import numpy as np
import pytest
from asm import assert_explicit_vectors
from cases import (
    Case,
    at_each_thread_count,
    check_non_finite_forward,
    check_path_forward,
    ending_at_a_guard_page,
    random_arrays,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import (
    assert_conv_close,
    conv2d_input_reference,
    conv2d_reference,
    conv2d_weight_reference,
    conv_transpose2d_reference,
)

import nbconv
from nbconv._spec import conv2d_input_spec, conv2d_spec, conv_transpose2d_spec
from nbconv.cpu import _grouped, _outer, _scratch, _simd
from nbconv.cpu._launch import conv2d_forward
from nbconv.cpu._target import target
from nbconv.cpu._valid import valid_tap_regions

#: the small cases here must reach the generated kernels (``MIN_GENERATED_MACS``)
pytestmark = pytest.mark.usefixtures("generated_for_small_calls")

TAPS = (0, 1, 2, 20, 21, 22)
TAPS_SETS = ((0, 2, 4), (1, 3, 5), ())  # per-pixel taps of a row with input dilation 3 (one reads none)


def _row_kernel(n_pix, n_vec):
    row = _simd.outer_product_row(3, 70, TAPS, n_pix, n_vec, len(TAPS) * 40, 40, 50)

    @numba.njit
    def run(xs, x0, w, w0, b, b0, out, o0):
        row(xs, x0, w, w0, b, b0, out, o0)

    return run


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_pix,n_vec", [(5, 1), (8, 2), (13, 1), (16, 1)])
def test_outer_product_row(dtype, n_pix, n_vec):
    """One block at unaligned offsets against its formula; nothing else of ``out`` is written."""
    lanes = _simd.lanes(np.dtype(dtype))
    if n_pix > lanes:
        pytest.skip(f"a block of {n_pix} pixels is wider than a vector of {lanes}")
    rng = np.random.default_rng(0)
    xs = rng.standard_normal(300).astype(dtype)
    w = rng.standard_normal(3 * len(TAPS) * 40 + 40).astype(dtype)
    b = rng.standard_normal(60).astype(dtype)
    out = np.full(50 * 40 + 20, -7, dtype)
    x0, w0, b0, o0 = 5, 3, 7, 11
    _row_kernel(n_pix, n_vec)(xs, x0, w, w0, b, b0, out, o0)
    channels = n_vec * lanes
    want = np.full_like(out, -7)
    for c in range(channels):
        for p in range(n_pix):
            terms = [w[w0 + ci * len(TAPS) * 40 + t * 40 + c] * xs[x0 + ci * 70 + tap + p]
                     for ci in range(3) for t, tap in enumerate(TAPS)]
            want[o0 + c * 50 + p] = b[b0 + c] + np.sum(np.array(terms, np.float64))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, want, rtol=tol, atol=tol)
    assert (out == -7).sum() == (want == -7).sum()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_pix,overwritten", [(5, 0), (5, 2), (5, 3), (5, 16), (8, 16), (3, 1), (13, 3), (13, 2)])
def test_outer_product_row_overwritten(dtype, n_pix, overwritten):
    """``overwritten``: the block's rows rounded up to whole vectors of the target are stored whole
    where that reaches no further than ``overwritten`` past them (zeros there), else with masks;
    the first ``n_pix`` of each row are the formula's either way."""
    lanes = _simd.lanes(np.dtype(dtype))
    if n_pix > lanes:
        pytest.skip(f"a block of {n_pix} pixels is wider than a vector of {lanes}")
    t_lanes = target().vector_bits // (8 * np.dtype(dtype).itemsize)
    row = _simd.outer_product_row(3, 70, TAPS, n_pix, 1, len(TAPS) * 40, 40, 50, overwritten=overwritten)
    masked = _row_kernel(n_pix, 1)

    @numba.njit
    def run(xs, x0, w, w0, b, b0, out, o0):
        row(xs, x0, w, w0, b, b0, out, o0)

    rng = np.random.default_rng(2)
    xs, w = rng.standard_normal(300).astype(dtype), rng.standard_normal(3 * len(TAPS) * 40 + 40).astype(dtype)
    b = rng.standard_normal(60).astype(dtype)
    out, want = np.full(50 * 40 + 20, -7, dtype), np.full(50 * 40 + 20, -7, dtype)
    run(xs, 5, w, 3, b, 7, out, 11)
    masked(xs, 5, w, 3, b, 7, want, 11)
    whole = -(-n_pix // t_lanes) * t_lanes
    if t_lanes < lanes and n_pix < whole <= n_pix + overwritten:  # AVX2: whole vectors, zeros past n_pix
        for c in range(lanes):
            want[11 + c * 50 + n_pix:11 + c * 50 + whole] = 0
        assert "vmaskmov" not in run.inspect_asm(run.signatures[-1])  # AVX2's microcoded masked store
    np.testing.assert_array_equal(out, want)


PACKED_PIXEL_TAPS = tuple(TAPS_SETS[p % 3] for p in range(7))


def _packed_row_kernel():
    """Two groups per vector (pack 2): per-pixel taps, lanes to their output rows."""
    lane_channels = tuple((c % 2) * 8 + c // 2 for c in range(16))
    row = _simd.outer_product_row(3, 140, TAPS, 7, 1, len(TAPS) * 16, 16, 50, pack=2,
                                  pixel_taps=PACKED_PIXEL_TAPS, lane_channels=lane_channels)

    @numba.njit
    def run(xs, x0, w, w0, b, b0, out, o0):
        row(xs, x0, w, w0, b, b0, out, o0)

    return run, lane_channels


def test_packed_row_formula():
    """Two groups per vector: the formula at unaligned offsets; nothing else of ``out`` is written."""
    run, lane_channels = _packed_row_kernel()
    pixel_taps = PACKED_PIXEL_TAPS
    rng = np.random.default_rng(1)
    xs, w = rng.standard_normal(600).astype(np.float32), rng.standard_normal(400).astype(np.float32)
    b = rng.standard_normal(40).astype(np.float32)
    out = np.full(16 * 50 + 20, -7, np.float32)
    x0, w0, b0, o0 = 6, 3, 7, 11
    run(xs, x0, w, w0, b, b0, out, o0)
    want = np.full_like(out, -7)
    for c in range(16):
        for p in range(7):
            terms = [w[w0 + ci * len(TAPS) * 16 + t * 16 + c] * xs[x0 + ci * 140 + (TAPS[t] + p) * 2 + c % 2]
                     for ci in range(3) for t in pixel_taps[p]]
            want[o0 + lane_channels[c] * 50 + p] = b[b0 + c] + np.sum(np.array(terms, np.float64))
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    assert (out == -7).sum() == (want == -7).sum()


@pytest.mark.asm
def test_packed_row_code():
    """Input runs of two (float32) broadcast whole, one ``vbroadcastsd`` each with AVX-512, and
    one FMA per tap and vector (explicit 16-lane vectors: ``tests/asm.py``)."""
    run, _ = _packed_row_kernel()
    f32, i64 = numba.types.float32[::1], numba.types.int64
    run.compile((f32, i64, f32, i64, f32, i64, f32, i64))
    asm = run.inspect_asm(run.signatures[-1])
    assert_explicit_vectors(asm, 3 * sum(len(t) for t in PACKED_PIXEL_TAPS))
    if target().vector_bits == 512:
        runs = 3 * len({TAPS[t] + p for p in range(7) for t in PACKED_PIXEL_TAPS[p]})  # distinct runs read
        assert len(re.findall(r"vbroadcastsd\s+[^\n]*%zmm", asm)) >= runs


def test_outer_product_row_rejects_blocks_wider_than_a_vector():
    with pytest.raises(Exception, match="at most 16 pixels"):
        _row_kernel(17, 1)(*(np.zeros(2000, np.float32), 0) * 4)


CASES = [
    Case(2, 32, (14, 14), 32, (3, 3), 1, 1, 1, 2),  # 16 -> 16 per group (float64: two vectors)
    Case(2, 16, (9, 21), 32, (3, 5), 1, "same", 1, 1),  # rows in blocks of two widths, non-square
    Case(2, 8, (13, 11), 16, (3, 3), 2, 1, 1, 1),  # stride 2: phase planes
    Case(1, 8, (12, 13), 16, (3, 3), 1, 2, 2, 2, False),  # dilation 2, 8 outputs per group, no bias
    Case(2, 64, (5, 6), 64, (1, 1), 1, 0, 1, 2),  # 1x1: 4 vectors of channels per block
    Case(2, 16, (15, 14), 16, (4, 3), (2, 3), (0, 2), (1, 2), 1),  # mixed stride, padding, dilation
    Case(2, 2, (7, 7), 16, (3, 3), 1, 1, 1, 2),  # depthwise, channel multiplier 8
]


@pytest.mark.parametrize("case,dtype", [(c, np.float64) for c in CASES] + [(CASES[1], np.float32)], ids=str)
def test_outer_forward(case, dtype):
    """The input read where it lies, padding's terms left out (where ``direct_applies``)."""
    x, w, _ = random_arrays(case, dtype)
    assert _outer.direct_applies(conv2d_spec(x, w, None, **case.conv_args()))
    check_path_forward(_outer.applies, _outer.outer_forward, case, dtype)


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[5]], ids=str)
def test_outer_forward_packed_planes(case):
    """The packed planes with every term: the way for non-finite weights."""
    check_path_forward(_outer.applies, lambda *a: _outer.outer_forward(*a, direct=False), case, np.float64)


@pytest.mark.parametrize("tap", [(0, 0), (1, 1), (2, 1)])
@pytest.mark.parametrize("value", [np.inf, np.nan])
def test_non_finite_weight_meets_the_padding(tap, value):
    """A non-finite weight makes NaN (0 x inf) where its tap reads padding, as in the
    reference: such weights take the packed planes."""
    case = Case(2, 32, (7, 9), 32, (3, 3), 1, 1, 1, 2)
    x, w, b = random_arrays(case, np.float64)
    w[(5, 3) + tap] = value
    spec = conv2d_spec(x, w, b, **case.conv_args())
    out = np.full(spec.output_shape, 0.5)
    _outer.outer_forward(x, w, b, out, spec)
    with np.errstate(invalid="ignore"):
        want = conv2d_reference(x, w, b, **case.conv_args())
    np.testing.assert_array_equal(np.isnan(out), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(out), np.isinf(want))
    assert np.isnan(want).any() or (tap == (1, 1) and value == np.inf)
    finite = np.isfinite(want)
    np.testing.assert_allclose(out[finite], want[finite], rtol=1e-12, atol=1e-12)


#: groups of 4 or 8 outputs share a vector (``group_pack``): strides, input dilation, widths in
#: blocks of two sizes, 1x1
PACKED_CASES = [
    (Case(2, 16, (9, 11), 16, (3, 3), 1, 1, 1, 4), np.float32),  # 4 groups of 4 in a vector
    (Case(1, 24, (10, 13), 16, (3, 2), 1, 1, 2, 2, False), np.float32),  # pairs of 8, dilation 2
    (Case(2, 8, (7, 19), 16, (1, 1), 1, 0, 1, 4), np.float64),  # pairs of 4 (8 lanes), blocks 7 + 7 + 5
    (Case(2, 32, (6, 8), 32, (2, 3), 1, (1, 0), (2, 1), 8), np.float32),  # 8 groups: 2 vectors of 4
    # group counts not a multiple of the pack: the last vector has idle groups
    (Case(2, 52, (7, 10), 104, (3, 3), 1, 1, 1, 13), np.float32),  # 13 groups of 8: 7 pairs, one idle
    (Case(1, 18, (6, 9), 36, (3, 2), 1, 1, 1, 9), np.float64),  # 9 groups of 4 (8 lanes): one idle
    (Case(2, 22, (5, 17), 44, (3, 3), 1, (1, 0), (2, 1), 11), np.float32),  # 11 groups of 4: 3 fours, one idle
    # pairs at stride 2 (the packing's spread copies of phase columns)
    (Case(2, 32, (13, 20), 64, (3, 3), 2, 1, 1, 8), np.float32),
    (Case(1, 26, (12, 15), 52, (3, 3), (2, 1), (1, 0), 1, 13), np.float64),  # 13 groups of 4 (8 lanes): one idle
]


@pytest.mark.parametrize("case,dtype", [c for c in PACKED_CASES if c[0].groups % 2], ids=str)
def test_idle_groups_store_nothing(case, dtype):
    """The idle groups of the last vector write nothing: the output lies at the end of a buffer
    whose next elements must keep their values, and every output matches the reference."""
    from reference import assert_conv_close

    x, w, b = random_arrays(case, dtype)
    spec = conv2d_spec(x, w, b, **case.conv_args())
    pack = _outer.group_pack(spec)
    assert pack > 1 and _outer.idle_groups(spec.groups, pack) > 0
    size = int(np.prod(spec.output_shape))
    buffer = np.full(size + 4 * size, 7.0, dtype)  # room for an idle group's rows of every image
    out = buffer[:size].reshape(spec.output_shape)
    out[...] = np.nan
    _outer.outer_forward(x, w, b, out, spec)
    assert_conv_close(out, x, w, b, **case.conv_args())
    assert (buffer[size:] == 7.0).all()


@pytest.mark.parametrize("case,dtype", PACKED_CASES, ids=str)
def test_packed_groups_forward(case, dtype):
    check_path_forward(_outer.applies, _outer.outer_forward, case, dtype)


def test_applies_to_whole_vectors_of_outputs_per_group():
    def spec(c_out, groups, dtype=np.float32, batch=2):
        x = np.zeros((batch, 16, 8, 8), dtype)
        return conv2d_spec(x, np.zeros((c_out, 16 // groups, 3, 3), dtype), None, 1, 1, 1, groups)
    assert _outer.group_pack(spec(32, 2)) == 1 and _outer.applies(spec(32, 2))
    assert _outer.group_pack(spec(16, 2)) == 2  # 8 outputs: two groups per vector
    assert _outer.group_pack(spec(16, 4)) == 4
    assert _outer.group_pack(spec(16, 1, np.float64)) == 1
    assert _outer.group_pack(spec(8, 2, np.float64)) == 2
    assert not _outer.applies(spec(16, 8))  # 2 outputs per group: not packed
    assert not _outer.applies(spec(8, 1))  # 8 outputs, but a single group
    # idle groups in the last vector: at most an eighth of them
    odd = conv2d_spec(np.zeros((2, 104, 8, 8), np.float32), np.zeros((104, 8, 3, 3), np.float32), None, 1, 1, 1, 13)
    assert _outer.group_pack(odd) == 2 and _outer.idle_groups(13, 2) == 1
    def groups_of(c_out_g, groups):
        x = np.zeros((2, 2 * groups, 8, 8), np.float32)
        return conv2d_spec(x, np.zeros((c_out_g * groups, 2, 3, 3), np.float32), None, 1, 1, 1, groups)
    assert _outer.group_pack(groups_of(4, 11)) == 4  # 1 of 12 idle
    assert _outer.group_pack(groups_of(4, 3)) == 0  # 1 of 4 idle
    assert _outer.group_pack(groups_of(8, 3)) == 0
    assert _outer.group_pack(groups_of(8, 7)) == 2  # 1 of 8 idle: the bound
    strided = conv2d_spec(np.zeros((2, 16, 8, 8), np.float32), np.zeros((16, 4, 3, 3), np.float32), None, 2, 1, 1, 4)
    assert not _outer.applies(strided)  # fours of packed groups at stride 1 only
    pairs = conv2d_spec(np.zeros((2, 16, 8, 8), np.float32), np.zeros((16, 8, 3, 3), np.float32), None, 2, 1, 1, 2)
    assert _outer.group_pack(pairs) == 2  # pairs at any stride
    assert not _outer.applies(spec(32, 2, batch=0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("c_out,cin_g,k,groups,pack", [
    (64, 32, (3, 3), 2, 1),  # 288 per row: whole tiles
    (32, 3, (3, 3), 1, 1),  # 27 per row: the last tile moved back
    (16, 1, (3, 3), 1, 1),  # 9 per row: fewer than a vector, element by element
    (48, 2, (1, 2), 3, 1),  # 2 per row, three groups of 16
    (104, 8, (3, 3), 13, 2),  # pairs of groups of 8, one idle
    (44, 4, (2, 3), 11, 4),  # fours of groups of 4, one idle
    (36, 2, (3, 3), 9, 2),  # pairs of groups of 4 (float64's 8 lanes), one idle
    (64, 3, (2, 3), 16, 4),  # fours of groups of 4, 18 per row: the last tile moved back
])
def test_packed_weight_layout(c_out, cin_g, k, groups, pack, dtype):
    """Lane ``o * pack + j`` of tap ``t`` of input channel ``ci`` in pack ``gp`` holds group
    ``gp * pack + j``'s output ``o``: checked element by element, zeros for idle groups."""
    w = np.random.default_rng(0).standard_normal((c_out, cin_g) + k).astype(dtype)
    cout_g, taps = c_out // groups, k[0] * k[1]
    got = _outer.packed_weight(w, groups, pack).reshape(-1, cin_g, taps, cout_g, pack)
    assert got.shape[0] * pack == groups + _outer.idle_groups(groups, pack)
    for gp, ci, t, o, j in np.ndindex(got.shape):
        g = gp * pack + j
        want = w[g * cout_g + o, ci].reshape(-1)[t] if g < groups else 0
        assert got[gp, ci, t, o, j] == want
    b = np.arange(c_out, dtype=dtype)
    lanes = _outer.packed_bias(b, groups, pack).reshape(-1, cout_g, pack)
    assert [lanes[gp, o, j] for gp in range(lanes.shape[0]) for o in range(cout_g) for j in range(pack)
            if gp * pack + j < groups] == [(gp * pack + j) * cout_g + o for gp in range(lanes.shape[0])
                                           for o in range(cout_g) for j in range(pack) if gp * pack + j < groups]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("c_out,cin_g,k,groups,pack", [
    (64, 32, (3, 3), 2, 1), (32, 3, (3, 3), 1, 1), (104, 8, (3, 3), 13, 2), (44, 4, (2, 3), 11, 4),
    (64, 3, (2, 3), 16, 4),
])
def test_packed_finite_weight_finds_every_non_finite_weight(c_out, cin_g, k, groups, pack, dtype):
    """The parallel interleave writes :func:`_outer.packed_weight`'s layout and says whether
    every weight is finite: one inf or NaN anywhere (first, a middle and the last group's last
    weight) makes it False."""
    w = np.random.default_rng(1).standard_normal((c_out, cin_g) + k).astype(dtype)
    want = _outer.packed_weight(w, groups, pack)
    got = np.full_like(want, np.nan)
    assert _outer.packed_finite_weight(w, groups, pack, got)
    np.testing.assert_array_equal(got, want)
    for index in (0, w.size // 2, w.size - 1):
        for value in (np.inf, -np.inf, np.nan):
            bad = w.copy()
            bad.reshape(-1)[index] = value
            assert not _outer.packed_finite_weight(bad, groups, pack, got), (index, value)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("c_in, cout_g, k, groups, pack", [
    (64, 32, (3, 3), 2, 1), (32, 3, (3, 3), 1, 1), (104, 8, (3, 3), 13, 2), (44, 4, (2, 3), 11, 4),
    (48, 3, (2, 3), 16, 4), (12, 5, (1, 1), 3, 1),
])
def test_packed_finite_weight_of_a_transposed_weight(c_in, cout_g, k, groups, pack, dtype):
    """A transposed convolution's (C_in, C_out/groups, kH, kW) weight packs, without the
    launcher's flipped copy, as that copy packs; one inf or NaN anywhere makes it False."""
    from nbconv.cpu._launch import flipped_transposed_weight

    wt = np.random.default_rng(2).standard_normal((c_in, cout_g) + k).astype(dtype)
    want = _outer.packed_weight(flipped_transposed_weight(wt, groups), groups, pack)
    got = np.full_like(want, np.nan)
    assert _outer.packed_finite_weight(wt, groups, pack, got, transposed=True)
    np.testing.assert_array_equal(got, want)
    for index in (0, wt.size // 2, wt.size - 1):
        bad = wt.copy()
        bad.reshape(-1)[index] = np.nan
        assert not _outer.packed_finite_weight(bad, groups, pack, got, transposed=True), index


def test_transposed_convolution_packs_the_weight_it_is_given(monkeypatch):
    """``conv_transpose2d`` and the input gradient on ``_outer`` hand the kernel the weight as the
    caller gave it (no flipped copy first: the kernel's packing flips it,
    :func:`test_packed_finite_weight_of_a_transposed_weight`); the transposed convolution of
    :func:`test_gradient_forms` at stride 1 (no compile of its own) gives the reference's result."""
    from nbconv.cpu import _launch

    copies = []
    real = _launch.flipped_transposed_weight
    monkeypatch.setattr(_launch, "flipped_transposed_weight", lambda *a: copies.append(a) or real(*a))
    gy = np.random.default_rng(1).standard_normal((2, 16, 13, 12))
    wt = np.random.default_rng(2).standard_normal((16, 16, 3, 3))
    b = np.random.default_rng(3).standard_normal(32)
    assert _launch.forward_kernel(conv_transpose2d_spec(gy, wt, b, 1, 1, 0, 2, 1)) == "outer"
    np.testing.assert_allclose(nbconv.conv_transpose2d(gy, wt, b, padding=1, groups=2),
                               conv_transpose2d_reference(gy, wt, b, padding=1, groups=2), rtol=1e-12, atol=1e-12)
    assert not copies


def test_tap_phases():
    """A transposed convolution's output rows and columns read input pixels through some taps
    only (the others meet the zeros its stride inserts)."""
    gy = np.zeros((1, 4, 5, 6))
    s2 = conv_transpose2d_spec(gy, np.zeros((4, 2, 3, 3)), None, 2, 1, 0, 1, 1)
    assert _outer.tap_phases(s2) == ([(1,), (0, 2)], [(1,), (0, 2)])
    s3 = conv_transpose2d_spec(gy, np.zeros((4, 2, 2, 4)), None, (3, 2), 0, 0, 1, 1)  # some rows read none
    assert _outer.tap_phases(s3) == ([(1,), (0,), ()], [(1, 3), (0, 2)])
    x = np.zeros((1, 4, 9, 9))
    assert _outer.tap_phases(conv2d_spec(x, np.zeros((2, 4, 3, 3)), None, 2, 1, 1, 1)) == ([(0, 1, 2)], [(0, 1, 2)])


@pytest.mark.parametrize("stride,padding,output_padding,dilation,c_out_g", [
    (2, 1, 1, 1, 8), (3, 0, 2, 1, 4), ((2, 3), (1, 2), (1, 0), (2, 1), 16), (2, 0, 0, 1, 16)])
def test_transposed_skips_the_inserted_zeros(stride, padding, output_padding, dilation, c_out_g):
    """conv_transpose2d at strides >= 2 sums only the taps that meet input pixels; packed groups
    and whole vectors, float32 and float64, with and without bias."""
    rng = np.random.default_rng(5)
    for dtype in (np.float32, np.float64):
        groups = 4
        gy = rng.standard_normal((2, 8, 5, 7)).astype(dtype)
        wt = rng.standard_normal((8, c_out_g, 3, 2)).astype(dtype)
        b = rng.standard_normal(groups * c_out_g).astype(dtype) if dtype == np.float32 else None
        args = dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups, dilation=dilation)
        spec = conv_transpose2d_spec(gy, wt, b, stride, padding, output_padding, groups, dilation)
        assert _outer.applies(spec) and max(len(_outer.tap_phases(spec)[0]), len(_outer.tap_phases(spec)[1])) > 1
        got = nbconv.conv_transpose2d(gy, wt, b, **args)
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(got, conv_transpose2d_reference(gy, wt, b, **args), rtol=tol, atol=tol)


def test_block_choice():
    def block(ow, cout_g, dtype=np.float32):
        x = np.zeros((1, 1, 3, ow), dtype)
        return _outer.choose_block(conv2d_spec(x, np.zeros((cout_g, 1, 3, 3), dtype), None, 1, 1, 1, 1))
    cases = [(14, 16, np.float32), (14, 64, np.float32), (28, 64, np.float32), (21, 32, np.float32),
             (14, 16, np.float64), (7, 256, np.float32)]
    want = {
        # AVX-512 (28 sums): one block per row of 14; 28 sums; two blocks of 14, not 16 + 12; 11 + 10;
        # 8 float64 lanes: two blocks of 7 x two vectors; 16 vectors in blocks of 4
        28: [(14, 1), (14, 2), (14, 2), (11, 2), (7, 2), (7, 4)],
        # AVX2 (6 sums, each two registers): rows in blocks of at most 6 pixels, evened out
        6: [(5, 1), (5, 1), (6, 1), (6, 1), (5, 1), (4, 1)],
    }
    budget = _outer.block_sums()
    got = [block(*c) for c in cases]
    for (ow, cout_g, dtype), (pixels, vectors) in zip(cases, got):
        assert pixels * vectors <= budget and pixels <= _simd.lanes(np.dtype(dtype))
        assert -(-ow // pixels) == -(-ow // min(_simd.lanes(np.dtype(dtype)), budget))  # as few blocks as the budget allows
    if budget in want:
        assert got == want[budget]


@pytest.mark.parametrize("stride", [1, 2])
def test_gradient_forms(stride):
    """The input gradient (cropping at stride 1 with padding 3; an input dilation at stride 2) and
    the transposed convolution take this path as forward convolutions."""
    case = Case(2, 32, (9, 8), 16, (3, 3), stride, 3 if stride == 1 else 1, 1, 2)
    x, w, _ = random_arrays(case, np.float64)
    gy = np.random.default_rng(1).standard_normal(nbconv.conv2d(x, w, None, **case.conv_args()).shape)
    spec = conv2d_input_spec(x.shape, w, gy, **case.conv_args())
    assert _outer.applies(spec) and (spec.padding[0] < 0 or spec.lhs_dilation == (2, 2))
    out = np.full(x.shape, np.nan)
    conv2d_forward(spec, gy, w, None, out)
    np.testing.assert_allclose(out, conv2d_input_reference(x.shape, w, gy, **case.conv_args()), rtol=1e-12, atol=1e-12)
    wt = np.random.default_rng(2).standard_normal((16, 16, 3, 3))  # (C_in, C_out / groups, kH, kW)
    b = np.random.default_rng(3).standard_normal(32)
    tspec = conv_transpose2d_spec(gy, wt, b, stride, 1, 0, 2, 1)
    assert _outer.applies(tspec)
    got = nbconv.conv_transpose2d(gy, wt, b, stride=stride, padding=1, groups=2)
    np.testing.assert_allclose(got, conv_transpose2d_reference(gy, wt, b, stride=stride, padding=1, groups=2),
                               rtol=1e-12, atol=1e-12)


def test_launcher_routing(monkeypatch):
    """Groups of whole vectors of outputs come here (before ``_grouped``), and so do 8 float32
    outputs per group (two groups per vector); 2 per group do not."""
    calls = []
    real = _outer.outer_forward
    monkeypatch.setattr(_outer, "outer_forward", lambda *a: calls.append(a[-1]) or real(*a))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 32, 7, 7)).astype(np.float32)
    w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    readonly = np.asfortranarray(x)
    readonly.flags.writeable = False
    assert_conv_close(nbconv.conv2d(readonly, w, None, padding=1, groups=2), x, w, None, padding=1, groups=2)
    assert len(calls) == 1 and _grouped.applies(calls[0])
    assert_conv_close(nbconv.conv2d(x, w[:, :8], None, padding=1, groups=4), x, w[:, :8], None, padding=1, groups=4)
    assert len(calls) == 2 and _outer.group_pack(calls[1]) == 2
    nbconv.conv2d(x, w[:, :2], None, padding=1, groups=16)
    assert len(calls) == 2


@pytest.mark.parametrize("registers", [16, 32])
def test_launcher_routing_by_target(monkeypatch, registers):
    """With 16 vector registers (AVX2), groups sharing a vector go to ``_grouped`` at a stride on
    output rows of ``MIN_GROUPED_WIDTH`` and more where the last vector has an idle group or a
    task's packed planes pass ``MAX_STRIDED_PLANE_BYTES``; stride 1, narrower rows, whole vectors
    per group and a transposed convolution's input dilation stay here; with 32 (AVX-512) all of
    them do."""
    monkeypatch.setattr(_outer, "target", lambda: target()._replace(vector_registers=registers))
    from nbconv.cpu._launch import direct_forward_kernel

    def kernel(c, hw, stride, groups, dtype=np.float32):
        x = np.zeros((2, c, hw, hw), dtype)
        w = np.zeros((c, c // groups, 3, 3), dtype)
        spec = conv2d_spec(x, w, None, stride, 1, 1, groups)
        assert _outer.applies(spec) and _grouped.applies(spec)
        return direct_forward_kernel(spec)

    wide = _outer.MIN_GROUPED_WIDTH
    avx2 = registers == 16
    assert kernel(104, 2 * wide, 2, 13) == ("grouped" if avx2 else "outer")  # pairs of 8, an idle group
    assert kernel(48, 112, 2, 6) == ("grouped" if avx2 else "outer")  # pairs, 833 KB of planes a task
    assert kernel(96, 2 * wide, 2, 12) == "outer"  # pairs, no idle group, small planes
    assert kernel(256, 56, 2, 32) == "outer"  # resnext_g32_s2: 216 KB of planes a task
    assert kernel(48, wide, 1, 6) == "outer"  # stride 1: pairs
    assert kernel(64, wide, 1, 16) == "outer"  # fours of 4
    assert kernel(104, wide, 1, 13) == "outer"  # an idle group at stride 1
    assert kernel(104, 2 * wide - 2, 2, 13) == "outer"  # narrower rows
    assert kernel(64, 2 * wide, 2, 4) == "outer"  # 16 outputs per group: one whole vector
    gy = np.zeros((2, 48, wide, wide), np.float32)
    transposed = conv_transpose2d_spec(gy, np.zeros((48, 8, 3, 3), np.float32), None, 2, 1, 1, 6, 1)
    assert transposed.lhs_dilation == (2, 2) and _outer.prefers(transposed)
    assert direct_forward_kernel(transposed) == "outer"


@pytest.mark.parametrize("value", [np.inf, np.nan])
def test_non_finite_pixels_reach_only_their_outputs(value):
    """Padding and the lanes past a block's pixels must not spread a non-finite pixel."""
    pixels = [(0, 2, 6, 8),  # last pixel of a plane
              (1, 15, 0, 0)]  # first pixel, last channel of a group
    check_non_finite_forward(_outer.outer_forward, Case(2, 16, (7, 9), 32, (3, 3), 1, 1, 1, 2), pixels, value)
    # 9 groups of 4 float64 outputs (two per vector): the pixels of the last group, which shares
    # its vector with an idle one, and of the one before
    check_non_finite_forward(_outer.outer_forward, Case(2, 18, (7, 9), 36, (3, 3), 1, 1, 1, 9),
                             [(1, 17, 6, 8), (0, 16, 0, 0), (1, 15, 3, 4)], value)


def test_results_do_not_depend_on_threads():
    case = Case(3, 32, (7, 7), 32, (3, 3), 1, 1, 1, 2)
    x, w, b = random_arrays(case, np.float32)
    one, two = at_each_thread_count(lambda: nbconv.conv2d(x, w, b, **case.conv_args()))
    np.testing.assert_array_equal(one, two)


@settings(max_examples=6, deadline=None)
@given(
    n=st.integers(1, 2), groups=st.sampled_from([1, 2, 4]), cin_g=st.integers(1, 5), h=st.integers(1, 9),
    wd=st.integers(1, 20), kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 2),
    sw=st.integers(1, 2), dh=st.integers(1, 2), dw=st.integers(1, 2), pad=st.integers(0, 2),
    cout_g=st.sampled_from([8, 4]), dtype=st.sampled_from([np.float32, np.float64]), idle=st.booleans(),
)
def test_outer_property(n, groups, cin_g, h, wd, kh, kw, sh, sw, dh, dw, pad, cout_g, dtype, idle):
    """Whole vectors of outputs per group (8 float64) and packed groups (4 or 8 float32, 4
    float64): enough of them to fill a vector, or 8 vectors less one group (an idle group in the
    last); any stride for pairs of groups, stride 1 for fours."""
    lanes = 16 if dtype == np.float32 else 8
    if cout_g < lanes:
        pack = lanes // cout_g
        groups = 8 * pack - 1 if idle else max(groups, pack)
        if pack > 2:
            sh, sw = 1, 1
    case = Case(n, groups * cin_g, (h + (kh - 1) * dh, wd + (kw - 1) * dw), groups * cout_g, (kh, kw), (sh, sw), pad,
                (dh, dw), groups)
    check_path_forward(_outer.applies, _outer.outer_forward, case, dtype)


@pytest.mark.asm
def test_row_compiles_to_vector_multiply_adds():
    """One packed FMA per multiply-add of a block (3 input channels x 6 taps of 8 pixels x 2
    vectors: 96 in the loop body, broadcast operands), and with AVX-512 no vector register
    spilled to the stack (a silent 2-5x slowdown)."""
    run = _row_kernel(8, 2)
    f32, i64 = numba.types.float32[::1], numba.types.int64
    run.compile((f32, i64, f32, i64, f32, i64, f32, i64))
    assert_explicit_vectors(run.inspect_asm(run.signatures[-1]), 8 * 2 * len(TAPS))


WGRAD_CASES = [
    Case(2, 32, (7, 7), 32, (3, 3), 1, 1, 1, 2),  # 16 -> 16 per group: blocks of 2 channels
    Case(2, 16, (9, 21), 32, (3, 5), 1, "same", 1, 1),  # non-square kernel, wide rows
    Case(3, 8, (13, 11), 16, (3, 3), 2, 1, 1, 1),  # stride 2: phase planes
    Case(1, 8, (12, 13), 16, (3, 3), 1, 2, 2, 2),  # dilation 2
    Case(2, 64, (5, 6), 64, (1, 1), 1, 0, 1, 2),  # 1x1: blocks of 4 channels x 4 vectors (float32)
    Case(2, 6, (15, 14), 16, (4, 3), (2, 3), (0, 2), (1, 2), 2),  # mixed stride, padding, dilation
    Case(2, 2, (9, 10), 32, (3, 3), 1, 1, 1, 2),  # one input channel per group (multiplier 16)
]


@pytest.mark.parametrize("case,dtype", [(c, np.float64) for c in WGRAD_CASES] + [(WGRAD_CASES[4], np.float32)],
                         ids=str)
@pytest.mark.parametrize("slices,direct", [(None, True), (2, True), (None, False)])
def test_outer_weight_grad(case, dtype, slices, direct):
    """Both ways: the input read where it lies without the padding's terms, and packed planes
    with every term (``direct=False``, the way back from a non-finite total)."""
    x, w, _ = random_arrays(case, dtype)
    spec = conv2d_spec(x, w, None, **case.conv_args())
    # the kernel's own conditions (the launcher takes it only where the target's registers hold
    # a block's sums: not for 3x3 with AVX2)
    assert _outer.applies(spec) and _outer.group_pack(spec) == 1
    gy = np.random.default_rng(1).standard_normal(spec.output_shape).astype(dtype)
    dw = np.full(w.shape, np.nan, dtype)
    _outer.outer_weight_grad(x, gy, dw, spec, slices, direct)
    want = conv2d_weight_reference(x.astype(np.float64), w.shape, gy.astype(np.float64), **case.conv_args())
    tol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(dw, want, rtol=tol, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("where", [(0, 0), (0, 5), (6, 6), (3, 3)])
@pytest.mark.parametrize("value", [np.inf, np.nan])
def test_weight_grad_non_finite_gradient_meets_the_padding(where, value):
    """A non-finite gradient value next to the padding: the reference's 0 x inf there is NaN, so
    the sums without the padding's terms are done again with them (and in the middle: not)."""
    case = Case(2, 32, (7, 7), 32, (3, 3), 1, 1, 1, 2)
    x, w, _ = random_arrays(case, np.float64)
    spec = conv2d_spec(x, w, None, **case.conv_args())
    gy = np.random.default_rng(1).standard_normal(spec.output_shape)
    gy[1, 20][where] = value
    dw = np.empty(w.shape)
    _outer.outer_weight_grad(x, gy, dw, spec)
    with np.errstate(invalid="ignore"):
        want = conv2d_weight_reference(x, w.shape, gy, **case.conv_args())
    np.testing.assert_array_equal(np.isnan(dw), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(dw), np.isinf(want))
    assert np.isnan(want).any() or where == (3, 3)  # (3, 3): an inf meets no padding
    finite = np.isfinite(want)
    np.testing.assert_allclose(dw[finite], want[finite], rtol=1e-12, atol=1e-11)


def test_weight_grad_block_choice():
    def block(cin_g, cout_g, k, dtype=np.float32):
        x = np.zeros((1, cin_g, 9, 9), dtype)
        return _outer.weight_grad_block(conv2d_spec(x, np.zeros((cout_g, cin_g, k, k), dtype), None, 1, 1, 1, 1))
    cases = [(16, 16, 3), (64, 64, 1), (48, 128, 5), (16, 16, 3, np.float64)]
    want = {
        # AVX-512: 18 sums (3 channels do not divide 16); 16 sums; 25 sums; two 8-lane vectors
        28: [(2, 1), (4, 4), (1, 1), (1, 2)],
        # AVX2: the 1x1 block's input channels first; one channel vector where not even 9 sums fit
        6: [(1, 1), (4, 1), (1, 1), (1, 1)],
    }
    budget = _outer.block_sums()
    got = [block(*c) for c in cases]
    for (cin_g, cout_g, k, *_), (n_c, n_vec) in zip(cases, got):
        assert cin_g % n_c == 0 and n_c * n_vec * k * k <= max(budget, k * k)
    if budget in want:
        assert got == want[budget]
    assert _outer.applies_weight_grad(conv2d_spec(np.zeros((1, 16, 9, 9), np.float32),
                                                  np.zeros((16, 16, 3, 3), np.float32), None, 1, 1, 1, 1)) == (budget >= 9)


def test_weight_grad_through_the_launcher_with_an_inf_pixel(monkeypatch):
    """``grad.conv2d_weight`` takes this path; an inf pixel (met by a zero past the output width
    here) sends it through the exact fallback, and the thread count changes nothing."""
    calls = []
    real = _outer.outer_weight_grad
    monkeypatch.setattr(_outer, "outer_weight_grad", lambda *a: calls.append(a[-1]) or real(*a))
    monkeypatch.setattr(_outer, "block_sums", lambda: _outer.SUM_BUDGET)  # the launcher takes 3x3 on any target
    case = Case(3, 32, (7, 7), 32, (3, 3), 1, 1, 1, 2)
    x, w, _ = random_arrays(case, np.float64)
    gy = np.random.default_rng(1).standard_normal(nbconv.conv2d(x, w, None, **case.conv_args()).shape)
    one, two = at_each_thread_count(lambda: nbconv.grad.conv2d_weight(x, w.shape, gy, **case.conv_args()))
    np.testing.assert_array_equal(one, two)
    np.testing.assert_allclose(one, conv2d_weight_reference(x, w.shape, gy, **case.conv_args()), rtol=1e-12, atol=1e-11)
    assert len(calls) == 2
    x[1, 3, 2, 6] = np.inf
    got = nbconv.grad.conv2d_weight(x, w.shape, gy, **case.conv_args())
    with np.errstate(invalid="ignore"):
        want = conv2d_weight_reference(x, w.shape, gy, **case.conv_args())
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    assert finite.any() and not finite.all()
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-11, atol=1e-11)


def _float32_sums_asm(sums) -> str:
    """The target's asm of an ``outer_product_sums`` intrinsic on float32."""

    @numba.njit
    def run(g, g0, xs, x0, n, tot, t0):
        sums(g, g0, xs, x0, n, tot, t0)

    f32, i64 = numba.types.float32[::1], numba.types.int64
    run.compile((f32, i64, f32, i64, i64, numba.types.float64[::1], i64))
    return run.inspect_asm(run.signatures[-1])


@pytest.mark.asm
def test_sums_compile_to_broadcast_multiply_adds():
    """The loop of a 2-channel 3x3 block: 18 FMAs (with a broadcast memory operand on AVX-512),
    and no stack access between them (the widening to float64 after the loop may spill)."""
    asm = _float32_sums_asm(_simd.outer_product_sums(2, 256, (0, 1, 2, 15, 16, 17, 30, 31, 32), 1, 16, 144, 14, 15))
    assert_explicit_vectors(asm, 18, exact=True, no_spills=False)
    if target().vector_bits == 512:
        assert len(re.findall(r"vfmadd\w*ps\s+[^\n]*\{1to16\}, %zmm", asm)) == 18
        loop = asm[asm.index("vfmadd"):asm.rindex("vfmadd")]
        assert "%rsp" not in loop


@pytest.mark.asm
def test_sums_by_region_keep_their_sums_in_registers():
    """resnext_g32_14's nine regions of taps (the input read where it lies): one FMA per tap of
    each region's vectors; with AVX-512's 32 registers, the interior's loop is the 18 FMAs of a
    2-channel 3x3 block, no innermost loop touches the stack, and no vector sum is spilled
    between regions."""
    spec = conv2d_spec(np.zeros((1, 32, 14, 14)), np.zeros((32, 16, 3, 3)), None, 1, 1, 1, 2)
    regions = valid_tap_regions(spec)
    taps = tuple((kh - 1) * 14 + kw - 1 for kh in range(3) for kw in range(3))
    asm = _float32_sums_asm(_simd.outer_product_sums(2, 196, taps, 1, 16, 144, 14, 14, regions, 1))
    assert_explicit_vectors(asm, 2 * sum(len(r[4]) for r in regions))
    if target().vector_bits == 512:
        fma = r"vfmadd\w*ps\s+[^\n]*%zmm"
        innermost = [body for _, body in re.findall(r"^(\.LBB\w+):\n((?:(?!^\.LBB).)*?)^\s+j\w+\s+\1$", asm, re.S | re.M)]
        assert len(innermost) >= 5 and not any("%rsp" in body for body in innermost)
        assert 18 in [len(re.findall(fma, body)) for body in innermost]  # the interior (others may be unrolled)


@pytest.mark.asm
def test_sums_loop_is_one_block_a_pass():
    """The Winograd weight gradient's block (6 input channels x 1 vector over tiles, rows of one
    pixel): the loop is not unrolled (``_simd.rolled_range``), its body one block's FMAs (a
    16-lane vector is two on AVX2) with no stack access. Unrolled, AVX2's 16 registers did not
    hold two bodies' sums and loads."""
    asm = _float32_sums_asm(_simd.outer_product_sums(1, 0, tuple(range(6)), 1, 128, 0, 1, 48))
    innermost = [body for _, body in re.findall(r"^(\.LBB\w+):\n((?:(?!^\.LBB).)*?)^\s+j\w+\s+\1$", asm, re.S | re.M)]
    parts = 512 // target().vector_bits
    assert [len(re.findall(r"vfmadd\w*ps", body)) for body in innermost] == [6 * parts]
    assert "%rsp" not in innermost[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("count", [8, 14, 16, 37])
@pytest.mark.parametrize("step", [1, 2])
@pytest.mark.parametrize("spread", [1, 2, 4])
def test_copy_run(dtype, count, step, spread):
    """The packing's row copies (and a stride's phase columns, step 2; the planes of 2 or 4
    packed groups interleaved, spread 2 or 4): whole vectors, then masked loads and stores; at
    unaligned offsets, only the run's elements written (the other groups' and those past the run
    keep their values). The source ends at a guard page: a read past its last element ends the
    process."""
    copy = _simd.copy_run(count, step, spread)

    @numba.njit
    def run(src, s0, dst, d0):
        copy(src, s0, dst, d0)

    src = ending_at_a_guard_page(3 + (count - 1) * step + 1, dtype)
    src[:] = np.arange(src.size) + 1
    dst = np.full(8 + count * spread + 80, -1, dtype)
    run(src, 3, dst, 5)
    want = np.full(dst.size, -1, dtype)
    want[5:5 + count * spread:spread] = src[3::step][:count]
    np.testing.assert_array_equal(dst, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("count", [8, 14, 16, 28, 37])
@pytest.mark.parametrize("step", [1, 2])
@pytest.mark.parametrize("ways", [2, 4])
def test_interleave_run(dtype, count, step, ways):
    """The packed groups' planes interleaved in one pass (``_pack_planes``): element ``j`` of
    plane ``m`` (``s_pitch`` apart) at ``d0 + j * ways + m``, at unaligned offsets; nothing past
    the ``count * ways`` results written, and the last plane's source ends at a guard page, so a
    read past its last element ends the process."""
    interleave = _simd.interleave_run(count, step, ways)

    @numba.njit
    def run(src, s0, s_pitch, dst, d0):
        interleave(src, s0, s_pitch, dst, d0)

    pitch = (count - 1) * step + 1 + 5
    src = ending_at_a_guard_page(3 + (ways - 1) * pitch + (count - 1) * step + 1, dtype)
    src[:] = np.arange(src.size) + 1
    dst = np.full(8 + count * ways + 80, -1, dtype)
    run(src, 3, pitch, dst, 5)
    want = np.full(dst.size, -1, dtype)
    for m in range(ways):
        want[5 + m:5 + count * ways:ways] = src[3 + m * pitch::step][:count]
    np.testing.assert_array_equal(dst, want)


def test_interleave_run_rejects_other_steps_and_ways():
    with pytest.raises(ValueError, match="steps of 1 or 2"):
        _simd.interleave_run(8, 3)
    with pytest.raises(ValueError, match="2 or 4 planes"):
        _simd.interleave_run(8, 1, 3)


def test_copy_run_rejects_other_steps():
    with pytest.raises(ValueError, match="steps of 1 or 2"):
        _simd.copy_run(8, 3)
    with pytest.raises(ValueError, match="spreads by 1, 2 or 4"):
        _simd.copy_run(8, 1, 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transposed_weight_of_groups_with_more_inputs_than_outputs(dtype, monkeypatch):
    """The input gradient of 32 -> 64 channels in 8 groups is a transposed convolution of 8 input
    and 4 output channels a group: each packed output channel holds 8 x 9 weights. The packed
    weights' buffer was sized by the transposed weight's rows (4 x 9), and the packing wrote past
    it (a corrupted heap on AVX-512, where these groups share a vector)."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((64, 4, 3, 3)).astype(dtype)
    gy = rng.standard_normal((2, 64, 14, 14)).astype(dtype)
    spec = conv2d_input_spec((2, 32, 14, 14), w, gy, 1, 1, 1, 8)
    assert _outer.applies(spec) and spec.in_per_group > spec.out_per_group
    pack = _outer.group_pack(spec)
    need = -(-spec.groups // pack) * pack * spec.out_per_group * spec.in_per_group * 9
    sentinel = np.full(need + 256, 7.0, dtype)
    _outer.packed_finite_weight(w, spec.groups, pack, sentinel, transposed=True)
    assert (sentinel[need:] == 7.0).all()  # nothing written past the packed weights
    made = []
    real = _scratch.reused
    monkeypatch.setattr(_scratch, "reused", lambda key, make: made.append(real(key, make)) or made[-1])
    x = np.empty((2, 32, 14, 14), dtype)
    _outer.outer_forward(gy, w, np.zeros(32, dtype), x, spec, transposed_weight=True)
    assert made[0][0].size >= need
    np.testing.assert_allclose(x, conv2d_input_reference((2, 32, 14, 14), w, gy, 1, 1, 1, 8),
                               rtol=1e-4 if dtype == np.float32 else 1e-10, atol=1e-3 if dtype == np.float32 else 1e-10)
