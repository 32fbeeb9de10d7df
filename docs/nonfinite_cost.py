"""What a diverged step costs on the CPU: each op of the standard and extra shapes on an all-NaN
and an all-inf input (the output gradient, for the input gradient) against the same op on finite
values. Interleaved medians in milliseconds, float32, NumPy arrays, the ratio to the finite call
in brackets::

    python docs/nonfinite_cost.py [--batch 8] [--rounds 9] [--shapes mbv2_dw_56,alexnet_g2]
"""

from __future__ import annotations

import argparse
import os
import sys

import numba
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _timing import interleaved_medians

import nbconv
from nbconv._shapes import EXTRA_SHAPES, STANDARD_SHAPES
from nbconv.bench._run import _cpu_model


def op_calls(shape, batch: int, rng) -> dict:
    """{op: (call on finite values, call on NaN, call on inf)} for one shape."""
    x = rng.standard_normal(shape.input_shape(batch), dtype=np.float32)
    w = rng.standard_normal(shape.weight_shape(), dtype=np.float32)
    args = shape.conv_args()
    gy = rng.standard_normal(nbconv.conv2d(x, w, **args).shape, dtype=np.float32)
    filled = {v: (np.full_like(x, v), np.full_like(gy, v)) for v in (np.nan, np.inf)}

    def forward(x_, _):
        return lambda: nbconv.conv2d(x_, w, **args)

    def input_grad(_, gy_):
        return lambda: nbconv.grad.conv2d_input(x.shape, w, gy_, **args)

    def weight_grad(x_, _):
        return lambda: nbconv.grad.conv2d_weight(x_, w.shape, gy, **args)

    return {name: tuple(make(*arrays) for arrays in ((x, gy), filled[np.nan], filled[np.inf]))
            for name, make in (("forward", forward), ("input grad", input_grad), ("weight grad", weight_grad))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--shapes", default=None, help="comma-separated shape names (default: all)")
    a = parser.parse_args(argv)
    shapes = [s for s in STANDARD_SHAPES + EXTRA_SHAPES if a.shapes is None or s.name in a.shapes.split(",")]
    rng = np.random.default_rng(0)
    print(f"{_cpu_model()}, {numba.get_num_threads()} threads, batch {a.batch}, float32, median of {a.rounds}")
    print("| shape | op | finite ms | all-NaN ms | all-inf ms |")
    print("|---|---|---:|---:|---:|")
    worst = 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        for shape in shapes:
            for op, calls in op_calls(shape, a.batch, rng).items():
                finite, nan, inf = interleaved_medians(*calls, rounds=a.rounds)
                worst = max(worst, nan / finite, inf / finite)
                print(f"| {shape.name} | {op} | {finite:.2f} | {nan:.2f} ({nan / finite:.1f}x) | "
                      f"{inf:.2f} ({inf / finite:.1f}x) |", flush=True)
    print(f"largest ratio: {worst:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
