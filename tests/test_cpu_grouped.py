"""The register-blocked grouped CPU path (``nbconv.cpu._grouped``): generated per geometry, so each
feature (output-channel blocks and their remainder, row blocks past the output, slices of a
group's channels across tasks, stride phases, dilation, input dilation and cropping, widths that
are not whole vectors) is checked against the reference here."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nbconv
from cases import Case, at_each_thread_count, check_path_forward, random_arrays
from nbconv._spec import conv2d_input_spec, conv2d_spec
from nbconv.cpu import _grouped
from nbconv.cpu._launch import conv2d_forward
from reference import assert_conv_close, conv2d_input_reference, conv2d_reference

#: the small cases here must reach the generated kernels (``MIN_GENERATED_MACS``)
pytestmark = pytest.mark.usefixtures("generated_for_small_calls")


GROUPED_CASES = [
    Case(2, 8, (9, 20), 8, (3, 3), 1, 1, 1, 2),  # 4 -> 4 per group: blocks of 2
    Case(2, 6, (11, 7), 15, (3, 3), 1, 1, 1, 3),  # 2 -> 5 per group: a remainder block of 1
    Case(1, 4, (2, 18), 6, (3, 3), 1, 1, 1, 1),  # dense, 2 output rows: fewer than a row block
    Case(2, 8, (17, 19), 8, (3, 3), 2, 1, 1, 2),  # stride 2: phase planes
    Case(2, 6, (12, 13), 9, (3, 2), (2, 1), (0, 1), (1, 2), 3),  # mixed stride, padding, dilation
    Case(1, 4, (13, 15), 8, (5, 5), 1, 2, 1, 2, False),  # 5x5: 1 channel x 3 rows per block
    Case(2, 8, (10, 10), 16, (1, 2), 1, 0, 1, 2),  # 1x2: no row sharing
    Case(1, 3, (12, 12), 2, (7, 7), 1, "same", 1, 1),  # 49 taps: over the register budget
    Case(2, 4, (7, 9), 12, (3, 3), 1, 1, 1, 4),  # depthwise x 3 under 16 columns (not _rowblock's)
]


@pytest.mark.parametrize("case,dtype", [(c, np.float64) for c in GROUPED_CASES] + [(GROUPED_CASES[1], np.float32)],
                         ids=str)
def test_grouped_forward(case, dtype):
    check_path_forward(_grouped.applies, _grouped.grouped_forward, case, dtype)


@pytest.mark.parametrize("stack,case", [(2, GROUPED_CASES[1]), (3, GROUPED_CASES[4])], ids=str)
def test_stacked_images(case, stack):
    """Images stacked in the packed planes (seam rows dropped); with 3 a short last stack of 2
    images whose unused slot holds the previous stack's pixels."""
    case = case._replace(n=5)
    x, w, b = random_arrays(case, np.float64)
    spec = conv2d_spec(x, w, b, **case.conv_args())
    out = np.full(spec.output_shape, np.nan)
    _grouped.grouped_forward(x, w, b, out, spec, stack)
    assert_conv_close(out, x, w, b, **case.conv_args())


@pytest.mark.parametrize("slices", [2, 6])
def test_group_slices(slices):
    """A group's output channels split into slices, one task each (few (image, group) pairs)."""
    case = Case(1, 4, (9, 17), 22, (3, 3), 1, 1, 1, 2)  # 11 outputs per group: blocks of 2 + 1
    x, w, b = random_arrays(case, np.float64)
    spec = conv2d_spec(x, w, b, **case.conv_args())
    out = np.full(spec.output_shape, np.nan)
    _grouped.grouped_forward(x, w, b, out, spec, 1, slices)
    assert_conv_close(out, x, w, b, **case.conv_args())
    # at most one per block (6 here)
    assert _grouped.oc_slices(spec, 1, 1) == 2 and _grouped.oc_slices(spec, 64, 1) == 6


def test_one_module_for_every_batch():
    """The launcher's stacks and slices for batches 1 to 9 all run in one generated module (its
    source does not depend on the batch): a training loop's short last batch compiles nothing."""
    from nbconv.cpu._launch import choose_stack

    case = Case(1, 8, (7, 9), 8, (3, 3), 1, 1, 1, 2)
    sources = set()
    for n in (1, 2, 3, 5, 8, 9):
        x, w, b = random_arrays(case._replace(n=n), np.float64, seed=n)
        spec = conv2d_spec(x, w, b, **case.conv_args())
        assert _grouped.applies(spec)
        stack = choose_stack(spec)
        assert stack <= _grouped.layout_stack(spec)
        sources.add(_grouped.module_source(spec, max(stack, _grouped.layout_stack(spec))))
        out = np.full(spec.output_shape, np.nan)
        _grouped.grouped_forward(x, w, b, out, spec, stack)
        assert_conv_close(out, x, w, b, **case.conv_args())
    assert len(sources) == 1 and _grouped.layout_stack(spec) > 1


