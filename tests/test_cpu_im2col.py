"""Dense layers (stems, patch embeddings) as columns times the weights (``nbconv.cpu._im2col``): compiled once per dtype,
every size a run-time value; checked against the reference (strides, dilations, asymmetric and
'valid' padding, groups, pixel blocks moved left or masked), and for the claim that a new
geometry compiles nothing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from cases import (
    Case,
    at_each_thread_count,
    check_non_finite_forward,
    check_path_forward,
    random_arrays,
)
from reference import assert_conv_close

import nbconv
from nbconv._spec import conv2d_spec
from nbconv.cpu import _blas, _im2col, _launch, _pointwise

#: every test with the kernel's own products and with the BLAS's (``conftest.products``)
pytestmark = pytest.mark.usefixtures("products")

IM2COL_CASES = [
    Case(2, 3, (23, 21), 8, (7, 7), 2, 3),  # ResNet's stem, small: 147 terms
    Case(1, 3, (9, 10), 6, (3, 3), 2, 1),  # MobileNetV2's stem, small
    Case(2, 4, (11, 13), 7, (3, 5), (1, 2), (2, 0), (2, 1)),  # mixed stride, dilation, padding
    Case(1, 6, (8, 9), 12, (3, 3), 1, "same", 1, 2),  # groups of 3 -> 6
    Case(1, 2, (3, 3), 6, (3, 3), 1, "valid"),  # one output pixel: a masked block
    Case(2, 6, (17, 40), 12, (2, 2), 2),  # ConvNeXt's downsampling: 2x2 patches, an odd row left out
    Case(3, 4, (10, 9), 52, (3, 2), (3, 2), 0, 1, 2),  # 3x2 patches, groups of 26: narrow blocks
    Case(2, 3, (22, 77), 8, (4, 4), 4),  # ConvNeXt's stem: 4x4 patches, rows of 19 (2 columns left out)
]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 3), g=st.integers(1, 2), cin_g=st.integers(1, 4), cout_g=st.integers(6, 30),
       h=st.integers(2, 12), w=st.integers(2, 90), kh=st.integers(1, 4), kw=st.sampled_from([2, 4]))
def test_patches_give_the_bits_of_the_columns(n, g, cin_g, cout_g, h, w, kh, kw, monkeypatch, products):
    """Non-overlapping kh x kw patches, kw 2 or 4 (:func:`_im2col.takes_patches`), copied as
    channels, then a 1x1 product: the reference's numbers, and with the kernels' own products the
    same bits as the columns per task (the BLAS's sum order depends on how its products are
    split)."""
    case = Case(n, g * cin_g, (h, w), g * cout_g, (kh, kw), (kh, kw), 0, 1, g)
    assume(h >= kh and w >= kw)
    x, w_, b = random_arrays(case, np.float32)
    spec = conv2d_spec(x, w_, b, **case.conv_args())
    assume(_im2col.applies(spec))  # two input channels or more per group
    assert _im2col.takes_patches(spec)
    patches = np.empty((n, g * cout_g) + spec.out_size, np.float32)
    _im2col.im2col_forward(x, w_, b, patches, spec)
    assert_conv_close(patches, x, w_, b, **case.conv_args())
    columns = np.empty_like(patches)
    with monkeypatch.context() as m:  # per example: hypothesis runs many in one test call
        m.setattr(_im2col, "takes_patches", lambda spec: False)
        _im2col.im2col_forward(x, w_, b, columns, spec)
    if products == "own":
        np.testing.assert_array_equal(patches, columns)


def _patch_spans_against_the_whole_batch(n, g, cin_g, cout_g, oh, ow, kh, kw, extra, rows, dtype, products):
    """The layer's result with ``rows`` output rows per span against the whole batch's patches:
    the same bits with the kernels' own products, the reference's numbers with the BLAS's."""
    case = Case(n, g * cin_g, (oh * kh + extra[0] % kh, ow * kw + extra[1] % kw), g * cout_g, (kh, kw), (kh, kw), 0, 1,
                g)
    x, w, b = random_arrays(case, dtype)
    spec = conv2d_spec(x, w, b, **case.conv_args())
    assert _im2col.applies(spec) and _im2col.takes_patches(spec) and spec.out_size == (oh, ow)
    spans = np.full(spec.output_shape, np.nan, dtype)
    whole = np.full(spec.output_shape, np.nan, dtype)
    chosen = _im2col.patch_span_rows
    try:
        _im2col.patch_span_rows = lambda spec, threads: min(rows, oh)
        _im2col.im2col_forward(x, w, b, spans, spec)
        _im2col.patch_span_rows = lambda spec, threads: 0
        _im2col.im2col_forward(x, w, b, whole, spec)
    finally:
        _im2col.patch_span_rows = chosen
    assert_conv_close(spans, x, w, b, **case.conv_args())
    if products == "own":
        np.testing.assert_array_equal(spans, whole)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 3), g=st.integers(1, 2), cin_g=st.integers(2, 3), cout_g=st.sampled_from([6, 7, 24, 25]),
       oh=st.integers(1, 9), ow=st.integers(1, 40), kh=st.integers(1, 3), kw=st.sampled_from([2, 4]),
       extra=st.tuples(st.integers(0, 1), st.integers(0, 3)), rows=st.integers(1, 9),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_patch_spans_give_the_bits_of_the_whole_batch(n, g, cin_g, cout_g, oh, ow, kh, kw, extra, rows, dtype,
                                                      products):
    """A span of output rows per task (:func:`_im2col._forward_patch_spans`), at any span size:
    a last span shorter, spans under one block (masked), rows and columns of the input left out."""
    _patch_spans_against_the_whole_batch(n, g, cin_g, cout_g, oh, ow, kh, kw, extra, rows, dtype, products)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cout_g,oh,ow,rows", [
    (24, 3, 40, 2),  # 80 pixels a span: a wide block and a narrow vector (float32: 64 + 16)
    (30, 5, 20, 2),  # 40 a span, float64: a wide block and a narrow vector (32 + 8); the last span 20
    (25, 4, 17, 4),  # 68: a tail of 4 past a wide block, a narrow block moved back within the group
    (12, 3, 40, 2),  # too few outputs for the narrow block: the last wide block moved left
])
def test_patch_spans_with_a_narrow_tail(cout_g, oh, ow, rows, dtype, products):
    _patch_spans_against_the_whole_batch(2, 1, 3, cout_g, oh, ow, 2, 2, (1, 1), rows, dtype, products)


