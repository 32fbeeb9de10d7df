"""The row-blocked depthwise CPU path (``nbconv.cpu._rowblock``): generated per geometry, so every
geometry feature (stride phases, dilation, input dilation, cropping, multipliers, the last row
block moved up, fewer rows than a block, widths that are not whole vectors) is checked here
against the reference, through the path itself and through the public ops that reach it."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from asm import assert_loop_vectorised, fresh_asm
from cases import Case, check_path_forward, random_arrays
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import assert_conv_close, conv2d_input_reference

import nbconv
import nbconv.cpu._launch as launch
from nbconv._spec import conv2d_input_spec, conv2d_spec
from nbconv.cpu import _depthwise, _depthwise_lanes, _generated, _rowblock
from nbconv.cpu._launch import conv2d_forward

#: the small cases here must reach the generated kernels (``MIN_GENERATED_MACS``)
pytestmark = pytest.mark.usefixtures("generated_for_small_calls")


ROW_CASES = [
    Case(2, 3, (20, 17), 3, (3, 3), 1, 1, 1, 3),  # OH = 20: five blocks of 4; OW = 17: a vector + 1
    Case(2, 2, (22, 33), 6, (3, 3), 1, "same", 1, 2),  # multiplier 3, OH = 22: last block moved up
    Case(1, 4, (3, 40), 4, (3, 3), 1, 1, 1, 4),  # OH = 3 < 4 rows per pass: one-row kernel
    Case(2, 2, (37, 41), 2, (3, 3), 2, 1, 1, 2),  # stride 2: phase planes
    Case(2, 2, (30, 35), 2, (3, 3), (1, 2), (0, 2), (2, 1), 2),  # mixed stride, padding, dilation
    Case(2, 2, (19, 24), 4, (5, 5), 1, 2, 1, 2, False),  # 5x5: 8 rows per pass, multiplier 2
    Case(2, 2, (16, 24), 2, (7, 7), 1, "valid", 1, 2),  # 7x7 'valid': kernel rows in passes of 3, 3, 1; OH = 10
    Case(2, 2, (30, 40), 2, (5, 7), 2, (2, 3), 1, 2),  # 5x7, stride 2: passes of 3 and 2 kernel rows, phase planes
    Case(2, 2, (18, 22), 2, (2, 5), 1, "same", 1, 2),  # even, non-square kernel: far-side pad
    Case(3, 2, (12, 18), 2, (1, 1), 1, 0, 1, 2),  # 1x1 depthwise (a per-channel scale + bias)
]


@pytest.mark.parametrize("case,dtype", [(c, np.float64) for c in ROW_CASES] + [(ROW_CASES[1], np.float32)],
                         ids=str)
def test_rowblock_forward(case, dtype):
    check_path_forward(_rowblock.applies, _rowblock.depthwise_forward, case, dtype)


@pytest.mark.parametrize("case", [ROW_CASES[3]], ids=str)
def test_public_conv2d_takes_the_path(case, monkeypatch):
    """Through ``nbconv.conv2d`` (non-contiguous, read-only input) with the path forced on."""
    x, w, b = random_arrays(case, np.float32)
    calls = []
    real = _rowblock.depthwise_forward
    monkeypatch.setattr(_rowblock, "depthwise_forward", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(_rowblock, "applies", lambda spec: True)
    for earlier in (_depthwise_lanes, _depthwise):  # which otherwise come first
        monkeypatch.setattr(earlier, "applies", lambda spec: False)
    xs = np.asfortranarray(x)
    xs.flags.writeable = False
    got = nbconv.conv2d(xs, w, b, **case.conv_args())
    assert calls, "the row-blocked path was not taken"
    assert_conv_close(got, x, w, b, **case.conv_args())


@pytest.mark.parametrize("stride,padding,dilation", [(2, 1, 1), (3, 0, 2)])
def test_input_gradient_through_the_path(stride, padding, dilation):
    """Input dilation (zeros between pixels) and cropping (negative padding) in the generated pack."""
    case = Case(2, 3, (40, 37), 3, (3, 3), stride, padding, dilation, 3)
    x, w, _ = random_arrays(case, np.float64)
    gy = np.random.default_rng(1).standard_normal(
        nbconv.conv2d(x, w, None, **case.conv_args()).shape)
    spec = conv2d_input_spec(x.shape, w, gy, **case.conv_args())
    assert _rowblock.applies(spec)
    out = np.full(x.shape, np.nan)
    conv2d_forward(spec, gy, w, None, out)
    np.testing.assert_allclose(out, conv2d_input_reference(x.shape, w, gy, **case.conv_args()), rtol=1e-12, atol=1e-12)


@settings(max_examples=3, deadline=None)
@given(
    n=st.integers(1, 2), c=st.integers(1, 3), mult=st.integers(1, 2),
    h=st.integers(1, 24), wd=st.integers(16, 40), kh=st.integers(1, 5), kw=st.integers(1, 5),
    sh=st.integers(1, 2), sw=st.integers(1, 2), dh=st.integers(1, 2), dw=st.integers(1, 2),
    pad=st.integers(0, 2),
)
def test_rowblock_property(n, c, mult, h, wd, kh, kw, sh, sw, dh, dw, pad):
    case = Case(n, c, (h + (kh - 1) * dh, wd + (kw - 1) * dw), c * mult, (kh, kw), (sh, sw), pad, (dh, dw), c)
    x, w, b = random_arrays(case, np.float64)
    spec = conv2d_spec(x, w, b, **case.conv_args())
    if spec.out_size[1] < _rowblock.MIN_OUT_WIDTH:
        return
    out = np.full(spec.output_shape, np.nan)
    _rowblock.depthwise_forward(x, w, b, out, spec)
    assert_conv_close(out, x, w, b, **case.conv_args())


def test_kernel_row_passes():
    assert _rowblock.kernel_row_passes(3, 3) == (3,)
    assert _rowblock.kernel_row_passes(5, 5) == (5,)  # 25 taps: one pass
    assert _rowblock.kernel_row_passes(7, 7) == (3, 3, 1)
    assert _rowblock.kernel_row_passes(5, 7) == (3, 2)
    assert _rowblock.kernel_row_passes(7, 3) == (7,)


def test_choice():
    x = np.zeros((8, 32, 112, 112), np.float32)
    spec = conv2d_spec(x, np.zeros((32, 1, 3, 3), np.float32), None, 1, 1, 1, 32)
    assert _rowblock.applies(spec)
    narrow = conv2d_spec(np.zeros((8, 32, 7, 7), np.float32), np.zeros((32, 1, 3, 3), np.float32), None, 1, 1, 1, 32)
    assert not _rowblock.applies(narrow)  # 7 columns: _channels_last
    grouped = conv2d_spec(x, np.zeros((32, 2, 3, 3), np.float32), None, 1, 1, 1, 16)
    assert not _rowblock.applies(grouped)
    big_kernel = conv2d_spec(x, np.zeros((32, 1, 9, 9), np.float32), None, 1, 4, 1, 32)
    assert not _rowblock.applies(big_kernel)  # 81 taps: compile time, the packed kernel


def test_small_calls_take_the_packed_kernels(monkeypatch):
    monkeypatch.undo()  # the default threshold
    tiny = conv2d_spec(np.zeros((2, 4, 20, 20), np.float32), np.zeros((4, 1, 3, 3), np.float32), None, 1, 1, 1, 4)
    assert not launch.worth_generating(tiny)  # 28,800 multiply-adds: not worth a compile
    big = conv2d_spec(np.zeros((8, 960, 7, 7), np.float32), np.zeros((960, 1, 3, 3), np.float32), None, 1, 1, 1, 960)
    assert launch.worth_generating(big)


def test_generated_module_is_cached_on_disk(tmp_path, monkeypatch):
    """The generated source is written once, named after its text and nbconv's kernel code, and
    imported from that file (so Numba's on-disk cache can keep it)."""
    monkeypatch.setattr(_generated, "source_dir", lambda: str(tmp_path))
    x = np.ones((2, 2, 5, 18), np.float32)
    spec = conv2d_spec(x, np.ones((2, 1, 3, 3), np.float32), None, 1, 1, 1, 2)
    source = _rowblock.module_source(spec)
    driver = _generated.load.__wrapped__(source, "nbconv_rowblock").forward
    files = list(tmp_path.glob("nbconv_rowblock_*.py"))
    assert len(files) == 1 and files[0].read_text() == source
    assert driver.py_func.__code__.co_filename == str(files[0])
    stamp = files[0].stat().st_mtime_ns
    _generated.load.__wrapped__(source, "nbconv_rowblock")
    assert files[0].stat().st_mtime_ns == stamp  # not rewritten


@pytest.mark.asm
def test_generated_kernel_vectorises(tmp_path, monkeypatch):
    """The generated row loop holds packed FMAs at the width the target gives a plain loop (a
    silent 5-10x slowdown otherwise: see tests/test_cpu_codegen.py)."""
    x = np.ones((2, 2, 20, 40), np.float32)
    spec = conv2d_spec(x, np.ones((2, 1, 3, 3), np.float32), None, 1, 1, 1, 2)
    monkeypatch.setattr(_generated, "source_dir", lambda: str(tmp_path))
    driver = _generated.load.__wrapped__(_rowblock.module_source(spec), "nbconv_rowblock").forward
    rows = _rowblock.rows_per_pass(spec)
    kernel = driver.py_func.__globals__[f"_rows{rows}"]
    f32, i64 = numba.types.float32[::1], numba.types.int64
    asm = fresh_asm(kernel, (f32, i64, f32, i64, f32, i64, numba.types.float32), kernel.targetoptions)
    assert_loop_vectorised(asm, 9 * rows, kernel.targetoptions)
