"""The pointwise (1x1) CPU kernel compiled once per dtype and target (``nbconv.cpu._pointwise``):
every size is a run-time value, so the sizes that change its blocking (output channels per group
not a multiple of the block, planes under one block of pixels or not a whole number of them,
groups) are checked against the reference, and so is the claim that a new geometry compiles
nothing."""

from __future__ import annotations

import re
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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import assert_conv_close

import nbconv
from nbconv._spec import conv2d_spec
from nbconv.cpu import _launch, _pointwise

#: every test with the kernel's own products and with the BLAS's (``conftest.products``)
pytestmark = pytest.mark.usefixtures("products")

POINTWISE_CASES = [
    Case(2, 5, (7, 9), 6, (1, 1)),  # one output block; 63 pixels: a masked last block
    Case(1, 8, (1, 1), 13, (1, 1)),  # one pixel; 13 outputs: the last block moves back
    Case(2, 12, (16, 20), 24, (1, 1), 1, 0, 1, 2),  # groups of 12 outputs
    Case(3, 4, (3, 5), 28, (1, 1), 1, 0, 1, 4, False),  # groups of 7 outputs, no bias
    Case(1, 3, (32, 32), 7, (1, 1)),  # whole blocks of pixels
    Case(2, 8, (15, 14), 12, (1, 1), 2),  # stride 2 (a downsampling shortcut): odd rows kept
    Case(1, 6, (9, 11), 12, (1, 1), (3, 2), 0, 1, 2),  # strides 3 and 2, groups of 6 outputs
    Case(2, 5, (14, 14), 30, (1, 1)),  # 196 pixels: wide blocks and a narrow last one of 4 pixels
    Case(1, 4, (7, 10), 52, (1, 1), 1, 0, 1, 2),  # 70 pixels: a narrow last block; groups of 26
    Case(1, 7, (1, 1), 50, (1, 1)),  # one pixel, one image: a masked narrow block per output chunk
    Case(6, 6, (1, 1), 50, (1, 1), 1, 0, 1, 2),  # 1 x 1 planes: the batch as the pixels, groups
    Case(3, 5, (2, 3), 24, (1, 1), 1, 0, 1, 1, False),  # 2 x 3 planes: the batch as the pixels
    Case(2, 3, (9, 75), 6, (1, 1), 2),  # stride 2 on rows of 38 outputs: vector copies of the even pixels
    Case(1, 4, (7, 34), 6, (1, 1), (1, 2)),  # column stride 2 only; rows of 17 outputs
    Case(2, 8, (9, 13), 4, (1, 1), 1, 0, 1, 2),  # groups of 2 outputs: a block of the group's size
    Case(1, 15, (7, 70), 5, (1, 1), 1, 0, 1, 5, False),  # groups of 1 output from 3 inputs
    Case(3, 10, (5, 5), 10, (1, 1), 2, 0, 1, 2),  # groups of 5 outputs, stride 2
    Case(2, 9, (1, 1), 4, (1, 1)),  # 4 outputs on 1 x 1 planes (EfficientNet's 96 -> 4)
    Case(3, 5, (7, 7), 13, (1, 1)),  # float32 7 x 7: three vectors, then the 3 images' last pixels; 13 outputs
    Case(2, 8, (7, 8), 32, (1, 1), 1, 0, 1, 2),  # 56 pixels: three vectors and 8 pixels; groups of 16
    Case(2, 6, (13, 14), 12, (1, 1), 2),  # stride 2 to 7 x 7 planes: the three vectors after the copy
    Case(4, 3, (5, 5), 9, (1, 1)),  # float64 5 x 5: three vectors of 8 and the 4 images' last pixels
]


@pytest.mark.parametrize("case,dtype", [(c, d) for c in POINTWISE_CASES for d in (np.float32, np.float64)], ids=str)
def test_pointwise_forward(case, dtype):
    check_path_forward(_pointwise.applies, _pointwise.pointwise_forward, case, dtype)


def test_every_kernel_the_launcher_names_runs():
    specs = [conv2d_spec(*random_arrays(c, np.float32), **c.conv_args()) for c in POINTWISE_CASES]
    assert {_launch.forward_kernel(s) for s in specs} <= set(_launch.FORWARDS)
    with pytest.raises(KeyError):
        _launch._run_forward("no such kernel", None, None, None, None, specs[0])