def test_patch_span_sizes_of_convnext_layers(products):
    """ConvNeXt-T's stem and 2x2 downsamplings on 2 threads: at batch 8 all but the last take
    spans (7 x 7 outputs: a span's block would compute 64 lanes for 49 pixels); at batch 2 the
    stem and the first, whose spans still give each thread 4 tasks with few lanes wasted; never
    with the BLAS."""
    if _pointwise.pixel_vectors() * _pointwise.vector_lanes(np.float32) != 64:
        pytest.skip("the table is for blocks of 4 vectors of 16 float32 (AVX-512)")
    layers = [(3, 96, 4, 224), (96, 192, 2, 56), (192, 384, 2, 28), (384, 768, 2, 14)]
    for batch, want in ((8, [16, 16, 14, 0]), (2, [16, 9, 0, 0])):
        got = [_im2col.patch_span_rows(conv2d_spec(np.empty((batch, ci, side, side), np.float32),
                                                   np.empty((co, ci, k, k), np.float32), None, k), 2)
               for ci, co, k, side in layers]
        assert got == (want if products == "own" else [0, 0, 0, 0]), batch


@pytest.mark.parametrize("case,dtype", [(c, d) for c in IM2COL_CASES for d in (np.float32, np.float64)], ids=str)
def test_im2col_forward(case, dtype):
    check_path_forward(_im2col.applies, _im2col.im2col_forward, case, dtype)


def test_the_launcher_takes_it_for_dense_layers():
    x = np.zeros((2, 5, 32, 32), np.float32)  # more input channels than a stem (``_stem``)
    stem = conv2d_spec(x, np.zeros((16, 5, 7, 7), np.float32), None, 2, 3)
    assert _launch.forward_kernel(stem) == "im2col"
    small = conv2d_spec(x[:, :3], np.zeros((16, 3, 3, 3), np.float32), None, 4, 1)  # 27 terms, rows of 8 outputs
    assert _launch.forward_kernel(small) == "im2col"
    patches = conv2d_spec(np.zeros((2, 96, 16, 16), np.float32), np.zeros((192, 96, 2, 2), np.float32), None, 2)
    assert _launch.forward_kernel(patches) == "im2col"  # ConvNeXt's downsampling
    grouped = conv2d_spec(np.zeros((2, 8, 9, 9), np.float32), np.zeros((16, 2, 3, 3), np.float32), None, 1, 1, 1, 4)
    assert _launch.forward_kernel(grouped) == "packed"  # 18 terms a group: not dense
    wide = conv2d_spec(np.zeros((1, 256, 8, 8), np.float32), np.zeros((16, 256, 3, 3), np.float32), None, 1, 1)
    assert (_launch.forward_kernel(wide) == "im2col") == (_blas.for_products() is not None)  # 2304 terms
    wider = conv2d_spec(np.zeros((1, 640, 8, 8), np.float32), np.zeros((16, 640, 3, 3), np.float32), None, 1, 1)
    assert not _im2col.applies(wider)  # 5760 terms


