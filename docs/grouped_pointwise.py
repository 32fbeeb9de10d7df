"""Grouped 1x1 layers at many channel counts per group, against PyTorch (forward, float32).

4 and 8 groups of 1, 2, 3, 5, 6, 7, 12, 20, 24 and 40 channels each, and 64 groups of 1 and 2
(a depthwise 1x1, with a multiplier of 2), on 28 x 28, 14 x 14 and 7 x 7 planes (``--planes``):
issue 23 asks for every grouped 1x1 layer at 1.0x PyTorch or more, whatever its
channels per group. Each layer is timed by ``nbconv bench``'s own function (interleaved with
``F.conv2d``, the median of paired ratios). Prints one row per layer and the lowest.

    python docs/grouped_pointwise.py [--batch 8] [--rounds 7] [--planes 28,14,7]

Set ``NUMBA_CPU_NAME`` and the other variables of performance.md's round 21 to time the AVX2
code against PyTorch on AVX2.
"""

from __future__ import annotations

import argparse

from nbconv._shapes import Shape
from nbconv.bench._run import bench_shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--planes", default="28,14,7", help="plane sides, comma-separated")
    args = parser.parse_args()
    print(f"| layer (batch {args.batch}) | nbconv ms | GFLOP/s | PyTorch ms | speedup |\n|---|---:|---:|---:|---:|")
    rows = []
    for per_group in (1, 2, 3, 5, 6, 7, 12, 20, 24, 40):
        for groups in (4, 8, 64) if per_group <= 2 else (4, 8):
            for hw in (int(side) for side in args.planes.split(",")):
                c = per_group * groups
                shape = Shape(f"{c} -> {c} 1x1 g{groups} ({per_group} a group) @{hw}", c, hw, c, 1, 1, 0, groups)
                r = bench_shape(shape, args.batch, "float32", "cpu", args.rounds)
                rows.append((r.speedup, shape.name))
                print(f"| {shape.name} | {r.time_s * 1e3:.3f} | {r.gflops:.1f} | {r.torch_time_s * 1e3:.3f} | "
                      f"{r.speedup:.2f}x |", flush=True)
    low = min(rows)
    print(f"\nlowest: {low[1]} {low[0]:.2f}x")


if __name__ == "__main__":
    main()