def test_the_launcher_takes_it_for_1x1_layers_only():
    x, w, b = random_arrays(Case(2, 16, (7, 7), 32, (1, 1)), np.float32)
    assert _launch.forward_kernel(conv2d_spec(x, w, b)) == "pointwise"
    assert _launch.forward_kernel(conv2d_spec(x, w, b, stride=2)) == "pointwise"
    assert _launch.forward_kernel(conv2d_spec(x, w, b, padding=1)) != "pointwise"
    assert _pointwise.applies(conv2d_spec(x, w[:4], b[:4]))  # fewer outputs than a block: a small block
    multiplier = np.ones((32, 1, 1, 1), np.float32)  # depthwise, 2 outputs per channel: the depthwise kernels
    assert not _pointwise.applies(conv2d_spec(x, multiplier, b, groups=16))
    assert not _pointwise.applies(conv2d_spec(x, np.ones((32, 16, 3, 3), np.float32), b, padding=1))


def test_non_finite_inputs_spread_as_in_the_reference():
    pixels = [(0, 0, 0, 0), (1, 4, 6, 6), (0, 2, 3, 1)]
    for value in (np.inf, np.nan):
        check_non_finite_forward(_pointwise.pointwise_forward, POINTWISE_CASES[0], pixels, value)


def test_results_do_not_depend_on_the_thread_count():
    x, w, b = random_arrays(POINTWISE_CASES[2], np.float32)
    one, two = at_each_thread_count(lambda: nbconv.conv2d(x, w, b, groups=2))
    np.testing.assert_array_equal(one, two)


def test_a_new_geometry_compiles_nothing():
    before = None
    for case in POINTWISE_CASES:
        x, w, b = random_arrays(case, np.float32)
        got = nbconv.conv2d(x, w, b, groups=case.groups)
        assert_conv_close(got, x, w, b, groups=case.groups)
        if before is None:
            before = len(_pointwise._forward.signatures) + len(_pointwise._forward_blas.signatures)
    assert len(_pointwise._forward.signatures) + len(_pointwise._forward_blas.signatures) == before


def test_reads_non_contiguous_and_read_only_inputs():
    x, w, b = random_arrays(Case(2, 8, (9, 10), 12, (1, 1)), np.float32)
    xs = np.asfortranarray(x)
    xs.flags.writeable = False
    assert_conv_close(nbconv.conv2d(xs, w[:, :, ::-1], b), x, w, b)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 4), g=st.integers(1, 3), cin_g=st.integers(1, 9), cout_g=st.integers(1, 40),
       h=st.integers(1, 12), w=st.integers(1, 30), stride=st.tuples(st.integers(1, 3), st.integers(1, 3)))
def test_property_against_the_reference(n, g, cin_g, cout_g, h, w, stride):
    if cin_g == 1:  # one input per group: the kernel takes groups of O_BLOCK outputs or more
        cout_g = max(cout_g, _pointwise.O_BLOCK)
    check_path_forward(_pointwise.applies, _pointwise.pointwise_forward,
                       Case(n, g * cin_g, (h, w), g * cout_g, (1, 1), stride, 0, 1, g), np.float64)


def test_block_fits_the_target_registers():
    from nbconv.cpu._target import target

    sums = _pointwise.O_BLOCK * _pointwise.pixel_vectors()
    assert sums + _pointwise.pixel_vectors() + 1 <= target().vector_registers
    assert _pointwise._N_O_NARROW + 1 + 1 <= target().vector_registers  # the narrow block: 1 pixel vector


@pytest.mark.parametrize("hw, cout_g, narrow", [(196, 30, True), (784, 24, True), (3136, 64, False), (49, 64, False),
                                                (1, 24, True), (1, 23, False), (80, 64, True)])
