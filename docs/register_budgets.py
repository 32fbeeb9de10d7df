"""Registers and spills that ptxas gives the kernels whose register estimates were corrected.

The pair reduction of the weight gradient (``ReduceKey``, strips of 4, float32) at kernel sizes
and strides around its two-blocks-per-SM threshold, and the plane kernel's small transposed
kernels (``PlaneKey``, float16 and float32), each with the launch bounds its estimate gives:
the figures in ``_reduce.REDUCE_OVERHEAD_REGISTERS``'s and ``_planes.TRANSPOSED_HALF_REGISTERS``'s
comments and in performance.md. No GPU needed: NVVM and ptxas (``pip install nvidia-cuda-nvcc``).

    NUMBA_ENABLE_CUDASIM=0 python docs/register_budgets.py
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))


def main() -> None:
    from sass import ptxas_resources

    from nbconv.cuda._compile import compile_forward, compile_reduce
    from nbconv.cuda._planes import PlaneKey, launch_bounds
    from nbconv.cuda._reduce import ReduceKey, reduce_launch_bounds

    print("| kernel | blocks/SM of 256 | registers | spilled bytes |\n|---|---:|---:|---:|")
    for k, s, strip in [((3, 3), (1, 1), 4), ((3, 3), (2, 2), 4), ((3, 3), (3, 3), 4), ((4, 4), (1, 1), 4),
                        ((4, 4), (2, 2), 4), ((2, 2), (2, 2), 4), ((5, 5), (1, 1), 4)]:
        key = ReduceKey(k, s, (1, 1), 256, False, False, False, strip)
        r = ptxas_resources(compile_reduce(key, np.dtype(np.float32), (9, 0))[0], "90")[0]
        print(f"| weight grad pairs {k[0]}x{k[1]} s{s[0]} float32 | {reduce_launch_bounds(key)[1]} | "
              f"{r['registers']} | {r['spill_stores']} |")
    for k in [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (3, 1)]:
        for dtype in (np.float16, np.float32):
            key = PlaneKey(k, (1, 1), (1, 1), (32, 8, 1), 4, 1, False, False, True, dtype == np.float16)
            r = ptxas_resources(compile_forward(key, np.dtype(dtype), (9, 0)), "90")[0]
            print(f"| planes, transposed {k[0]}x{k[1]} {np.dtype(dtype).name} | {launch_bounds(key)[1]} | "
                  f"{r['registers']} | {r['spill_stores']} |")


if __name__ == "__main__":
    main()
