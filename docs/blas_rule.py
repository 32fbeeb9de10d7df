"""Whole-network passes with NumPy's BLAS for every 1x1 product against ``_blas.MIN_TERMS``'s rule
(narrow products on planes under ``_blas.LARGE_PLANE`` by the kernels' own blocks), alternated in
one process, and each dense 1x1 layer's time both ways. Only meaningful where the BLAS is used:
an AVX2 target (performance.md round 21's environment variables on an AVX-512 machine).

    python docs/blas_rule.py [--batch 8] [--passes 3] [--networks regnet_y_400mf,mobilenet_v2]
"""

from __future__ import annotations

import argparse

from nbconv.bench._networks import format_layer_table, run_network_bench
from nbconv.cpu import _blas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--networks", default="regnet_y_400mf,mobilenet_v2")
    args = parser.parse_args()
    if _blas.for_products() is None:
        print("the BLAS is not used for products on this target: nothing to compare")
        return
    rule = _blas.MIN_TERMS
    for name in args.networks.split(","):
        passes, layers = {0: [], rule: []}, {}
        for _ in range(args.passes):
            for terms in (0, rule):
                _blas.MIN_TERMS = terms
                result = run_network_bench(name, batch=args.batch, rounds=11)
                passes[terms].append(result.time_s * 1e3)
                for line in format_layer_table(result).splitlines():
                    cells = [c.strip() for c in line.split("|")]
                    if len(cells) > 3 and "1x1 dense" in cells[1]:
                        layers.setdefault(cells[1], {0: [], rule: []})[terms].append(float(cells[3]))
        _blas.MIN_TERMS = rule
        print(f"\n{name}, batch {args.batch}: network ms, BLAS for all "
              f"{' / '.join(f'{t:.1f}' for t in passes[0])}; the rule {' / '.join(f'{t:.1f}' for t in passes[rule])}")
        print("| dense 1x1 layer | BLAS for all (ms) | the rule (ms) |\n|---|---:|---:|")
        for label, times in layers.items():
            print(f"| {label} | {min(times[0]):.3f} | {min(times[rule]):.3f} |")


if __name__ == "__main__":
    main()