def test_narrow_last_block(hw, cout_g, narrow):
    """A narrow last block where at most a vector of pixels is left after the wide blocks (64
    float32 pixels a block with 32 vector registers), and the group holds its output channels."""
    lanes, pix_block = 16, 64
    if _pointwise.pixel_vectors() * lanes != pix_block or _pointwise._N_O_NARROW != 24:
        pytest.skip("the figures are those of a target with 32 vector registers of 512 bits")
    assert _pointwise.narrow_tail(hw, pix_block, lanes, cout_g) == narrow


@pytest.mark.parametrize("images, hw, cout_g, lanes, takes", [
    (2, 49, 8, 16, True), (8, 49, 2048, 16, True), (1, 49, 64, 16, False), (2, 49, 7, 16, False),
    (2, 63, 64, 16, False), (16, 63, 64, 16, True), (2, 56, 64, 16, True), (2, 48, 64, 16, False),
    (2, 64, 64, 16, False), (2, 25, 64, 8, True)])
def test_three_vectors_and_the_rest(images, hw, cout_g, lanes, takes):
    """Planes of three vectors and a few pixels take the 8 x 3 block where the images' left
    pixels together fill fewer vectors than there are images (with 32 vector registers)."""
    if _pointwise._N_PV != 4:
        pytest.skip("a target with 32 vector registers")
    assert _pointwise._takes_three_vectors_and_rest(images, 64, cout_g, hw, lanes) == takes


@pytest.mark.parametrize("images, cin_g, hw, cout_g, lanes, takes", [
    (1, 64, 49, 4, 8, True), (8, 1023, 49, 1024, 8, True), (2, 64, 49, 3, 8, False), (2, 64, 48, 64, 8, False),
    (2, 64, 56, 64, 8, False), (2, 64, 55, 64, 8, True), (2, 64, 25, 64, 4, True), (2, 64, 28, 64, 4, False),
    (8, 1024, 49, 1024, 8, False), (2, 2048, 49, 1024, 8, False), (2, 1152, 49, 320, 8, True)])
def test_two_runs_of_three_vectors_and_the_rest_with_16_registers(images, cin_g, hw, cout_g, lanes, takes):
    """With 16 vector registers, planes of two runs of three vectors and a few pixels take the
    4 x 3 block at every batch (in place of the BLAS, whose sums depend on the split), for groups
    of fewer than ``_THREE_MAX_WEIGHTS`` weights."""
    if _pointwise._N_PV != 2:
        pytest.skip("a target with 16 vector registers")
    assert _pointwise._takes_three_vectors_and_rest(images, cin_g, cout_g, hw, lanes) == takes


def skip_the_blas_with_32_registers(products: str) -> None:
    """The batch's runs of three vectors (own blocks) against one image's product by the BLAS:
    where the target has 32 vector registers the BLAS is never called
    (``_blas.faster_than_own_blocks``), so only the ``products`` fixture's forced BLAS meets
    them, and their sums are in different orders."""
    if products == "blas" and _pointwise._N_PV == 4:
        pytest.skip("with 32 vector registers the products are never the BLAS's")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_three_vectors_and_the_rest_give_the_same_bits_as_image_by_image(dtype, products):
    skip_the_blas_with_32_registers(products)
    side = 5 if dtype == np.float64 else 7  # runs of three vectors and one pixel
    x, w, b = random_arrays(Case(6, 24, (side, side), 40, (1, 1), 1, 0, 1, 2), dtype)
    assert _pointwise._takes_three_vectors_and_rest(6, 12, 20, side * side, _pointwise.vector_lanes(dtype))
    together = nbconv.conv2d(x, w, b, groups=2)
    one_by_one = np.concatenate([nbconv.conv2d(x[i:i + 1], w, b, groups=2) for i in range(6)])
    np.testing.assert_array_equal(together, one_by_one)
    assert_conv_close(together, x, w, b, groups=2)


