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
from nbconv.cpu._packed import STACK_SCRATCH_ELEMS, forward_packed, packed_geometry, weight_grad_packed
from reference import conv2d_input_reference, conv2d_reference, conv2d_weight_reference

LAYOUT_CASES = [c._replace(n=5) for c in CASES] + [
    Case(3, 12, (5, 6), 18, (3, 3), 1, 1, 1, 2),  # 9 outputs per group: two blocks of four + one
    Case(4, 4, (3, 3), 4, (3, 3), 2, 0, 1, 4),  # a 1x1 output per image
    Case(2, 4, (6, 7), 14, (3, 3), 1, 1, 1, 2),  # 7 outputs per group: a block of four + three
    Case(3, 4, (7, 7), 4, (1, 1), 2, 0, 1, 2),  # kernel width 1 with stride 2
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


@pytest.mark.parametrize("batch", [1, 2, 5, 9, 64])
@pytest.mark.parametrize("hw, c, groups", [((7, 7), 8, 8), ((14, 14), 16, 4), ((56, 56), 8, 2), ((3, 3), 512, 1)])
def test_stack_choices(batch, hw, c, groups):
    """Stacks hold at least one image, are powers of two (a few generated modules per layer
    whatever the batch), the forward's at most the batch, the weight gradient's the same for
    every batch (one module), and keep the weight gradient's scratch within its cap."""
    x = np.zeros((batch, c) + hw, np.float32)
    w = np.zeros((c, c // groups, 3, 3), np.float32)
    spec = conv2d_spec(x, w, None, padding=1, groups=groups)
    for stack in (launch.choose_stack(spec), launch.choose_weight_stack(spec)):
        assert stack >= 1
        assert stack & (stack - 1) == 0
    assert launch.choose_stack(spec) <= batch
    one = conv2d_spec(x[:1], w, None, padding=1, groups=groups)
    assert launch.choose_weight_stack(spec) == launch.choose_weight_stack(one)
    geo = packed_geometry(spec).geometry
    plane = geo.hc * geo.wc
    stack = launch.choose_weight_stack(spec)
    assert stack == 1 or spec.in_per_group * stack * plane <= STACK_SCRATCH_ELEMS


def test_stacked_public_api_and_thread_independence():
    """Through the public API with a batch that takes several stacks: forward and weight
    gradient match the reference, and the weight gradient is bit-identical with 1 and 2 threads."""
    import numba

    import nbconv

    case = Case(9, 6, (7, 7), 6, (3, 3), 1, 1, 1, 3)
    x, w, b = random_arrays(case, np.float64)
    gy = np.random.default_rng(3).standard_normal((9, 6, 7, 7))
    np.testing.assert_allclose(nbconv.conv2d(x, w, b, padding=1, groups=3),
                               conv2d_reference(x, w, b, padding=1, groups=3), rtol=1e-12, atol=1e-12)
    got = nbconv.grad.conv2d_weight(x, w.shape, gy, padding=1, groups=3)
    np.testing.assert_allclose(got, conv2d_weight_reference(x, w.shape, gy, padding=1, groups=3), rtol=1e-11, atol=1e-11)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        single = nbconv.grad.conv2d_weight(x, w.shape, gy, padding=1, groups=3)
    finally:
        numba.set_num_threads(threads)
    assert np.array_equal(got, single)


@pytest.mark.parametrize("stride", [1, 2])
def test_weight_grad_nonfinite_input_stays_exact(stride):
    """An inf or nan pixel affects only the taps that read it: the kernel's dropped columns and
    seam rows (paired with zeros) must not turn 0 * inf into NaN elsewhere."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 4, 8, 9))
    x[0, 0, 7, :] = np.inf  # with stride 2 and no padding, row 7 is read by no tap
    x[1, 3, 2, 8] = -np.inf  # last column: read by the kw = 2 taps only
    x[2, 1, 0, 0] = np.nan
    w_shape = (6, 2, 3, 3)
    gy = rng.standard_normal(conv2d_reference(np.zeros_like(x), np.zeros(w_shape), None, stride=stride, groups=2).shape)
    got = nbconv_weight_grad(x, w_shape, gy, stride)
    want = conv2d_weight_reference(x, w_shape, gy, stride=stride, groups=2)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    assert finite.any() and not finite.all()
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("where", ["unread input row", "gradient"])
def test_weight_grad_single_nonfinite_value(stride, where):
    """The kernels first run on the input as it is; a non-finite value alone (in a row no tap
    reads at stride 2, or in the output gradient) must give the reference's pattern of inf / NaN
    and its finite values."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 4, 8, 9))
    w_shape = (6, 2, 3, 3)
    gy = rng.standard_normal(conv2d_reference(np.zeros_like(x), np.zeros(w_shape), None, stride=stride, groups=2).shape)
    if where == "gradient":
        gy[1, 4, 0, 1] = np.inf
    else:
        x[2, 1, 7, 3] = np.inf
    got = nbconv_weight_grad(x, w_shape, gy, stride)
    with np.errstate(invalid="ignore"):
        want = conv2d_weight_reference(x, w_shape, gy, stride=stride, groups=2)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    assert finite.any()
    assert finite.all() == (where != "gradient" and stride == 2)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-11, atol=1e-11)


def nbconv_weight_grad(x, w_shape, gy, stride):
    import nbconv

    return nbconv.grad.conv2d_weight(x, w_shape, gy, stride=stride, groups=2)


def test_shared_padding_pitch():
    """At unit stride one row's (image's) trailing zeros are the next one's leading zeros: 14 x 14
    padded by 1 packs with pitch 15, not 16; strided dimensions keep the full padded size."""
    def geo(hw, k, stride, padding, dilation=1):
        x = np.zeros((1, 2, *hw), np.float32)
        spec = conv2d_spec(x, np.zeros((2, 1, k, k), np.float32), None, stride, padding, dilation, 2)
        geo = packed_geometry(spec).geometry
        return geo.hc, geo.wc
    assert geo((14, 14), 3, 1, 1) == (15, 15)
    assert geo((14, 9), 5, 1, 2) == (16, 11)
    assert geo((14, 14), 3, 1, (0, 2)) == (14, 16)  # zero padding above: no sharing needed below
    assert geo((7, 7), 3, 1, 5) == (15, 15)  # more padding than the kernel reaches: the outputs set it
    assert geo((14, 14), 3, 2, 1) == (8, 8)  # stride 2: phase planes of the 16 x 16 padded plane
