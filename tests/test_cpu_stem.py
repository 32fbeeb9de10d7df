"""Dense layers on a few input channels from phase-split input rows (``nbconv.cpu._stem``): every
size a run-time value; checked against the reference (strides, dilations, asymmetric and 'same'
padding, non-square kernels) and bit for bit against the columns' kernel (``_im2col``, the same
sums), streamed or not."""

from __future__ import annotations

import numpy as np
import pytest
from cases import Case, at_each_thread_count, check_non_finite_forward, check_path_forward, random_arrays
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from reference import assert_conv_close

import nbconv
from nbconv._spec import conv2d_spec
from nbconv.cpu import _im2col, _launch, _pointwise, _stem

#: Output columns of one wide block of float32 pixels for this machine's target (16 with AVX2's
#: 8 lanes and 2 vectors, 64 with AVX-512's 16 lanes and 4): the stem takes rows at least that
#: wide (``_stem.applies``), so the cases' widths are set from it, each row a wide block and 3
#: columns more (``OW``).
WIDE = _stem._N_PV * _pointwise.vector_lanes(np.float32)
OW = WIDE + 3

STEM_CASES = [
    Case(2, 3, (37, 2 * OW - 1), 16, (3, 3), 2, 1),  # MobileNetV2's stem, small
    Case(1, 3, (40, 2 * OW - 1), 8, (7, 7), 2, 3),  # ResNet's stem: 147 terms, 8 outputs (a block moved back)
    Case(2, 2, (20, 2 * OW - 1), 6, (3, 5), (1, 2), ((2, 0), (1, 3)), (2, 1)),  # mixed stride, dilation, padding
    Case(1, 4, (21, OW), 13, (3, 3), 1, "same", 2),  # 'same' with a dilation
    Case(3, 1, (12, 3 * OW - 3), 7, (1, 4), 3, (0, 2), 1, 1, False),  # one input channel, stride 3, no bias
    Case(1, 3, (34, 2 * OW), 12, (4, 4), 2, 1),  # an even kernel at stride 2
]


@pytest.mark.parametrize("case", STEM_CASES, ids=str)
def test_the_cases_take_the_stem(case):
    for dtype in (np.float32, np.float64):
        x, w, b = random_arrays(case, dtype)
        spec = conv2d_spec(x, w, b, **case.conv_args())
        assert spec.out_size[1] == OW
        assert _stem.applies(spec)


def test_a_layer_it_does_not_take_is_refused():
    """Rows narrower than a wide block would be written past: a ValueError, nothing written."""
    x, w, b = random_arrays(Case(1, 3, (9, WIDE), 8, (3, 3), 2, 1), np.float32)
    spec = conv2d_spec(x, w, b, stride=2, padding=1)
    out = np.full(spec.output_shape, 7.0, np.float32)
    with pytest.raises(ValueError, match="does not take"):
        _stem.stem_forward(x, w, b, out, spec)
    assert (out == 7.0).all()


@pytest.mark.parametrize("case,dtype", [(c, d) for c in STEM_CASES for d in (np.float32, np.float64)], ids=str)
def test_stem_forward(case, dtype):
    check_path_forward(_stem.applies, _stem.stem_forward, case, dtype)


@pytest.mark.parametrize("case", STEM_CASES, ids=str)
def test_the_same_bits_as_the_columns(case):
    """Each output is the bias plus its terms in the weight's order, as by ``_im2col``'s blocks."""
    x, w, b = random_arrays(case, np.float32)
    b = np.zeros(case.c_out, np.float32) if b is None else b
    spec = conv2d_spec(x, w, b, **case.conv_args())
    assert _stem.applies(spec)
    rows, columns = np.empty(spec.output_shape, np.float32), np.empty(spec.output_shape, np.float32)
    _stem.stem_forward(x, w, b, rows, spec)
    _im2col.im2col_forward(x, w, b, columns, spec)
    np.testing.assert_array_equal(rows, columns)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("offset", [0, 4])