@pytest.mark.parametrize("images,cin_g,cout_g,hw,macs_bound,takes", [
    (8, 1024, 512, 196, None, True),  # ResNeXt-50's 1024 -> 512 at 14 x 14, batch 8
    (2, 1024, 512, 196, None, False),  # batch 2: under REST_MIN_MACS
    (1, 1024, 1024, 196, 0, False),  # one image: nothing to put together
    (8, 1024, 512, 784, 0, False),  # 28 x 28: whole vectors (an aligning shift instead)
    (8, 1024, 20, 196, 0, False),  # too few outputs for the narrow block
    (8, 64, 384, 196, 0, True),  # small, with the bound lifted
])
def test_wide_blocks_and_the_rest(images, cin_g, cout_g, hw, macs_bound, takes, monkeypatch):
    """Planes of whole wide blocks and a vector's pixels or fewer more, from ``REST_MIN_MACS``
    (with 32 vector registers and float32's 16 lanes)."""
    if _pointwise.pixel_vectors() * _pointwise.vector_lanes(np.float32) != 64:
        pytest.skip("blocks of 4 vectors of 16 float32")
    if macs_bound is not None:
        monkeypatch.setattr(_pointwise, "REST_MIN_MACS", macs_bound)
    assert _pointwise._takes_wide_blocks_and_rest(images, cin_g, cout_g, hw, 16) == takes


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,c_in,side,c_out,groups", [
    (3, 20, (14, 14), 48, 1),  # 196 pixels: whole blocks and 4 more (float64: 6 blocks of 32 and 4)
    (2, 12, (7, 19), 60, 2),  # 133 pixels, groups of 30: the last output block moved back
])
def test_wide_blocks_and_the_rest_give_the_same_bits_as_narrow_blocks(n, c_in, side, c_out, groups, dtype,
                                                                      monkeypatch):
    """The images' last pixels as one plane: the bits of each image's narrow block, the
    reference's numbers."""
    x, w, b = random_arrays(Case(n, c_in, side, c_out, (1, 1), 1, 0, 1, groups), dtype)
    hw = side[0] * side[1]
    monkeypatch.setattr(_pointwise, "REST_MIN_MACS", 0)
    assert _pointwise._takes_wide_blocks_and_rest(n, c_in // groups, c_out // groups, hw,
                                                  _pointwise.vector_lanes(dtype)) or _pointwise._N_PV != 4
    together = nbconv.conv2d(x, w, b, groups=groups)
    monkeypatch.setattr(_pointwise, "_takes_wide_blocks_and_rest", lambda *args: False)
    narrow = nbconv.conv2d(x, w, b, groups=groups)
    np.testing.assert_array_equal(together, narrow)
    assert_conv_close(together, x, w, b, groups=groups)


def test_the_batch_as_pixels_gives_the_same_bits_as_image_by_image():
    x, w, b = random_arrays(Case(8, 40, (1, 1), 48, (1, 1)), np.float32)
    folded = nbconv.conv2d(x, w, b)
    one_by_one = np.concatenate([nbconv.conv2d(x[i:i + 1], w, b) for i in range(8)])
    np.testing.assert_array_equal(folded, one_by_one)
    assert_conv_close(folded, x, w, b)


@pytest.mark.asm
def test_block_compiles_to_fmas_at_the_target_width_without_spills():
    """Every ``O_BLOCK x pixel_vectors()`` multiply-add of a block is one packed FMA on the
    target's widest registers, and with 32 vector registers nothing is spilled. (With AVX2's 16,
    the masked block, for planes under one block, keeps its lane masks on the stack.)"""
    from asm import compiled_body, packed_fmas, skip_without_fma, spills

    from nbconv.cpu._target import target

    skip_without_fma()

    @numba.njit(cache=False)
    def run(x, w, b, out, n_pix):
        _pointwise._block(x, 0, 64, 5, w, 0, 5, b, 0, out, 0, 64, n_pix)

    @numba.njit(cache=False)
    def run_narrow(x, w, b, out, n_pix):
        _pointwise._block_narrow(x, 0, 64, 5, w, 0, 5, b, 0, out, 0, 64, n_pix)

    @numba.njit(cache=False)
    def run_three(x, w, b, out, n_pix):
        _pointwise._block_three(x, 0, 64, 5, w, 0, 5, b, 0, out, 0, 64, n_pix)

    f32 = numba.types.float32[::1]
    bits = target().vector_bits
    for f in (run, run_narrow, run_three):
        f.compile((f32, f32, f32, f32, numba.types.int64))  # compiled, not run: the target may not be this CPU
        asm = compiled_body(f.inspect_asm(f.signatures[0]))
        assert packed_fmas(asm, bits) >= _pointwise.O_BLOCK * _pointwise.pixel_vectors()
        # the rows PREFETCH_CHANNELS ahead, but on AMD's Zen
        assert ("prefetcht0" in asm) == (_pointwise.prefetch_channels() > 0)
        if target().vector_registers == 32:
            assert not spills(asm, bits), spills(asm, bits)[:3]


