"""Time of the generated grouped CPU kernel (``nbconv/cpu/_grouped.py``) for several register
blocks (output channels x output rows), the figures that docs/performance.md and
``_grouped.REGISTER_BUDGET`` quote:

    python docs/grouped_blocks.py [--shapes resnext_g32_14,alexnet_g2] [--batch 8]

Each block is forced in place of ``choose_block``'s choice (marked ``*``); the time is the
fastest of 15 calls after a warm-up call (compilation excluded), all threads.
"""

from __future__ import annotations

import argparse
import time

import numba
import numpy as np

import nbconv
from nbconv._shapes import SHAPES_BY_NAME
from nbconv._spec import conv2d_spec
from nbconv.cpu import _grouped

BLOCKS = [(4, 4), (2, 8), (2, 5), (2, 4), (1, 8), (1, 4), (1, 3)]


def _best_ms(fn, reps: int = 15) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="resnext_g32_14,alexnet_g2")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    chosen_fn = _grouped.choose_block
    print(f"generated grouped kernel, batch {args.batch}, float32, {numba.get_num_threads()} threads (ms)")
    for name in args.shapes.split(","):
        shape = SHAPES_BY_NAME[name]
        rng = np.random.default_rng(0)
        x = rng.standard_normal(shape.input_shape(args.batch), dtype=np.float32)
        w = rng.standard_normal(shape.weight_shape(), dtype=np.float32)
        chosen = chosen_fn(conv2d_spec(x, w, None, **shape.conv_args()))
        cells = []
        for block in BLOCKS + ([chosen] if chosen not in BLOCKS else []):
            _grouped.choose_block = lambda spec, block=block: block
            _grouped._module.cache_clear()
            ms = _best_ms(lambda: nbconv.conv2d(x, w, None, **shape.conv_args()))
            cells.append(f"{block[0]}x{block[1]}{'*' if block == chosen else ''} {ms:.2f}")
        _grouped.choose_block = chosen_fn
        _grouped._module.cache_clear()
        print(f"  {name:16s} " + "  ".join(cells))


if __name__ == "__main__":
    main()
