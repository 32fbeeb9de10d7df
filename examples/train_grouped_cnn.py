"""Train a small grouped/depthwise CNN with plain NumPy + nbconv: forward and backward fit together.

The data are synthetic 16x16 images of bars in one of four orientations (horizontal, vertical and
the two diagonals) under noise, with random position and contrast; the task is to name the
orientation. The network:

    conv2d 1 -> 8, 3x3                          (dense)           + ReLU
    conv2d 8 -> 16, 3x3, stride 2, groups=8     (depthwise, channel multiplier 2) + ReLU
    conv2d 16 -> 16, 1x1, groups=4              (grouped pointwise) + ReLU
    global average pool, linear 16 -> 4, softmax cross-entropy

Every convolution's backward pass is ``nbconv.grad.conv2d_input`` / ``conv2d_weight`` /
``conv2d_bias``; the optimiser is SGD with momentum. Run it (under a minute on a 2-core CPU, JIT
compilation included):

    python examples/train_grouped_cnn.py [--steps 300] [--batch 32] [--seed 0]

It prints the loss as it falls and the accuracy on held-out images, and exits with status 1 if
the final training loss is not below half of the first one.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import nbconv
from nbconv import grad

CLASSES = 4
SIZE = 16


def make_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n noisy 1x16x16 images of bars in one of four orientations, and their labels."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    labels = rng.integers(0, CLASSES, n)
    images = np.empty((n, 1, SIZE, SIZE), np.float32)
    for i, label in enumerate(labels):
        coord = (yy, xx, yy + xx, yy - xx)[label]
        period = rng.integers(4, 7)
        phase = rng.integers(0, period)
        bars = ((coord + phase) % period == 0).astype(np.float32)
        images[i, 0] = rng.uniform(0.5, 1.5) * bars + 0.4 * rng.standard_normal((SIZE, SIZE))
    return images, labels


class Conv:
    """One conv2d layer: parameters, momentum buffers, and its forward/backward with nbconv."""

    def __init__(self, c_in, c_out, k, rng, stride=1, padding=0, groups=1):
        fan_in = c_in // groups * k * k
        self.w = (rng.standard_normal((c_out, c_in // groups, k, k)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        self.b = np.zeros(c_out, np.float32)
        self.args = dict(stride=stride, padding=padding, groups=groups)
        self.vw, self.vb = np.zeros_like(self.w), np.zeros_like(self.b)

    def forward(self, x):
        self.x = x
        return nbconv.conv2d(x, self.w, self.b, **self.args)

    def backward(self, gy, input_grad=True):
        self.gw = grad.conv2d_weight(self.x, self.w.shape, gy, **self.args)
        self.gb = grad.conv2d_bias(gy)
        return grad.conv2d_input(self.x.shape, self.w, gy, **self.args) if input_grad else None

    def step(self, lr, momentum):
        self.vw = momentum * self.vw - lr * self.gw
        self.vb = momentum * self.vb - lr * self.gb
        self.w += self.vw
        self.b += self.vb


class Net:
    def __init__(self, rng):
        self.convs = [
            Conv(1, 8, 3, rng, padding=1),
            Conv(8, 16, 3, rng, stride=2, padding=1, groups=8),  # depthwise, multiplier 2
            Conv(16, 16, 1, rng, groups=4),  # grouped pointwise
        ]
        self.fc_w = (rng.standard_normal((16, CLASSES)) * np.sqrt(1.0 / 16)).astype(np.float32)
        self.fc_b = np.zeros(CLASSES, np.float32)
        self.v_fc_w, self.v_fc_b = np.zeros_like(self.fc_w), np.zeros_like(self.fc_b)

    def loss(self, x, labels, train=True):
        """Mean cross-entropy and the predictions; with ``train``, also the gradients."""
        masks = []
        for conv in self.convs:
            x = conv.forward(x)
            masks.append(x > 0)
            x = np.maximum(x, 0)
        pooled = x.mean(axis=(2, 3))
        logits = pooled @ self.fc_w + self.fc_b
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        n = len(labels)
        loss = float(-np.log(p[np.arange(n), labels] + 1e-12).mean())
        predictions = p.argmax(axis=1)
        if train:
            g = p.copy()
            g[np.arange(n), labels] -= 1
            g /= n
            self.g_fc_w, self.g_fc_b = pooled.T @ g, g.sum(axis=0)
            gx = np.broadcast_to((g @ self.fc_w.T)[:, :, None, None] / (x.shape[2] * x.shape[3]), x.shape)
            for i in reversed(range(len(self.convs))):  # the first layer needs no input gradient
                gx = self.convs[i].backward(np.ascontiguousarray(gx * masks[i]), input_grad=i > 0)
        return loss, predictions

    def step(self, lr, momentum=0.9):
        for conv in self.convs:
            conv.step(lr, momentum)
        self.v_fc_w = momentum * self.v_fc_w - lr * self.g_fc_w
        self.v_fc_b = momentum * self.v_fc_b - lr * self.g_fc_b
        self.fc_w += self.v_fc_w
        self.fc_b += self.v_fc_b


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    net = Net(rng)
    x_test, y_test = make_images(512, rng)
    t0 = time.perf_counter()
    first = window = None
    losses = []
    for step in range(1, args.steps + 1):
        x, y = make_images(args.batch, rng)
        loss, _ = net.loss(x, y)
        net.step(args.lr)
        losses.append(loss)
        if first is None:
            first = loss
        if step % 25 == 0 or step == args.steps:
            window = float(np.mean(losses[-25:]))
            print(f"step {step:4d}  loss {window:.3f}  ({time.perf_counter() - t0:.1f} s)", flush=True)
    _, pred = net.loss(x_test, y_test, train=False)
    accuracy = float((pred == y_test).mean())
    print(f"first loss {first:.3f}, last 25 steps {window:.3f}; held-out accuracy {accuracy:.1%} "
          f"(chance {1 / CLASSES:.0%}); {time.perf_counter() - t0:.1f} s")
    return 0 if window < 0.5 * first else 1


if __name__ == "__main__":
    sys.exit(main())
