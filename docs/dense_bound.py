"""How fast the dense layers must be for a network geometric mean, from ``nbconv bench --network``
JSON files (``--json FILE``): every layer's time by both libraries is in them.

For each file: the networks' geometric mean as measured (the median of paired pass ratios) and
of their dense (groups=1) layers alone (PyTorch's time over nbconv's, summed per network); the
geometric mean over the networks that nbconv would reach with its grouped layers as measured and
its dense layers at ``s`` x PyTorch's speed, for a few ``s``; the ``s`` that gives the target
geometric mean (issue 23's 1.3x by default); and the share of PyTorch's time that the dense
layers take. Nothing is timed here.

    python docs/dense_bound.py docs/networks-znver3-b8-96e7902.json [more.json ...] [--target 1.3]
"""

from __future__ import annotations

import argparse
import json
import math


def network_parts(result: dict) -> tuple[float, float, float, float]:
    """(PyTorch's dense seconds, PyTorch's grouped seconds, nbconv's grouped seconds, nbconv's
    dense seconds) of one network's result (each layer's median time x its count)."""
    parts = [0.0, 0.0, 0.0, 0.0]
    for layer in result["layers"]:
        theirs, ours = layer["torch_time_s"] * layer["count"], layer["time_s"] * layer["count"]
        if layer["grouped"]:
            parts[1] += theirs
            parts[2] += ours
        else:
            parts[0] += theirs
            parts[3] += ours
    return parts[0], parts[1], parts[2], parts[3]


def geomean_at(results: list[dict], dense_speed: float) -> float:
    """The networks' geometric mean with the dense layers at ``dense_speed`` x PyTorch's speed."""
    logs = []
    for result in results:
        dense, grouped, ours_grouped, _ = network_parts(result)
        logs.append(math.log((dense + grouped) / (dense / dense_speed + ours_grouped)))
    return math.exp(sum(logs) / len(logs))


def needed(results: list[dict], target: float) -> float:
    """The dense-layer speed (x PyTorch's) at which :func:`geomean_at` reaches ``target``."""
    lo, hi = 0.1, 100.0
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if geomean_at(results, mid) < target else (lo, mid)
    return hi


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="JSON files of `nbconv bench --network all --json FILE`")
    parser.add_argument("--target", type=float, default=1.3, help="the geometric mean to reach (default 1.3)")
    args = parser.parse_args(argv)
    speeds = (1.0, 1.1, 1.2, 1.3)
    print("| file | batch | measured | dense layers now | " + " | ".join(f"dense at {s:.1f}x" for s in speeds)
          + f" | dense speed for {args.target}x | dense share of PyTorch's time |")
    print("|---|---:|---:|---:|" + "---:|" * (len(speeds) + 2))
    for path in args.files:
        with open(path) as f:
            results = json.load(f)["results"]
        measured = math.exp(sum(math.log(r["speedup"]) for r in results) / len(results))
        shares, dense_now = [], []
        for r in results:
            dense, grouped, _, ours_dense = network_parts(r)
            shares.append(dense / (dense + grouped))
            dense_now.append(math.log(dense / ours_dense))
        now = math.exp(sum(dense_now) / len(dense_now))
        print(f"| {path.rsplit('/', 1)[-1]} | {results[0]['batch']} | {measured:.2f}x | {now:.2f}x | "
              + " | ".join(f"{geomean_at(results, s):.2f}x" for s in speeds)
              + f" | {needed(results, args.target):.2f}x | {min(shares):.2f}-{max(shares):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
