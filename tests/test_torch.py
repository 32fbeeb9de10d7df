"""Same numbers as torch.nn.functional.conv2d (only when PyTorch is installed)."""

from __future__ import annotations

import numpy as np
import pytest

import nbconv
from cases import CASES, random_arrays
from nbconv._shapes import EXTRA_SHAPES, STANDARD_SHAPES

torch = pytest.importorskip("torch")


def _conv(x, w, b, padding=0, **kw):
    """F.conv2d on tensors; per-side padding ((top, bottom), (left, right)), which PyTorch's conv2d
    does not take, as F.pad first."""
    if not isinstance(padding, (int, str)) and not isinstance(padding[0], int):
        (t, bottom), (left, right) = padding
        return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (left, right, t, bottom)), w, b, **kw)
    return torch.nn.functional.conv2d(x, w, b, padding=padding, **kw)


def torch_conv2d(x, w, b, **kw):
    t = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return _conv(t(x), t(w), t(b), **kw).numpy()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_torch(case, dtype):
    x, w, b = random_arrays(case, dtype)
    got = nbconv.conv2d(x, w, b, **case.conv_args())
    want = torch_conv2d(x, w, b, **case.conv_args())
    assert got.shape == want.shape
    rtol = 1e-4 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("shape", STANDARD_SHAPES + EXTRA_SHAPES, ids=lambda s: s.name)
def test_bench_shapes_match_torch(shape):
    """float32 at full size, unscaled N(0, 1) data: outputs reach ~150 on alexnet_g2 (1200 terms).
    Compared relative to the largest output (1e-5: Winograd's transforms on 5x5 round to ~4e-6 of
    it, the direct sums to ~2e-7; a term left out is off by ~1e-2)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape.input_shape(1)).astype(np.float32)
    w = rng.standard_normal(shape.weight_shape()).astype(np.float32)
    got = nbconv.conv2d(x, w, **shape.conv_args()).astype(np.float64)
    want = torch_conv2d(x, w, None, **shape.conv_args()).astype(np.float64)
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


# gradients: the same numbers as PyTorch's autograd through F.conv2d and F.conv_transpose2d


def _autograd(fn, *tensors):
    """Gradients of <fn(*tensors), gy> with respect to every tensor, gy random; (y, gy, grads)."""
    leaves = [torch.from_numpy(np.ascontiguousarray(a)).requires_grad_(True) for a in tensors]
    y = fn(*leaves)
    gy = torch.from_numpy(np.random.default_rng(7).standard_normal(tuple(y.shape)))
    grads = torch.autograd.grad(y, leaves, gy)
    return y.detach().numpy(), gy.numpy(), [g.numpy() for g in grads]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_conv2d_gradients_match_autograd(case):
    x, w, b = random_arrays(case, np.float64)
    b = b if b is not None else np.zeros(case.c_out)
    args = case.conv_args()
    _, gy, (gx, gw, gb) = _autograd(lambda x, w, b: _conv(x, w, b, **args), x, w, b)
    np.testing.assert_allclose(nbconv.grad.conv2d_input(x.shape, w, gy, **args), gx, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(nbconv.grad.conv2d_weight(x, w.shape, gy, **args), gw, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(nbconv.grad.conv2d_bias(gy), gb, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize(
    "n, c_in, hw, c_out, k, stride, padding, output_padding, groups, dilation",
    [
        (2, 4, (5, 6), 6, (3, 3), 1, 1, 0, 2, 1),
        (1, 4, (4, 5), 8, (3, 3), 2, 1, 1, 4, 1),  # depthwise, multiplier 2, stride 2
        (2, 6, (5, 4), 3, (3, 2), (2, 3), (1, 0), (1, 2), 3, (1, 2)),
    ],
)
def test_conv_transpose2d_and_its_gradients_match_autograd(n, c_in, hw, c_out, k, stride, padding, output_padding,
                                                            groups, dilation):
    """conv_transpose2d's output, and its input/weight gradients (which are conv2d and
    grad.conv2d_weight with the roles swapped), against autograd through F.conv_transpose2d."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c_in) + hw)
    w = rng.standard_normal((c_in, c_out // groups) + k)
    b = rng.standard_normal(c_out)
    args = dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups, dilation=dilation)
    y, gy, (gx, gw, gb) = _autograd(lambda x, w, b: torch.nn.functional.conv_transpose2d(x, w, b, **args), x, w, b)
    np.testing.assert_allclose(nbconv.conv_transpose2d(x, w, b, **args), y, rtol=1e-11, atol=1e-11)
    conv = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    # the gradient of a transposed convolution w.r.t. its input is the forward convolution
    np.testing.assert_allclose(nbconv.conv2d(gy, w, **conv), gx, rtol=1e-11, atol=1e-11)
    # ... and w.r.t. its weight, the conv2d weight gradient with input and output swapped
    np.testing.assert_allclose(nbconv.grad.conv2d_weight(gy, w.shape, x, **conv), gw, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(nbconv.grad.conv2d_bias(gy), gb, rtol=1e-11, atol=1e-11)
