"""The CPU kernel's task layouts: every way of cutting the work (images stacked per task, output
channels per task, four-channel register blocks and their remainder) gives the reference result.

``nbconv.conv2d`` picks one layout per shape from the thread count; these tests call the
launcher-level function with each layout explicitly, so none of them goes untested.
"""

from __future__ import annotations

import numpy as np
import pytest

from cases import CASES, Case, random_arrays
from nbconv._spec import conv2d_input_spec, conv2d_spec, conv2d_weight_spec
import nbconv.cpu._launch as launch
from nbconv.cpu._packed import forward_packed, packed_tables, tap_columns, weight_grad_packed
from reference import conv2d_input_reference, conv2d_reference, conv2d_weight_reference

LAYOUT_CASES = [c._replace(n=5) for c in CASES] + [
    Case(3, 12, (5, 6), 18, (3, 3), 1, 1, 1, 2),  # 9 outputs per group: two blocks of four + one
    Case(4, 4, (3, 3), 4, (3, 3), 2, 0, 1, 4),  # a 1x1 output per image
]


@pytest.mark.parametrize("stack", [1, 2, 3, 5])
@pytest.mark.parametrize("case", LAYOUT_CASES, ids=str)
def test_forward_layouts(case, stack):
    x, w, b = random_arrays(case, np.float64)
    b = np.zeros(case.c_out) if b is None else b
    spec = conv2d_spec(x, w, b, **case.conv_args())
    want = conv2d_reference(x, w, b, **case.conv_args())
    for oc_block in sorted({1, 3, spec.out_per_group}):
        out = np.full(spec.output_shape, np.nan)
        forward_packed(x, w, b, out, spec, oc_block, stack)
        np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12, err_msg=f"oc_block={oc_block}")


@pytest.mark.parametrize("stack", [1, 2, 3])
def test_transposed_layouts(stack, monkeypatch):
    """The input gradient (input dilation, cropping, flipped weight) with stacked images, through
    the launcher's own weight handling, with the stack forced."""
    case = Case(3, 6, (7, 8), 4, (3, 3), 2, 1, 1, 2)
    x, w, _ = random_arrays(case, np.float64)
    gy = np.random.default_rng(1).standard_normal(conv2d_reference(x, w, None, **case.conv_args()).shape)
    spec = conv2d_input_spec(x.shape, w, gy, **case.conv_args())
    monkeypatch.setattr(launch, "choose_stack", lambda spec: stack)
    out = np.full(x.shape, np.nan)
    launch.conv2d_forward(spec, gy, w, None, out)
    np.testing.assert_allclose(out, conv2d_input_reference(x.shape, w, gy, **case.conv_args()), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", LAYOUT_CASES, ids=str)
def test_tap_offsets_separate_into_rows_and_columns(case):
    x, w, b = random_arrays(case, np.float64)
    spec = conv2d_spec(x, w, b, **case.conv_args())
    for stack in (1, 3):
        _, _, tap_off, tap_rows = packed_tables(spec, stack)
        np.testing.assert_array_equal(tap_off, tap_rows[:, None] + np.array(tap_columns(spec, stack))[None, :])


@pytest.mark.parametrize("stack", [1, 2, 3, 5])
@pytest.mark.parametrize("case", LAYOUT_CASES, ids=str)
def test_weight_grad_layouts(case, stack):
    x, w, _ = random_arrays(case, np.float64)
    gy = np.random.default_rng(2).standard_normal(conv2d_reference(x, w, None, **case.conv_args()).shape)
    spec = conv2d_weight_spec(x, w.shape, gy, **case.conv_args())
    want = conv2d_weight_reference(x, w.shape, gy, **case.conv_args())
    for oc_block in sorted({1, 3, spec.out_per_group}):
        out = np.full(w.shape, np.nan)
        weight_grad_packed(x, gy, out, spec, oc_block, stack)
        np.testing.assert_allclose(out, want, rtol=1e-11, atol=1e-11, err_msg=f"oc_block={oc_block}")
