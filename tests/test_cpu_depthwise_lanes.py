"""The depthwise CPU kernel with channels in the vector lanes (``nbconv.cpu._depthwise_lanes``):
every size is a run-time value, so each size feature (planes narrower than a block of
``COLS`` pixels, the last block moved left, a last channel block with fewer channels than lanes,
rows narrower and wider than a vector for the transposes, planes of fewer pixels than lanes,
strides, dilations, asymmetric padding, even kernels) is checked against the reference, and
against ``_depthwise``, which sums in the same order (same bits)."""

from __future__ import annotations

import dataclasses

import numba
import numpy as np
import pytest
from cases import (
    Case,
    at_each_thread_count,
    check_non_finite_forward,
    check_path_forward,
    random_arrays,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import assert_conv_close

import nbconv
from nbconv._spec import conv2d_spec
from nbconv.cpu import _depthwise, _depthwise_lanes, _launch
from nbconv.cpu._target import target

#: the small cases here must reach the kernel (``MIN_GENERATED_MACS``)
pytestmark = pytest.mark.usefixtures("generated_for_small_calls")

LANES32 = target().vector_bits // 32
COLS = _depthwise_lanes.COLS

LANES_CASES = [
    Case(2, LANES32 + 3, (7, 7), LANES32 + 3, (7, 7), 1, 3, 1, LANES32 + 3),  # ConvNeXt's 7 x 7 planes; a partial block
    Case(1, 5, (5, 4), 5, (5, 5), 1, 2, 1, 5),  # 20 pixels: fewer columns than a block, rows under a vector
    Case(2, 3, (3, 2), 3, (5, 5), 1, 2, 1, 3, False),  # 6 pixels: fewer than the lanes (masked stores)
    Case(1, 2, (9, 2 * COLS + 3), 2, (5, 5), 1, 2, 1, 2),  # the last block moves left
    Case(2, 4, (17, 40), 4, (3, 3), 2, 1, 1, 4),  # stride 2, rows over a vector
    Case(2, 3, (15, 19), 3, (5, 7), (2, 1), (1, 3), (2, 1), 3),  # mixed stride, dilation, padding
    Case(1, 3, (12, 13), 3, (2, 5), 1, "same", 1, 3),  # even kernel: the far side padded more
    Case(2, 2, (11, 12), 2, (5, 5), 3, "valid", 1, 2),  # stride 3, no padding
    Case(1, 2, (1, 1), 2, (5, 5), 1, 2, 1, 2),  # one pixel, all but the centre tap padding
    Case(1, 2, (6, 9), 2, (7, 7), 1, ((3, 1), (0, 4)), 1, 2),  # per-side padding
]


@pytest.mark.parametrize("case,dtype", [(c, np.float64) for c in LANES_CASES]
                         + [(c, np.float32) for c in LANES_CASES[:3]], ids=str)
def test_forward_against_the_reference(case, dtype):
    check_path_forward(_depthwise_lanes.applies, _depthwise_lanes.depthwise_forward, case, dtype)


@pytest.mark.parametrize("case", LANES_CASES[:6], ids=str)
def test_same_bits_as_the_size_generic_depthwise_kernel(case):
    """Both sum bias + taps in kernel order with fused multiply-adds, so the choice between them
    never changes a result."""
    x, w, b = random_arrays(case, np.float32)
    b = np.zeros(case.c_out, np.float32) if b is None else b
    spec = conv2d_spec(x, w, b, **case.conv_args())
    ours, theirs = np.empty(spec.output_shape, np.float32), np.empty(spec.output_shape, np.float32)
    _depthwise_lanes.depthwise_forward(x, w, b, ours, spec)
    _depthwise.depthwise_forward(x, w, b, theirs, spec)
    np.testing.assert_array_equal(ours, theirs)


def test_the_launcher_takes_it_for_wide_kernels_and_strides():
    x, w, b = random_arrays(Case(2, 32, (28, 28), 32, (7, 7), 1, 3, 1, 32), np.float32)
    assert _launch.forward_kernel(conv2d_spec(x, w, b, padding=3, groups=32)) == "depthwise_lanes"
    w3 = w[:, :, :3, :3].copy()
    assert _launch.forward_kernel(conv2d_spec(x, w3, b, stride=2, padding=1, groups=32)) == "depthwise_lanes"
    assert _launch.forward_kernel(conv2d_spec(x, w3, b, padding=1, groups=32)) == "depthwise"
    assert _launch.forward_kernel(conv2d_spec(x[:, :, :14, :14], w3, b, padding=1, groups=32)) == "depthwise_lanes"


def test_compiled_once_per_kind_so_taken_from_a_smaller_size_than_per_geometry_kernels(monkeypatch):
    """The launcher's thresholds as they ship (this module otherwise sets them to 0): ShuffleNetV2's
    232-channel 3x3 layer at stride 2 on 14 x 14, batch 2 (2 x 10^5 multiply-adds, under
    ``MIN_GENERATED_MACS``), takes this kernel; a tiny call keeps the packed kernel."""
    monkeypatch.undo()
    assert _launch.MIN_KIND_MACS < _launch.MIN_GENERATED_MACS
    x, w, b = random_arrays(Case(2, 232, (14, 14), 232, (3, 3), 2, 1, 1, 232), np.float32)
    spec = conv2d_spec(x, w, b, stride=2, padding=1, groups=232)
    assert not _launch.worth_generating(spec) and _launch.forward_kernel(spec) == "depthwise_lanes"
    tiny = conv2d_spec(x[:1, :16, :4, :4], w[:16], b[:16], padding=1, groups=16)
    assert _launch.forward_kernel(tiny) == "packed"


def test_applies_only_where_it_computes():
    x, w, b = random_arrays(Case(1, 4, (9, 9), 4, (5, 5), 1, 2, 1, 4), np.float64)
    spec = conv2d_spec(x, w, b, padding=2, groups=4)
    assert _depthwise_lanes.applies(spec)
    assert not _depthwise_lanes.applies(dataclasses.replace(spec, lhs_dilation=(2, 2)))
    assert not _depthwise_lanes.applies(conv2d_spec(x[:0], w, b, padding=2, groups=4))
    assert not _depthwise_lanes.applies(conv2d_spec(x, np.ones((8, 1, 5, 5)), None, padding=2, groups=4))  # multiplier
    assert not _depthwise_lanes.applies(dataclasses.replace(spec, padding=(-1, 2, 2, 2)))  # cropping
    assert not _depthwise_lanes.applies(dataclasses.replace(spec, in_size=(4000, 4000), out_size=(4000, 4000)))


@pytest.mark.parametrize("case", [LANES_CASES[0], LANES_CASES[2], LANES_CASES[5]], ids=str)
def test_non_finite_inputs_spread_as_in_the_reference(case):
    """The padding's zeros are zeros, and the lanes past the last channel (a copy of it, with
    zero weights) are never stored: no inf or NaN reaches an output that does not read it."""
    h, w = case.hw
    pixels = [(0, 0, 0, 0), (case.n - 1, case.c_in - 1, h - 1, w - 1), (0, 1, h // 2, w // 2)]
    for value in (np.inf, np.nan):
        check_non_finite_forward(_depthwise_lanes.depthwise_forward, case, pixels, value)


def test_results_do_not_depend_on_the_thread_count():
    case = LANES_CASES[0]
    x, w, b = random_arrays(case, np.float32)
    one, two = at_each_thread_count(lambda: nbconv.conv2d(x, w, b, **case.conv_args()))
    np.testing.assert_array_equal(one, two)


def test_a_new_geometry_of_one_kind_compiles_nothing():
    """Other batch, channels, image size and padding, the same kernel size, stride, dilation and
    dtype: the one compiled kernel runs them all."""
    forward = _depthwise_lanes._module((5, 5), (1, 1), (1, 1), 4).forward
    for n, c, hw, pad in [(2, 3, (20, 17), 2), (1, 11, (7, 7), 2), (3, 2, (12, 40), (1, 0))]:
        x, w, b = random_arrays(Case(n, c, hw, c, (5, 5), 1, pad, 1, c), np.float32)
        got = nbconv.conv2d(x, w, b, padding=pad, groups=c)
        assert_conv_close(got, x, w, b, padding=pad, groups=c)
        if n == 2:
            compiled = len(forward.signatures)
    assert len(forward.signatures) == compiled


def test_reused_scratch_keeps_its_padding_zeros():
    """Only pixels are gathered: a second call with other values reads zeros in the padding."""
    case = LANES_CASES[0]
    for seed in (1, 2):
        x, w, b = random_arrays(case, np.float32, seed)
        assert_conv_close(nbconv.conv2d(x * 100, w, b, **case.conv_args()), x * 100, w, b, **case.conv_args())


#: (kernel, stride, dilation) kinds the property test draws from: each kind is one compile.
KINDS = [((5, 5), (1, 1), (1, 1)), ((3, 3), (2, 2), (1, 1)), ((5, 7), (2, 1), (1, 2))]


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 2 * LANES32 + 1), h=st.integers(1, 20), w=st.integers(1, 30),
       kind=st.sampled_from(KINDS), p=st.tuples(st.integers(0, 3), st.integers(0, 3)))
def test_property_against_the_reference(n, c, h, w, kind, p):
    k, s, d = kind
    if any((size + 2 * pad - dil * (kk - 1) - 1) < 0 for size, pad, dil, kk in zip((h, w), p, d, k)):
        return  # no output
    check_path_forward(_depthwise_lanes.applies, _depthwise_lanes.depthwise_forward, Case(n, c, (h, w), c, k, s, p, d, c),
                       np.float64)


@pytest.mark.parametrize("valid", [LANES32, 3])
@pytest.mark.parametrize("n", [1, LANES32 - 1, LANES32, 2 * LANES32 + 3])
def test_gather_and_scatter_transpose_exactly(n, valid):
    """``gather_rows`` writes ``n`` pixel vectors and nothing past them; ``scatter_pixels``
    writes back exactly the ``valid`` rows of ``n`` pixels."""
    bits = target().vector_bits
    gather, scatter = _depthwise_lanes.gather_rows(bits), _depthwise_lanes.scatter_pixels(bits)

    @numba.njit
    def run_gather(src, s0, pitch, valid, dst, d0, n):
        gather(src, s0, pitch, valid, dst, d0, n)

    @numba.njit
    def run_scatter(src, s0, dst, d0, pitch, valid, n):
        scatter(src, s0, dst, d0, pitch, valid, n)

    lanes, pitch = LANES32, 50
    src = np.arange(1, 1 + pitch * lanes + 64, dtype=np.float32)
    pixels = np.full(3 + (n + lanes + 1) * lanes, -1, np.float32)
    run_gather(src, 2, pitch, valid, pixels, 3, n)
    rows = np.minimum(np.arange(lanes), valid - 1)
    want = src[2 + rows[None, :] * pitch + np.arange(n)[:, None]]
    np.testing.assert_array_equal(pixels[3:3 + n * lanes].reshape(n, lanes), want)
    assert (pixels[:3] == -1).all() and (pixels[3 + n * lanes:] == -1).all()
    back = np.full(5 + lanes * pitch, -1, np.float32)
    run_scatter(pixels, 3, back, 5, pitch, valid, n)
    planes = back[5:].reshape(lanes, pitch)
    np.testing.assert_array_equal(planes[:valid, :n], want[:, :valid].T)
    assert (planes[:valid, n:] == -1).all() and (planes[valid:] == -1).all() and (back[:5] == -1).all()


@pytest.mark.asm
def test_block_compiles_to_fmas_at_the_target_width_without_spills():
    """A 7x7 block of ``COLS`` pixels is ``49 * COLS`` packed FMAs on the target's widest
    registers, none spilled."""
    from asm import compiled_body, packed_fmas, skip_without_fma, spills

    skip_without_fma()
    bits = target().vector_bits
    block = _depthwise_lanes.pixel_block((7, 7), (1, 1), (1, 1), COLS, bits)

    @numba.njit(cache=False)
    def run(xs, w, out, n):
        block(xs, 0, 200, w, 0, w, 0, out, 0, n)

    f32 = numba.types.float32[::1]
    run.compile((f32, f32, f32, numba.types.int64))  # compiled, not run: the target may not be this CPU
    asm = compiled_body(run.inspect_asm(run.signatures[0]))
    assert packed_fmas(asm, bits) >= 49 * COLS
    assert not spills(asm, bits), spills(asm, bits)[:3]