@pytest.mark.parametrize("name, expected", [("znver3", 0), ("znver5", 0), ("skylake-avx512", 4), ("haswell", 4),
                                            ("sapphirerapids", 4)])
def test_software_prefetch_on_all_but_amds_zen(name, expected, monkeypatch):
    from nbconv.cpu import _target

    monkeypatch.setattr(_pointwise, "target", lambda: _target.Target(name, "", 256, 16))
    assert _pointwise.prefetch_channels() == expected


@pytest.mark.asm
def test_blocks_on_a_tasks_columns_do_not_prefetch():
    """``_im2col`` multiplies columns it has just copied into its scratch: its blocks ask the
    cache for nothing."""
    from asm import compiled_body, skip_without_fma

    from nbconv.cpu import _im2col

    skip_without_fma()
    assert _im2col._block is _pointwise._block_cached and _im2col._block_narrow is _pointwise._block_narrow_cached

    @numba.njit(cache=False)
    def run(x, w, b, out, n_pix):
        _pointwise._block_cached(x, 0, 64, 5, w, 0, 5, b, 0, out, 0, 64, n_pix)
        _pointwise._block_narrow_cached(x, 0, 64, 5, w, 0, 5, b, 0, out, 0, 64, n_pix)

    f32 = numba.types.float32[::1]
    run.compile((f32, f32, f32, f32, numba.types.int64))
    assert not re.search(r"^\s*prefetch", compiled_body(run.inspect_asm(run.signatures[0])), re.MULTILINE)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 3), c=st.integers(1, 4), h=st.integers(1, 9), w=st.integers(1, 70),
       sh=st.integers(1, 3), sw=st.integers(1, 3), double=st.booleans())
def test_subsample_keeps_every_strided_pixel(n, c, h, w, sh, sw, double):
    """The copy before a strided 1x1 product is ``x[:, :, ::sh, ::sw]``, whatever the row length
    against the vector (the zeros a vector copy leaves past a row never reach another plane)."""
    dtype = np.float64 if double else np.float32
    x = np.random.default_rng(n * 1000 + w).standard_normal((n, c, h, w)).astype(dtype)
    want = x[:, :, ::sh, ::sw]
    got = np.full(want.shape, np.nan, dtype)
    _pointwise._subsample(x, got, sh, sw, _pointwise.vector_lanes(dtype))
    np.testing.assert_array_equal(got, want)


