"""Resident memory of one process that meets many layer geometries: ``--count`` random
depthwise, 1x1 and stem layers (the kinds whose CPU kernels take every size at run time: a new
geometry compiles nothing), then as many random grouped 3x3 layers (``--grouped``; kernels
generated per geometry), each called once, float32. Prints the resident set size (``VmRSS``)
before, after the size-generic kinds, and after the grouped ones, each read with the script's own
arrays released (what stays is nbconv's, Numba's and the compiler's), and the generated modules
loaded. With empty caches, kernels are compiled by a helper process (``nbconv._compile_process``)
and loaded here from the disk cache; the helper's largest resident size is printed too (it exits
when idle). ``NBCONV_COMPILE_PROCESS=0`` compiles them in this process. Linux only
(``/proc/self/status``)::

    python docs/geometry_memory.py [--count 200] [--grouped 0] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def random_layer(rng: np.random.Generator, kind: int):
    """Input, weight and keyword arguments of one random layer: ``kind`` 0 depthwise (3x3 or 5x5,
    stride 1 or 2, multiplier 1 or 2), 1 a 1x1, 2 a stem (3 channels, 3x3 or 7x7 at stride 2),
    3 a grouped 3x3 (2, 4, 8 or 32 groups); float32, made without float64 copies."""
    def normal(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    n = int(rng.integers(1, 9))
    if kind == 3:
        side, g = int(rng.integers(7, 57)), int(rng.choice([2, 4, 8, 32]))
        c = g * int(rng.integers(2, 9))
        return normal(n, c, side, side), normal(c, c // g, 3, 3), {"padding": 1, "groups": g}
    side = int(rng.integers(7, 113))
    if kind == 0:
        c, k, s, m = int(rng.integers(8, 257)), int(rng.choice([3, 5])), int(rng.integers(1, 3)), int(rng.integers(1, 3))
        return normal(n, c, side, side), normal(c * m, 1, k, k), {"stride": s, "padding": k // 2, "groups": c}
    if kind == 1:
        c, o = int(rng.integers(8, 257)), int(rng.integers(8, 257))
        return normal(n, c, side, side), normal(o, c, 1, 1), {}
    k, o = int(rng.choice([3, 7])), int(rng.integers(8, 65))
    return normal(n, 3, side, side), normal(o, 3, k, k), {"stride": 2, "padding": k // 2}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--grouped", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args(argv)
    import nbconv
    from nbconv import _compile_process

    rng = np.random.default_rng(a.seed)
    start = rss_mib()
    for i in range(a.count):
        x, w, args = random_layer(rng, i % 3)
        nbconv.conv2d(x, w, **args)
        del x, w
    generic = rss_mib()
    for _ in range(a.grouped):
        x, w, args = random_layer(rng, 3)
        nbconv.conv2d(x, w, **args)
        del x, w
    end = rss_mib()
    modules = sum(1 for name in sys.modules if name.startswith("nbconv_"))
    print(f"resident: {start:.0f} MiB at start, {generic:.0f} MiB after {a.count} size-generic layers, "
          f"{end:.0f} MiB after {a.grouped} grouped layers; {modules} generated modules loaded")
    helper = _compile_process.helper
    if helper.started:
        print(f"compile helper process: {helper.compiled} kernels compiled there, {helper.started} started, "
              f"largest {helper.peak_mib:.0f} MiB resident (it exits when idle {_compile_process.IDLE_SECONDS:.0f} s, "
              f"or above {_compile_process.MAX_HELPER_MIB:.0f} MiB after a compile)")
    else:
        print("compile helper process: none started (every kernel loaded from the disk cache, or compiled here: "
              f"{_compile_process.ENV}=0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