@pytest.mark.parametrize("value", [np.inf, np.nan])
def test_non_finite_pixels_reach_only_their_outputs(value):
    """Planes share their zero padding (pitch W + 1 here), and the columns past the output width
    are computed from the next row's pixels and dropped: a non-finite pixel at a plane's edge
    must still reach only the outputs whose taps read it."""
    case = Case(2, 6, (7, 7), 6, (3, 3), 1, 1, 1, 3)
    x, w, b = random_arrays(case, np.float64)
    x[0, 2, 6, 6] = value  # last pixel of a plane: the next plane starts one zero row later
    x[1, 5, 0, 0] = value  # first pixel of the last plane of the array
    x[1, 1, 3, 0] = value  # first column: the previous row's dropped columns read it
    assert _grouped.applies(conv2d_spec(x, w, b, **case.conv_args()))
    got = nbconv.conv2d(x, w, b, **case.conv_args())
    want = conv2d_reference(x, w, b, **case.conv_args())
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride,padding,dilation", [(2, 1, 1), (3, 0, 2)])
def test_input_gradient_through_the_path(stride, padding, dilation):
    """Input dilation and cropping in the generated pack, flipped and transposed weights."""
    case = Case(2, 4, (19, 17), 6, (3, 3), stride, padding, dilation, 2)
    x, w, _ = random_arrays(case, np.float64)
    gy = np.random.default_rng(1).standard_normal(nbconv.conv2d(x, w, None, **case.conv_args()).shape)
    spec = conv2d_input_spec(x.shape, w, gy, **case.conv_args())
    assert _grouped.applies(spec)
    out = np.full(x.shape, np.nan)
    conv2d_forward(spec, gy, w, None, out)
    np.testing.assert_allclose(out, conv2d_input_reference(x.shape, w, gy, **case.conv_args()), rtol=1e-12, atol=1e-12)


def test_block_choice():
    def spec(c_in, c_out, k, groups, hw=28):
        x = np.zeros((8, c_in, hw, hw), np.float32)
        return conv2d_spec(x, np.zeros((c_out, c_in // groups, k, k), np.float32), None, 1, k // 2, 1, groups)
    for s in (spec(128, 128, 3, 32), spec(96, 256, 5, 2), spec(64, 64, 2, 4)):
        ob, rows = _grouped.choose_block(s)
        assert ob * (rows + s.kernel_size[0] * s.kernel_size[1]) <= _grouped.REGISTER_BUDGET
    assert _grouped.choose_block(spec(128, 128, 3, 32)) == (2, 5)  # 10 sums + 18 weights
    assert _grouped.choose_block(spec(96, 256, 5, 2)) == (1, 3)  # 3 sums + 25 weights
    assert _grouped.choose_block(spec(8, 8, 7, 2)) == (1, 4)  # 49 taps fit no block
    assert _grouped.choose_block(spec(8, 8, 3, 2, hw=2)) == (2, 2)  # no more rows than the output
    assert not _grouped.applies(spec(64, 64, 1, 4))  # 1x1: the packed kernel
    assert not _grouped.applies(spec(8, 8, 9, 2))  # 81 taps


@settings(max_examples=3, deadline=None)
@given(n=st.integers(1, 2), g=st.integers(1, 2), cin_g=st.integers(2, 3), cout_g=st.integers(1, 5),
       h=st.integers(1, 9), wd=st.integers(1, 20), k=st.integers(1, 4), s=st.integers(1, 2), pad=st.integers(0, 2))
def test_grouped_property(n, g, cin_g, cout_g, h, wd, k, s, pad):
    case = Case(n, g * cin_g, (h + k - 1, wd + k - 1), g * cout_g, (k, k), s, pad, 1, g)
    x, w, b = random_arrays(case, np.float64)
    spec = conv2d_spec(x, w, b, **case.conv_args())
    out = np.full(spec.output_shape, np.nan)
    _grouped.grouped_forward(x, w, b, out, spec, 1 + n % 2)
    assert_conv_close(out, x, w, b, **case.conv_args())


@pytest.mark.parametrize("case", [
    Case(3, 8, (9, 20), 8, (3, 3), 1, 1, 1, 2),  # _grouped
    Case(3, 4, (9, 20), 8, (3, 3), 2, 1, 1, 4),  # _rowblock
    Case(3, 8, (7, 7), 16, (3, 3), 1, 1, 1, 8),  # _grouped, depthwise with a multiplier
    Case(3, 8, (7, 7), 8, (3, 3), 1, 1, 1, 8),  # _channels_last
], ids=str)
def test_generated_kernels_do_not_depend_on_the_thread_count(case):
    """Which kernel runs and the order of every sum are fixed by the spec: bit-identical results."""
    x, w, b = random_arrays(case, np.float32)
    one, two = at_each_thread_count(lambda: nbconv.conv2d(x, w, b, **case.conv_args()))
    np.testing.assert_array_equal(one, two)
