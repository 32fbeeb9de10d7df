"""The depthwise CPU kernel compiled once per kernel size, stride and dilation
(``nbconv.cpu._depthwise``): every size is a run-time value, so each size feature (narrow rows
under one vector, fewer rows than a block, the last block moved up, the last vector moved left,
strides of 1, 2 and 3, dilations, asymmetric padding, channel multipliers) is checked against the
reference, and so is the claim that a new geometry of one kind compiles nothing."""

from __future__ import annotations

import dataclasses
import sys

import numba
import numpy as np
import pytest
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
from reference import assert_conv_close, conv2d_input_reference, conv2d_reference

import nbconv
import nbconv.grad
from nbconv._spec import conv2d_input_spec, conv2d_spec
from nbconv.cpu import _depthwise, _launch, _pointwise, _rowblock, _simd
from nbconv.cpu._target import target

#: the small cases here must reach the kernel (``MIN_GENERATED_MACS``)
pytestmark = pytest.mark.usefixtures("generated_for_small_calls")

LANES32 = target().vector_bits // 32

DEPTHWISE_CASES = [
    Case(2, 3, (20, 17), 3, (3, 3), 1, 1, 1, 3),  # OH = 20: five blocks; OW = 17: last vector moved left
    Case(2, 2, (22, 33), 6, (3, 3), 1, "same", 1, 2),  # multiplier 3, last row block moved up
    Case(1, 4, (3, 40), 4, (3, 3), 1, 1, 1, 4),  # OH = 3: fewer rows than a block
    Case(2, 2, (37, 41), 2, (3, 3), 2, 1, 1, 2),  # stride 2: phase planes
    Case(2, 2, (30, 35), 2, (3, 3), (1, 2), (0, 2), (2, 1), 2),  # mixed stride, padding, dilation
    Case(2, 2, (19, 24), 4, (5, 5), 1, 2, 1, 2, False),  # 5x5, multiplier 2, no bias
    Case(2, 2, (16, 24), 2, (7, 7), 1, "valid", 1, 2),  # 7x7 'valid'
    Case(2, 2, (30, 40), 2, (5, 7), 2, (2, 3), 1, 2),  # 5x7 at stride 2
    Case(2, 2, (18, 22), 2, (2, 5), 1, "same", 1, 2),  # even kernel: far-side pad
    Case(3, 2, (12, 18), 2, (1, 1), 1, 0, 1, 2),  # 1x1 depthwise
    Case(2, 5, (7, 7), 5, (3, 3), 1, 1, 1, 5),  # 7-wide rows: under one vector, stores spill into the next row
    Case(2, 3, (9, 1), 3, (3, 1), 1, (1, 0), 1, 3),  # one column
    Case(2, 3, (5, 11), 6, (3, 3), 3, 1, 1, 3),  # stride 3: columns copied element by element
    Case(1, 2, (14, 14), 2, (3, 3), 2, 1, 1, 2),  # MobileNetV2's 14 -> 7 at stride 2
    Case(1, 3, (1, 1), 3, (3, 3), 1, 1, 1, 3),  # one pixel, all but the centre tap padding
    Case(2, 2, (13, 6), 4, (3, 5), (2, 1), (1, 3), (1, 2), 2),  # row stride 2 read where it lies: padding wider than the row
    Case(2, 2, (11, 9), 4, (5, 5), 1, 2, 1, 2),  # OH = 11: blocks of SMALL_ROWS, the last moved up
]


@pytest.mark.parametrize("case,dtype", [(c, np.float64) for c in DEPTHWISE_CASES]
                         + [(c, np.float32) for c in DEPTHWISE_CASES[:4] + DEPTHWISE_CASES[10:11]], ids=str)
def test_depthwise_forward(case, dtype):
    check_path_forward(_depthwise.applies, _depthwise.depthwise_forward, case, dtype)