def test_streamed_stems_give_the_same_bits(dtype, offset, monkeypatch):
    """A result of ``STREAM_BYTES`` or more whose rows are whole cache lines from a line's start
    (``offset`` 0) is written with streaming stores, one that starts mid-line is not: the same
    bits either way."""
    x, w, b = random_arrays(Case(2, 3, (64, 2 * max(WIDE, 32)), 8, (3, 3), 2, 1), dtype)
    spec = conv2d_spec(x, w, b, stride=2, padding=1)
    n_out = int(np.prod(spec.output_shape))
    buf = np.empty(n_out + 32, dtype)
    start = (-(buf.ctypes.data // x.itemsize)) % (64 // x.itemsize) + offset
    streamed = buf[start:start + n_out].reshape(spec.output_shape)
    plain = np.empty(spec.output_shape, dtype)
    decided = []
    real = _pointwise.streams_whole_rows
    monkeypatch.setattr(_pointwise, "streams_whole_rows", lambda out: decided.append(real(out)) or decided[-1])
    monkeypatch.setattr(_pointwise, "STREAM_BYTES", 0)
    _stem.stem_forward(x, w, b, streamed, spec)
    monkeypatch.setattr(_pointwise, "STREAM_BYTES", 1 << 62)
    _stem.stem_forward(x, w, b, plain, spec)
    assert decided == [offset == 0, False]
    np.testing.assert_array_equal(streamed, plain)
    assert_conv_close(streamed, x, w, b, stride=2, padding=1)


@pytest.mark.parametrize("c_out", range(_stem._N_O, 70))
def test_channel_blocks_cover_every_output_once_but_at_most_one(c_out):
    """The wide blocks from channel 0, the narrow ones after them, each kind's last moved back to
    end at ``c_out`` (the kernel's ``block_start``): every output in a block, at most one in two
    (16 = 6 + 6 + 4, 32 = 4 x 6 + 2 x 4)."""
    n_wide, n_narrow = _stem.channel_blocks(c_out)
    hits = np.zeros(c_out, int)
    for ob in range(n_wide + n_narrow):
        start = _stem.block_start(ob, n_wide, c_out)
        width = _stem._N_O if ob < n_wide else _stem.NARROW_O
        assert start >= 0
        hits[start:start + width] += 1
    assert hits.min() == 1 and (hits > 1).sum() <= 1
    assert {16: (2, 1), 32: (4, 2), 24: (4, 0), 64: (10, 1)}.get(c_out, (n_wide, n_narrow)) == (n_wide, n_narrow)


def test_the_launcher_takes_it_for_stems_but_patches():
    x = np.zeros((2, 3, 64, 2 * max(WIDE, 32)), np.float32)
    for k, stride, pad in ((3, 2, 1), (7, 2, 3), (5, 1, 2)):
        assert _launch.forward_kernel(conv2d_spec(x, np.zeros((16, 3, k, k), np.float32), None, stride, pad)) == "stem"
    patches = conv2d_spec(x, np.zeros((96, 3, 4, 4), np.float32), None, 4)  # ConvNeXt's stem
    assert _launch.forward_kernel(patches) == "im2col"
    five = conv2d_spec(np.zeros((2, 5, 64, 2 * max(WIDE, 32)), np.float32), np.zeros((16, 5, 3, 3), np.float32),
                       None, 2, 1)
    assert _launch.forward_kernel(five) != "stem"  # more input channels than MAX_IN_CHANNELS
    narrow = conv2d_spec(np.zeros((2, 3, 16, 16), np.float32), np.zeros((16, 3, 3, 3), np.float32), None, 2, 1)
    assert not _stem.applies(narrow)  # rows of 8 outputs: under one wide block of pixels (16 or 64)
    few = conv2d_spec(x, np.zeros((4, 3, 3, 3), np.float32), None, 2, 1)
    assert not _stem.applies(few)  # fewer outputs than a block


def test_non_finite_inputs_spread_as_in_the_reference():
    case = Case(1, 3, (21, 2 * OW), 8, (3, 3), 2, 1)
    for value in (np.inf, np.nan):
        check_non_finite_forward(_stem.stem_forward, case, [(0, 0, 0, 0), (0, 2, 20, 2 * OW - 1), (0, 1, 10, 17)],
                                 value)


def test_results_do_not_depend_on_the_thread_count():
    x, w, b = random_arrays(Case(3, 3, (45, 2 * OW + 1), 10, (3, 3), 2, 1), np.float32)
    assert _launch.forward_kernel(conv2d_spec(x, w, b, stride=2, padding=1)) == "stem"
    one, two = at_each_thread_count(lambda: nbconv.conv2d(x, w, b, stride=2, padding=1))
    np.testing.assert_array_equal(one, two)


def test_reads_non_contiguous_and_read_only_inputs():
    x, w, b = random_arrays(Case(2, 3, (36, 2 * OW), 8, (3, 3), 2, 1), np.float64)
    assert _launch.forward_kernel(conv2d_spec(x, w, b, stride=2, padding=1)) == "stem"
    want = nbconv.conv2d(x, w, b, stride=2, padding=1)
    strided = np.zeros((2, 3, 36, 4 * OW))
    strided[..., ::2] = x
    x_view = strided[..., ::2]
    x_view.flags.writeable = False
    got = nbconv.conv2d(x_view, w, b, stride=2, padding=1)
    np.testing.assert_array_equal(got, want)
    assert np.array_equal(strided[..., ::2], x)  # nothing written


def test_an_empty_batch_runs_nothing():
    w = np.ones((8, 3, 3, 3), np.float32)
    out = nbconv.conv2d(np.zeros((0, 3, 40, 40), np.float32), w, stride=2, padding=1)
    assert out.shape == (0, 8, 20, 20)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 2), c=st.integers(1, 4), c_out=st.integers(6, 20), h=st.integers(1, 24),
       w=st.integers(WIDE, 3 * WIDE + 12), kh=st.integers(1, 5), kw=st.integers(1, 5), sh=st.integers(1, 3),
       sw=st.integers(1, 3), dh=st.integers(1, 2), dw=st.integers(1, 2), pad=st.integers(0, 3))
