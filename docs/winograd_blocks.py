"""Time the Winograd CPU path (best of 15 calls) for register blocks and output-channel blocks, or
against the direct grouped kernel. Run: ``python docs/winograd_blocks.py`` (alexnet_g2's blocks)
or ``python docs/winograd_blocks.py --against-direct``."""

from __future__ import annotations

import sys
import time

import numpy as np

from nbconv._spec import conv2d_spec
from nbconv.cpu import _grouped, _launch, _winograd

AGAINST_DIRECT = [(8, 96, 27, 256, 5, 2), (8, 256, 27, 96, 5, 2), (8, 64, 28, 64, 3, 1), (8, 64, 56, 64, 3, 1),
                  (8, 32, 32, 32, 3, 1), (8, 256, 14, 256, 3, 8), (3, 64, 13, 96, 3, 1), (1, 256, 7, 256, 3, 1)]
BLOCKS = [(16, 4, 6, 128), (16, 4, 4, 128), (16, 2, 12, 128), (8, 4, 6, 128), (16, 8, 3, 128), (16, 4, 6, 64)]


def best_ms(fn, reps: int = 15) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def problem(n, c, hw, o, k, g):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
    w = rng.standard_normal((o, c // g, k, k)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    spec = conv2d_spec(x, w, b, padding=k // 2, groups=g)
    return x, w, b, np.empty(spec.output_shape, np.float32), spec


def main() -> None:
    if "--against-direct" in sys.argv:
        for shape in AGAINST_DIRECT:
            x, w, b, out, spec = problem(*shape)
            wino = best_ms(lambda: _winograd.winograd_forward(x, w, b, out, spec))
            direct = best_ms(lambda: _grouped.grouped_forward(x, w, b, out, spec, _launch.choose_stack(spec)))
            print(f"{shape}: Winograd {wino:.3f} ms, direct {direct:.3f} ms, {direct / wino:.2f}x")
        return
    x, w, b, out, spec = problem(8, 96, 27, 256, 5, 2)
    for tb, tt, kc, ob in BLOCKS:
        _winograd.TB, _winograd.TT, _winograd.MAX_KC, _winograd.MAX_OUT_BLOCK = tb, tt, kc, ob
        _winograd._module.cache_clear()
        ms = best_ms(lambda: _winograd.winograd_forward(x, w, b, out, spec))
        print(f"TB {tb}, TT {tt}, KC {kc}, output block {ob}: {ms:.3f} ms")


if __name__ == "__main__":
    main()