@pytest.mark.skipif(sys.platform != "linux", reason="mprotect guard pages: Linux")
@pytest.mark.parametrize("hw", [1, 5, 15, 16, 17, 33, 49, 63, 64, 65])
@pytest.mark.parametrize("c_in, c_out, groups", [(1, 6, 1), (3, 7, 1), (8, 24, 1), (2, 30, 1), (6, 4, 2)])
def test_blocks_read_nothing_past_the_input(hw, c_in, c_out, groups):
    """The short blocks' plain loads (lanes past the plane read the next channels) stop before
    the input's end: the input ends at a page that cannot be read, and the products match."""
    rng = np.random.default_rng(hw * 100 + c_in)
    for n in (1, 3):
        x = ending_at_a_guard_page(n * c_in * hw, np.float32).reshape(n, c_in, hw)
        x[...] = rng.standard_normal((n, c_in, hw))
        w = rng.standard_normal((c_out, c_in // groups, 1, 1)).astype(np.float32)
        b = rng.standard_normal(c_out).astype(np.float32)
        out = np.empty((n, c_out, hw), np.float32)
        _pointwise.plane_products(x, w, b, out, groups, hw)
        xg = x.reshape(n, groups, c_in // groups, hw)
        wg = w.reshape(groups, c_out // groups, c_in // groups).astype(np.float64)
        expected = np.einsum("goc,ngcp->ngop", wg, xg.astype(np.float64)).reshape(n, c_out, hw) + b[:, None]
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("offset", [0, 1, 4, 12, 15])
@pytest.mark.parametrize("hw, c_out, groups", [(128, 24, 1), (160, 30, 1), (208, 50, 2), (256, 48, 2), (144, 24, 1)])
def test_blocks_aligned_to_vectors_give_the_same_bits(offset, hw, c_out, groups):
    """Where planes are whole vectors and the input starts mid-vector, the wide blocks start at
    the first aligned pixel and a narrow block takes the pixels before (:func:`aligning_shift`):
    the same bits as unshifted blocks, and the reference's numbers."""
    lanes = _pointwise.vector_lanes(np.float32)
    pix_block = _pointwise.pixel_vectors() * lanes
    if hw % lanes or hw < 2 * pix_block:
        pytest.skip("these plane sizes are whole vectors of 16 float32 and two blocks of 64")
    n, c_in = 2, 2 * groups
    rng = np.random.default_rng(offset + hw)
    buf = np.empty(n * c_in * hw + 64, np.float32)
    start = (-(buf.ctypes.data // 4)) % 16 + offset  # ``offset`` elements past a 64-byte line
    x = buf[start:start + n * c_in * hw].reshape(n, c_in, hw)
    x[...] = rng.standard_normal(x.shape)
    w = rng.standard_normal((c_out, c_in // groups, 1, 1)).astype(np.float32)
    b = rng.standard_normal(c_out).astype(np.float32)
    shift = _pointwise.aligning_shift(x, hw, pix_block, c_out // groups)
    if lanes == 16 and c_out // groups >= _pointwise._N_O_NARROW:
        assert shift == (16 - offset) % 16
    shifted, plain = np.empty((n, c_out, hw), np.float32), np.empty((n, c_out, hw), np.float32)
    for out, s in ((shifted, shift), (plain, 0)):
        _pointwise._forward(x.reshape(-1), w.reshape(-1), b, out.reshape(-1), groups, c_in // groups, c_out // groups,
                            hw, 1, pix_block, lanes, s)
    np.testing.assert_array_equal(shifted, plain)
    wg = w.reshape(groups, c_out // groups, c_in // groups).astype(np.float64)
    expected = np.einsum("goc,ngcp->ngop", wg, x.reshape(n, groups, c_in // groups, hw).astype(np.float64))
    np.testing.assert_allclose(shifted, expected.reshape(n, c_out, hw) + b[:, None], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("offset", [0, 1, 4, 12])
@pytest.mark.parametrize("span", [1, 3, 4])
@pytest.mark.parametrize("hw, c_out, groups", [(256, 24, 1), (192, 13, 1), (320, 14, 2), (128, 6, 1), (144, 30, 3)])
def test_streaming_stores_give_the_same_bits(offset, span, hw, c_out, groups, dtype, products, monkeypatch):
    """A result of ``STREAM_BYTES`` or more is written by :func:`_forward_streaming` (blocks from
    the first pixel at a line's start, streaming stores where a row starts at a vector's, runs of
    ``span`` pixel blocks a task, whole or not): the same bits as the plain blocks, and the
    reference's numbers, whatever the result's offset in a line (``offset`` elements past one; 1
    for float32: no row at a vector's start, plain stores)."""
    if products == "blas":
        pytest.skip("the BLAS writes its products itself")
    size = np.dtype(dtype).itemsize
    line = _pointwise.LINE_BYTES // size
    pix_block = _pointwise.pixel_vectors() * _pointwise.vector_lanes(dtype)
    if hw % line or hw < 2 * pix_block:
        pytest.skip("planes of whole lines and two blocks at this vector width")
    n, c_in = 2, 3 * groups
    rng = np.random.default_rng(hw + offset)
    x = rng.standard_normal((n, c_in, hw)).astype(dtype)
    w = rng.standard_normal((c_out, c_in // groups, 1, 1)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype)
    buf = np.empty(n * c_out * hw + 2 * line, dtype)
    start = (-(buf.ctypes.data // size)) % line + offset % line
    streamed = buf[start:start + n * c_out * hw].reshape(n, c_out, hw)
    plain = np.empty((n, c_out, hw), dtype)
    monkeypatch.setattr(_pointwise, "STREAM_BYTES", 0)
    monkeypatch.setattr(_pointwise, "STREAM_SPAN_BLOCKS", span)
    calls = []
    real = _pointwise._forward_streaming
    monkeypatch.setattr(_pointwise, "_forward_streaming", lambda *a: calls.append(a[-2:]) or real(*a))
    _pointwise.plane_products(x, w, b, streamed, groups, hw)
    assert calls == [((line - offset % line) % line, span)]  # the shift to the first line's start
    monkeypatch.setattr(_pointwise, "STREAM_BYTES", 1 << 62)
    _pointwise.plane_products(x, w, b, plain, groups, hw)
    assert len(calls) == 1
    np.testing.assert_array_equal(streamed, plain)
    wg = w.reshape(groups, c_out // groups, c_in // groups).astype(np.float64)
    expected = np.einsum("goc,ngcp->ngop", wg, x.reshape(n, groups, c_in // groups, hw).astype(np.float64))
    np.testing.assert_allclose(streamed, expected.reshape(n, c_out, hw) + b[:, None], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("nbytes_over, hw, cout_g, offset, expected", [
    (0, 256, 6, 0, 0), (0, 256, 6, 3, 13), (-4, 256, 6, 0, -1),  # under STREAM_BYTES: plain
    (0, 264, 6, 0, -1),  # planes not whole lines: each starts elsewhere in a line
    (0, 256, 5, 0, -1),  # groups under O_BLOCK outputs: _forward_small
])
def test_which_results_are_streamed(nbytes_over, hw, cout_g, offset, expected, products, monkeypatch):
    lanes = _pointwise.vector_lanes(np.float32)
    if 2 * _pointwise.pixel_vectors() * lanes > hw:
        pytest.skip("planes of two blocks at this vector width")
    buf = np.empty(4 * hw + 16, np.float32)
    start = (-(buf.ctypes.data // 4)) % 16 + offset
    out = buf[start:start + 4 * hw].reshape(1, 4, hw)
    monkeypatch.setattr(_pointwise, "STREAM_BYTES", out.nbytes - nbytes_over)
    assert _pointwise.streaming_shift(out, hw, cout_g) == expected


@pytest.mark.asm
def test_the_streaming_block_stores_past_the_caches_and_fences(products):
    """:func:`_forward_streaming` has non-temporal vector stores (``vmovntps``) beside plain ones,
    and a store fence after each task's stores (``sfence``). (The whole assembly: the parallel
    loop's body is a function of its own after the wrappers, and they have neither.)"""
    from asm import fresh_asm, skip_without_fma

    from nbconv._numba_options import CPU_PARALLEL

    skip_without_fma()
    f32, i64 = numba.types.float32[::1], numba.types.int64
    asm = fresh_asm(_pointwise._forward_streaming, (f32, f32, f32, f32) + (i64,) * 8, CPU_PARALLEL)
    assert len(re.findall(r"^\s*vmovntps\s", asm, re.MULTILINE)) >= _pointwise.O_BLOCK
    assert re.search(r"^\s*sfence", asm, re.MULTILINE)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("c_in, c_out, groups, side", [(8, 8, 2, 7), (10, 10, 2, 7), (6, 20, 2, 7), (3, 12, 1, 5),
                                                       (16, 40, 4, 7), (4, 9, 1, 7)])
def test_runs_of_three_vectors_at_any_group_width(c_in, c_out, groups, side, dtype, products):
    """Planes of runs of three vectors and a pixel with 4 or 5 outputs a group (a block moved
    back over outputs computed before), with groups, in float32 and float64: the reference's
    numbers, and each image's result the same bits alone and in its batch."""
    skip_the_blas_with_32_registers(products)
    x, w, b = random_arrays(Case(3, c_in, (side, side), c_out, (1, 1), 1, 0, 1, groups), dtype)
    together = nbconv.conv2d(x, w, b, groups=groups)
    one_by_one = np.concatenate([nbconv.conv2d(x[i:i + 1], w, b, groups=groups) for i in range(3)])
    np.testing.assert_array_equal(together, one_by_one)
    assert_conv_close(together, x, w, b, groups=groups)
