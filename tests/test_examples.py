"""The training example runs and its loss falls (forward and backward fit together)."""

from __future__ import annotations

import importlib.util
import pathlib

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "train_grouped_cnn.py"


def _load():
    spec = importlib.util.spec_from_file_location("train_grouped_cnn", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_example_loss_falls(capsys):
    assert _load().main(["--steps", "150", "--seed", "1"]) == 0, capsys.readouterr().out


def test_training_example_gradients_match_finite_differences():
    """The example's hand-written backward pass (nbconv.grad through ReLU, pooling and softmax) is
    the gradient of its loss: one weight of each conv layer, central differences in float64."""
    import numpy as np

    ex = _load()
    rng = np.random.default_rng(3)
    net = ex.Net(rng)
    for conv in net.convs:
        conv.w = conv.w.astype(np.float64)
        conv.b = conv.b.astype(np.float64)
    net.fc_w = net.fc_w.astype(np.float64)
    x, y = ex.make_images(4, rng)
    x = x.astype(np.float64)
    net.loss(x, y)
    for conv in net.convs:
        idx = tuple(int(rng.integers(0, s)) for s in conv.w.shape)
        analytic = conv.gw[idx]
        h = 1e-6
        conv.w[idx] += h
        up, _ = net.loss(x, y, train=False)
        conv.w[idx] -= 2 * h
        down, _ = net.loss(x, y, train=False)
        conv.w[idx] += h
        assert abs((up - down) / (2 * h) - analytic) <= 1e-6 * max(1.0, abs(analytic)), (idx, analytic)
