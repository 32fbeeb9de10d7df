"""nbconv.Conv2d: PyTorch's constructor, defaults and state_dict; a torchvision-style block of
nbconv layers loaded from PyTorch's gives PyTorch's outputs and gradients."""

from __future__ import annotations

import numpy as np
import pytest

import nbconv


def _torch_block(torch):
    """An inverted-residual block (MobileNetV2 / ResNeXt style): 1x1 expand, 3x3 depthwise stride 2
    with multiplier 2 and a bias, grouped 1x1 project with 'same'-style padding forms."""
    torch.manual_seed(0)
    nn = torch.nn
    return [
        nn.Conv2d(8, 24, 1, bias=False),
        nn.Conv2d(24, 48, 3, stride=2, padding=1, groups=24),
        nn.Conv2d(48, 16, (3, 1), padding="same", groups=4, bias=False),
        nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=2),
        nn.Conv2d(16, 16, 3, padding=1, groups=16, padding_mode="reflect"),
        nn.Conv2d(16, 8, (3, 5), stride=(1, 2), padding=(1, 2), groups=8, padding_mode="circular", bias=False),
        nn.Conv2d(8, 8, 3, padding="same", groups=2, padding_mode="replicate"),
    ]


def test_block_matches_pytorch_forward_and_backward():
    torch = pytest.importorskip("torch")
    modules = [m.double() for m in _torch_block(torch)]
    layers = [nbconv.Conv2d.from_torch(m) for m in modules]
    x = np.random.default_rng(1).standard_normal((2, 8, 15, 14))
    tx = torch.from_numpy(x).requires_grad_()
    ty, y = tx, x
    for m, layer in zip(modules, layers):
        ty, y = m(ty), layer(y)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    gy = np.random.default_rng(2).standard_normal(y.shape)
    ty.backward(torch.from_numpy(gy))
    g = gy
    for layer in reversed(layers):
        g = layer.backward(g)
    np.testing.assert_allclose(g, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    for m, layer in zip(modules, layers):
        np.testing.assert_allclose(layer.weight_grad, m.weight.grad.numpy(), rtol=1e-10, atol=1e-10)
        if m.bias is None:
            assert layer.bias is None and layer.bias_grad is None
        else:
            np.testing.assert_allclose(layer.bias_grad, m.bias.grad.numpy(), rtol=1e-10, atol=1e-10)


def test_state_dict_round_trip_and_torch_tensors():
    torch = pytest.importorskip("torch")
    m = torch.nn.Conv2d(6, 12, 3, padding=1, groups=3)
    layer = nbconv.Conv2d(6, 12, 3, padding=1, groups=3)
    layer.load_state_dict(m.state_dict())
    assert layer.weight.dtype == np.float32 and layer.weight.flags.c_contiguous
    m2 = torch.nn.Conv2d(6, 12, 3, padding=1, groups=3)
    m2.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    x = torch.randn(1, 6, 9, 9)
    np.testing.assert_allclose(m2(x).detach().numpy(), m(x).detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(layer(x.numpy()), m(x).detach().numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="conv2d: input is a torch.Tensor .* but weight is a numpy.ndarray"):
        layer(x)  # NumPy parameters take NumPy (or DLPack) inputs


def test_default_initialisation_is_pytorchs():
    """Uniform in +-1/sqrt(fan_in) for weight and bias, as torch.nn.Conv2d.reset_parameters."""
    layer = nbconv.Conv2d(16, 32, (3, 5), groups=4, rng=0)
    bound = 1 / np.sqrt(16 // 4 * 3 * 5)
    assert layer.weight.shape == (32, 4, 3, 5) and layer.bias.shape == (32,)
    for p in (layer.weight, layer.bias):
        assert np.abs(p).max() <= bound and np.abs(p).max() > 0.9 * bound
    assert abs(float(layer.weight.std()) - bound / np.sqrt(3)) < 0.1 * bound  # uniform's std
    torch = pytest.importorskip("torch")
    m = torch.nn.Conv2d(16, 32, (3, 5), groups=4)
    assert float(m.weight.detach().abs().max()) <= bound + 1e-7
    np.testing.assert_array_equal(nbconv.Conv2d(2, 2, 1, rng=5).weight, nbconv.Conv2d(2, 2, 1, rng=5).weight)


def test_repr_and_padding_forms():
    assert repr(nbconv.Conv2d(96, 256, 5, padding=2, groups=2, bias=False)) == (
        "Conv2d(96, 256, kernel_size=(5, 5), stride=(1, 1), padding=(2, 2), groups=2, bias=False)")
    layer = nbconv.Conv2d(2, 2, (2, 3), padding=((0, 1), (1, 1)), dtype=np.float64)
    assert layer(np.ones((1, 2, 4, 4))).shape == (1, 2, 4, 4)
    assert nbconv.Conv2d(2, 2, 3, padding="same")(np.ones((1, 2, 5, 5), np.float32)).shape == (1, 2, 5, 5)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(groups=3), ValueError, (r"Conv2d: groups=3 does not divide in_channels \(4\) and out_channels \(8\).*"
                                  r"allowed groups: 1, 2, 4")),
    (dict(padding_mode="mirror"), ValueError, r"Conv2d: padding_mode must be one of 'zeros', 'reflect', "),
    (dict(padding="same", stride=2), ValueError, r"Conv2d: padding='same' is not supported for strided"),
    (dict(device="tpu"), ValueError, r"Conv2d: device must be 'cpu' or 'cuda'"),
    (dict(stride=0), ValueError, r"Conv2d: stride must be positive"),
])
def test_constructor_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        nbconv.Conv2d(4, 8, 3, **kwargs)


def test_backward_needs_forward_and_state_dict_is_checked():
    layer = nbconv.Conv2d(2, 4, 3, bias=False)
    with pytest.raises(RuntimeError, match="call forward first"):
        layer.backward(np.ones((1, 4, 1, 1), np.float32))
    with pytest.raises(KeyError, match=r"expected keys \['weight'\], got \['bias', 'weight'\]"):
        layer.load_state_dict({"weight": np.ones((4, 2, 3, 3)), "bias": np.ones(4)})
    with pytest.raises(ValueError, match=r"weight has shape \(4, 1, 3, 3\), expected \(4, 2, 3, 3\)"):
        layer.load_state_dict({"weight": np.ones((4, 1, 3, 3))})