def test_non_finite_inputs_spread_as_in_the_reference():
    case = IM2COL_CASES[2]
    h, w = case.hw
    for value in (np.inf, np.nan):
        check_non_finite_forward(_im2col.im2col_forward, case, [(0, 0, 0, 0), (1, 3, h - 1, w - 1)], value)


def test_results_do_not_depend_on_the_thread_count():
    case = IM2COL_CASES[0]
    x, w, b = random_arrays(case, np.float32)
    one, two = at_each_thread_count(lambda: nbconv.conv2d(x, w, b, **case.conv_args()))
    np.testing.assert_array_equal(one, two)


def test_a_new_geometry_compiles_nothing():
    before = None
    for hw, n in (((23, 21), 2), ((40, 17), 1), ((12, 30), 3)):
        case = Case(n, 3, hw, 8, (7, 7), 2, 3)
        x, w, b = random_arrays(case, np.float32)
        assert_conv_close(nbconv.conv2d(x, w, b, stride=2, padding=3), x, w, b, stride=2, padding=3)
        if before is None:
            before = len(_im2col._forward.signatures) + len(_im2col._forward_blas.signatures)
    assert len(_im2col._forward.signatures) + len(_im2col._forward_blas.signatures) == before


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 2), g=st.integers(1, 2), cin_g=st.integers(2, 4), cout_g=st.integers(6, 9),
       h=st.integers(1, 13), w=st.integers(1, 21), k=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       stride=st.tuples(st.integers(1, 3), st.integers(1, 3)), dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       pad=st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)))
def test_property_against_the_reference(n, g, cin_g, cout_g, h, w, k, stride, dilation, pad):
    """Every row of a block's columns: padding on either side, rows outside the plane, strides
    and dilations that skip past the plane's edge."""
    span = [(d * (kk - 1) + 1) for d, kk in zip(dilation, k)]
    assume(h + pad[0] + pad[1] >= span[0] and w + pad[2] + pad[3] >= span[1])
    case = Case(n, g * cin_g, (h, w), g * cout_g, k, stride, ((pad[0], pad[1]), (pad[2], pad[3])), dilation, g)
    check_path_forward(_im2col.applies, _im2col.im2col_forward, case, np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("offset", [0, 1, 4, 12])
@pytest.mark.parametrize("cin, cout, k, stride, side", [(3, 16, 3, 2, 64), (3, 13, 3, 1, 32), (4, 24, 5, 2, 66)])
def test_streamed_columns_give_the_same_bits(cin, cout, k, stride, side, offset, dtype, products, monkeypatch):
    """A result of ``_pointwise.STREAM_BYTES`` or more is computed in spans from the first pixel
    at a line's start (a head span before it) and written with streaming stores: the same bits as
    the spans from the plane's start with plain stores, and the reference's numbers, whatever the
    result's offset in a line."""
    if products == "blas":
        pytest.skip("the BLAS writes its products itself")
    rng = np.random.default_rng(offset + side)
    x = rng.standard_normal((2, cin, side, side)).astype(dtype)
    w = rng.standard_normal((cout, cin, k, k)).astype(dtype)
    b = rng.standard_normal(cout).astype(dtype)
    spec = conv2d_spec(x, w, b, stride=stride, padding=k // 2)
    if not _im2col.applies(spec) or _im2col.takes_patches(spec):
        pytest.skip("not the columns' kernel")
    size = np.dtype(dtype).itemsize
    line = _pointwise.LINE_BYTES // size
    n_out = int(np.prod(spec.output_shape))
    buf = np.empty(n_out + 2 * line, dtype)
    start = (-(buf.ctypes.data // size)) % line + offset % line
    streamed = buf[start:start + n_out].reshape(spec.output_shape)
    plain = np.empty(spec.output_shape, dtype)
    shifts = []
    real = _pointwise.streaming_shift
    monkeypatch.setattr(_pointwise, "streaming_shift", lambda *a: shifts.append(real(*a)) or shifts[-1])
    monkeypatch.setattr(_pointwise, "STREAM_BYTES", 0)
    _im2col.im2col_forward(x, w, b, streamed, spec)
    monkeypatch.setattr(_pointwise, "STREAM_BYTES", 1 << 62)
    _im2col.im2col_forward(x, w, b, plain, spec)
    hw = spec.out_size[0] * spec.out_size[1]
    assert shifts[0] == ((line - offset % line) % line if hw % line == 0 else -1) and shifts[1] == -1
    np.testing.assert_array_equal(streamed, plain)
    assert_conv_close(streamed, x, w, b, stride=stride, padding=k // 2)