@pytest.mark.parametrize("padding", [3, 4])
def test_cropping_through_the_input_gradient(padding):
    """The input gradient of a stride-1 depthwise layer padded by more than ``k - 1`` is a
    convolution with negative padding: its first rows and columns are cropped."""
    case = Case(2, 3, (9, 11), 3, (3, 3), 1, padding, 1, 3)
    x, w, _ = random_arrays(case, np.float64)
    gy = np.random.default_rng(1).standard_normal(conv2d_reference(x, w, None, padding=padding, groups=3).shape)
    spec = conv2d_input_spec(x.shape, w, gy, padding=padding, groups=3)
    assert min(spec.padding) < 0 and _launch.forward_kernel(spec) == "depthwise"
    np.testing.assert_allclose(nbconv.grad.conv2d_input(x.shape, w, gy, padding=padding, groups=3),
                               conv2d_input_reference(x.shape, w, gy, padding=padding, groups=3), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("direct", [False, True])
@pytest.mark.parametrize("case", [c for c in DEPTHWISE_CASES if c.stride in (1, (2, 1))], ids=str)
def test_both_reads_give_the_same_bits(case, direct, monkeypatch):
    """Reading the input where it lies (masked loads for the padding, column stride 1) and
    packing it first: the reference's values, and the same bits."""
    x, w, b = random_arrays(case, np.float32)
    spec = conv2d_spec(x, w, b, **case.conv_args())
    b = np.zeros(case.c_out, np.float32) if b is None else b
    monkeypatch.setattr(_depthwise, "reads_directly", lambda spec, lanes: direct)
    got = np.full(spec.output_shape, np.nan, np.float32)
    _depthwise.depthwise_forward(x, w, b, got, spec)
    assert_conv_close(got, x, w, b, **case.conv_args())
    monkeypatch.setattr(_depthwise, "reads_directly", lambda spec, lanes: not direct)
    other = np.full(spec.output_shape, np.nan, np.float32)
    _depthwise.depthwise_forward(x, w, b, other, spec)
    np.testing.assert_array_equal(got, other)


def test_small_planes_take_blocks_of_small_rows():
    """Planes of 7 to 14 output rows take blocks of ``SMALL_ROWS`` (the driver's branch is in
    the source, with its bounds), the others blocks of ``ROWS``."""
    source = _depthwise.module_source((3, 3), (1, 1), (1, 1))
    lo, hi = _depthwise.SMALL_PLANE_ROWS.start, _depthwise.SMALL_PLANE_ROWS.stop - 1
    assert f"elif {lo} <= oh <= {hi}:" in source and f"range(0, oh, {_depthwise.SMALL_ROWS})" in source
    assert _depthwise.ROWS <= lo and _depthwise.SMALL_ROWS <= lo


def test_the_launcher_takes_it_for_depthwise_layers():
    """3x3 at stride 1 on outputs over 14 wide, and what ``_depthwise_lanes`` does not take
    (channel multipliers, cropping); the rest goes to ``_depthwise_lanes``
    (``test_cpu_depthwise_lanes.py``)."""
    x, w, b = random_arrays(Case(2, 32, (28, 28), 32, (3, 3), 2, 1, 1, 32), np.float32)
    assert _launch.forward_kernel(conv2d_spec(x, w, b, stride=1, padding=1, groups=32)) == "depthwise"
    multiplier = np.ones((64, 1, 5, 5), np.float32)
    assert _launch.forward_kernel(conv2d_spec(x, multiplier, None, stride=2, padding=2, groups=32)) == "depthwise"
    dense = conv2d_spec(x, np.ones((32, 32, 3, 3), np.float32), None, padding=1)
    assert _launch.forward_kernel(dense) != "depthwise"


def test_applies_only_where_it_computes():
    x, w, b = random_arrays(Case(1, 4, (9, 9), 4, (3, 3), 1, 1, 1, 4), np.float64)
    assert _depthwise.applies(conv2d_spec(x, w, b, padding=1, groups=4))
    assert not _depthwise.applies(dataclasses.replace(conv2d_spec(x, w, b, padding=1, groups=4), lhs_dilation=(2, 2)))
    assert not _depthwise.applies(conv2d_spec(x[:0], w, b, padding=1, groups=4))
    assert not _depthwise.applies(conv2d_spec(x, np.ones((4, 2, 3, 3)), None, padding=1, groups=2))


@pytest.mark.parametrize("case", [DEPTHWISE_CASES[0], DEPTHWISE_CASES[3], DEPTHWISE_CASES[10]], ids=str)
def test_non_finite_inputs_spread_as_in_the_reference(case):
    """The padding's zeros are zeros, and a row's excess lanes land on rows stored after it:
    no inf or NaN reaches an output that does not read it."""
    h, w = case.hw
    pixels = [(0, 0, 0, 0), (1, case.c_in - 1, h - 1, w - 1), (0, 1, h // 2, w // 2)]
    for value in (np.inf, np.nan):
        check_non_finite_forward(_depthwise.depthwise_forward, case, pixels, value)


@pytest.mark.parametrize("case", [DEPTHWISE_CASES[0], DEPTHWISE_CASES[3], DEPTHWISE_CASES[10]], ids=str)
def test_results_do_not_depend_on_the_thread_count(case):
    x, w, b = random_arrays(case, np.float32)
    one, two = at_each_thread_count(lambda: nbconv.conv2d(x, w, b, **case.conv_args()))
    np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("case", [DEPTHWISE_CASES[0], DEPTHWISE_CASES[1], DEPTHWISE_CASES[10]], ids=str)
def test_same_bits_as_the_kernels_generated_per_geometry(case):
    """At stride 1 every kernel sums bias + taps in kernel order with fused multiply-adds, so
    this kernel gives the bits ``_rowblock`` gives (and ``_depthwise_lanes``: its tests)."""
    x, w, b = random_arrays(case, np.float32)
    spec = conv2d_spec(x, w, b, **case.conv_args())
    ours = np.empty(spec.output_shape, np.float32)
    _depthwise.depthwise_forward(x, w, b, ours, spec)
    for module in (_rowblock,):
        if module.applies(spec):
            theirs = np.empty_like(ours)
            module.depthwise_forward(x, w, b, theirs, spec)
            np.testing.assert_array_equal(ours, theirs, err_msg=module.__name__)


def test_a_new_geometry_of_one_kind_compiles_nothing():
    """Other batch, channels, image size and padding, the same kernel size, stride, dilation and
    dtype: the one compiled kernel runs it."""
    forward = _depthwise._module((3, 3), (1, 1), (1, 1)).forward
    for n, c, hw, pad in [(2, 3, (20, 17), 1), (1, 5, (33, 9), 1), (3, 2, (12, 40), (1, 0))]:
        x, w, b = random_arrays(Case(n, c, hw, c, (3, 3), 1, pad, 1, c), np.float32)
        got = nbconv.conv2d(x, w, b, padding=pad, groups=c)
        assert_conv_close(got, x, w, b, padding=pad, groups=c)
        if n == 2:
            compiled = len(forward.signatures)
    assert len(forward.signatures) == compiled


def test_reused_scratch_keeps_its_padding_zeros():
    """Only pixels are packed: a second call with other values reads zeros in the padding."""
    case = DEPTHWISE_CASES[10]
    for seed in (1, 2):
        x, w, b = random_arrays(case, np.float32, seed)
        assert_conv_close(nbconv.conv2d(x * 100, w, b, **case.conv_args()), x * 100, w, b, **case.conv_args())


#: (kernel, stride, dilation) kinds the property test draws from: each kind is one compile, so a
#: few that the cases above compile anyway.
KINDS = [((3, 3), (1, 1), (1, 1)), ((3, 3), (2, 2), (1, 1)), ((5, 7), (2, 2), (1, 1)), ((3, 3), (1, 2), (2, 1))]


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 3), mult=st.integers(1, 3), h=st.integers(1, 24), w=st.integers(1, 40),
       kind=st.sampled_from(KINDS), p=st.tuples(st.integers(0, 3), st.integers(0, 3)))
def test_property_against_the_reference(n, c, mult, h, w, kind, p):
    k, s, d = kind
    if any((size + 2 * pad - dil * (kk - 1) - 1) < 0 for size, pad, dil, kk in zip((h, w), p, d, k)):
        return  # no output
    check_path_forward(_depthwise.applies, _depthwise.depthwise_forward, Case(n, c, (h, w), c * mult, k, s, p, d, c),
                       np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("step", [1, 2, 4])
def test_copy_span_copies_exactly_and_zeros_one_vector_past(step, dtype):
    """Each copy reads nothing past its last element (the source ends there, at a page that
    cannot be read, on Linux) and writes zeros at most a vector minus one past its results."""
    copy = _simd.copy_span(step)
    lanes = _pointwise.vector_lanes(dtype)

    @numba.njit
    def run(src, s0, dst, d0, n):
        copy(src, s0, dst, d0, n)

    for n in range(3 * lanes + 2):
        size = 3 + step * (n - 1) + 1 if n else 3
        if sys.platform == "linux":
            src = ending_at_a_guard_page(size, dtype)
            src[:] = np.arange(1, size + 1)
        else:
            src = np.arange(1, size + 1, dtype=dtype)
        dst = np.full(4 * lanes + 8, -1, dtype)
        run(src, 3, dst, 2, n)
        np.testing.assert_array_equal(dst[2:2 + n], src[3:3 + step * n:step])
        past = dst[2 + n:]
        touched = past[past != -1]
        assert (touched == 0).all() and len(touched) < lanes, (n, past)
        assert (dst[:2] == -1).all()


def test_copy_span_takes_steps_of_one_two_or_four():
    with pytest.raises(ValueError, match="steps of 1, 2 or 4"):
        _simd.copy_span(3)


def test_pack_plane_lays_out_phase_planes():
    """Padded pixel (r, c) at phase ((r % sH) * sW + c % sW), position (r // sH, c // sW)."""
    rng = np.random.default_rng(0)
    h, w, sh, sw, pt, pl = 7, 11, 2, 3, 1, 2
    hc, wc = 5, 6
    plane = hc * wc + LANES32
    x = rng.standard_normal(h * w)
    xs = np.zeros(sh * sw * plane + LANES32)
    _depthwise.pack_plane(x, 0, h, w, xs, sh, sw, pt, pl, hc, wc, plane)
    padded = np.zeros((hc * sh, wc * sw))
    padded[pt:pt + h, pl:pl + w] = x.reshape(h, w)[: hc * sh - pt, : wc * sw - pl]
    for r in range(hc * sh):
        for c in range(wc * sw):
            assert xs[((r % sh) * sw + c % sw) * plane + (r // sh) * wc + c // sw] == padded[r, c]


@pytest.mark.asm
def test_rows_compile_to_fmas_at_the_target_width_without_spills():
    """A 3x3 block of ``ROWS`` rows is ``9 * ROWS`` packed FMAs on the target's widest registers
    (LLVM may share them between the loop over column vectors and a row under one vector), none
    spilled, with streaming stores in the loop that takes them."""
    from asm import compiled_body, packed_fmas, skip_without_fma, spills

    skip_without_fma()
    rows = _depthwise.depthwise_rows(_depthwise.tap_reads((3, 3), (1, 1), (1, 1)), _depthwise.ROWS,
                                     target().vector_bits, _depthwise.keeps_weights(9, _depthwise.ROWS))

    @numba.njit(cache=False)
    def run(xs, w, out, ow):
        rows(xs, 0, 40, 400, w, 0, np.float32(1), out, 0, 64, ow, 0, 0, 0, 1)  # rows of whole zmm vectors

    f32 = numba.types.float32[::1]
    run.compile((f32, f32, f32, numba.types.int64))  # compiled, not run: the target may not be this CPU
    asm = compiled_body(run.inspect_asm(run.signatures[0]))
    bits = target().vector_bits
    assert packed_fmas(asm, bits) >= 9 * _depthwise.ROWS
    assert not spills(asm, bits), spills(asm, bits)[:3]
    assert "vmovntps" in asm  # the whole vectors' streaming stores (their own copy of the loop)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k, stride, side, mult", [(3, 1, 64, 1), (3, 2, 128, 2), (5, 1, 32, 1), (3, 1, 13, 1)])
def test_streamed_rows_give_the_same_bits(k, stride, side, mult, dtype, monkeypatch):
    """A result of ``_pointwise.STREAM_BYTES`` or more whose rows are whole cache lines is written
    with streaming stores (:func:`_pointwise.streams_whole_rows`): the same bits as with plain
    stores, and the reference's numbers; a result whose rows are not whole lines is not
    streamed."""
    rng = np.random.default_rng(side + k)
    c = 3
    x = rng.standard_normal((2, c, side, side)).astype(dtype)
    w = rng.standard_normal((c * mult, 1, k, k)).astype(dtype)
    b = rng.standard_normal(c * mult).astype(dtype)
    spec = conv2d_spec(x, w, b, stride=stride, padding=k // 2, groups=c)
    assert _launch.direct_forward_kernel(spec) in ("depthwise", "depthwise_lanes")
    out_shape = spec.output_shape
    n_out = int(np.prod(out_shape))
    buf = np.empty(n_out + 16, dtype)
    start = (-(buf.ctypes.data // x.itemsize)) % (64 // x.itemsize)
    streamed = buf[start:start + n_out].reshape(out_shape)
    plain = np.empty(out_shape, dtype)
    decided = []
    real = _pointwise.streams_whole_rows
    monkeypatch.setattr(_pointwise, "streams_whole_rows", lambda out: decided.append(real(out)) or decided[-1])
    monkeypatch.setattr(_pointwise, "STREAM_BYTES", 0)
    _depthwise.depthwise_forward(x, w, b, streamed, spec)
    monkeypatch.setattr(_pointwise, "STREAM_BYTES", 1 << 62)
    _depthwise.depthwise_forward(x, w, b, plain, spec)
    assert decided == [(out_shape[3] * x.itemsize) % 64 == 0, False]
    np.testing.assert_array_equal(streamed, plain)
    assert_conv_close(streamed, x, w, b, stride=stride, padding=k // 2, groups=c)


def test_streams_only_rows_of_whole_lines_from_a_line(monkeypatch):
    monkeypatch.setattr(_pointwise, "STREAM_BYTES", 4 * 16 * 32 * 4)
    buf = np.empty(4 * 16 * 32 + 32, np.float32)
    start = (-(buf.ctypes.data // 4)) % 16
    assert _pointwise.streams_whole_rows(buf[start:start + 4 * 16 * 32].reshape(1, 4, 16, 32))
    assert not _pointwise.streams_whole_rows(buf[start + 4:start + 4 + 4 * 16 * 32].reshape(1, 4, 16, 32))  # mid-line
    assert not _pointwise.streams_whole_rows(buf[start:start + 4 * 16 * 24].reshape(1, 4, 16, 24))  # rows of 1.5 lines
    assert not _pointwise.streams_whole_rows(buf[start:start + 4 * 4 * 32].reshape(1, 4, 4, 32))  # under STREAM_BYTES