def test_property_against_the_reference(n, c, c_out, h, w, kh, kw, sh, sw, dh, dw, pad):
    assume((h + 2 * pad - dh * (kh - 1) - 1) >= 0 and (w + 2 * pad - dw * (kw - 1) - 1) >= 0)
    case = Case(n, c, (h, w), c_out, (kh, kw), (sh, sw), pad, (dh, dw))
    x, wt, b = random_arrays(case, np.float32)
    spec = conv2d_spec(x, wt, b, **case.conv_args())
    assume(_stem.applies(spec))
    out = np.full(spec.output_shape, np.nan, np.float32)
    _stem.stem_forward(x, wt, b, out, spec)
    assert_conv_close(out, x, wt, b, **case.conv_args())


def test_a_new_geometry_compiles_nothing():
    before = None
    for hw, n, k in (((40, 2 * OW + 1), 2, 7), ((33, 2 * OW + 10), 1, 3), ((50, 2 * OW + 5), 3, 5)):
        case = Case(n, 3, hw, 8, (k, k), 2, k // 2)
        x, w, b = random_arrays(case, np.float32)
        spec = conv2d_spec(x, w, b, **case.conv_args())
        assert _launch.forward_kernel(spec) == "stem"
        assert_conv_close(nbconv.conv2d(x, w, b, **case.conv_args()), x, w, b, **case.conv_args())
        if before is None:
            before = len(_stem._forward.signatures)
    assert len(_stem._forward.signatures) == before
