"""Seconds of one weight gradient under Numba's CUDA simulator, by the interpreter's thread switch
interval (``sys.setswitchinterval``), and whether it matches the reference (no GPU needed).

The simulator runs each CUDA thread of a block as a Python thread, and the launching thread polls
them in a loop that holds the GIL for a whole switch interval; the root ``conftest.py`` sets the
interval its tests run at (``SIMULATOR_SWITCH_INTERVAL``) and creates the simulator's shared
arrays under a lock, as here. The problem is ``tests/cases.py`` ``CASES[1]`` in float32 (the pair
kernel: 12 blocks of 32 threads).

    python docs/simulator_switch_interval.py                  # 5, 1, 0.3, 0.1, 0.05, 0.01 ms
    python docs/simulator_switch_interval.py 50 5             # intervals in ms (50: about 3 minutes)
"""

from __future__ import annotations

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import numpy as np  # noqa: E402
from cases import CASES, random_arrays, to_backend, to_host  # noqa: E402
from reference import conv2d_weight_reference  # noqa: E402

import conftest  # noqa: E402  (the simulator's set-up of the test suite)
import nbconv  # noqa: E402
from nbconv._spec import conv2d_spec  # noqa: E402


def main(argv: list[str]) -> None:
    intervals_ms = [float(a) for a in argv] or [5, 1, 0.3, 0.1, 0.05, 0.01]
    case = CASES[1]
    x, w, _ = random_arrays(case, np.float32)
    spec = conv2d_spec(x, w, None, **case.conv_args())
    gy = np.random.default_rng(1).standard_normal(spec.output_shape).astype(np.float32)
    want = conv2d_weight_reference(x, w.shape, gy, **case.conv_args())
    xd, gyd = to_backend(x, "cuda"), to_backend(gy, "cuda")
    nbconv.grad.conv2d_weight(xd, w.shape, gyd, **case.conv_args())  # kernels built, plans made
    print(f"weight gradient of {case} (float32) under the simulator; conftest.py's interval: "
          f"{conftest.SIMULATOR_SWITCH_INTERVAL * 1e3:g} ms\n")
    print("| switch interval (ms) | seconds | matches the reference |\n|---:|---:|---|")
    for ms in intervals_ms:
        sys.setswitchinterval(ms / 1e3)
        t0 = time.perf_counter()
        got = to_host(nbconv.grad.conv2d_weight(xd, w.shape, gyd, **case.conv_args()))
        seconds = time.perf_counter() - t0
        ok = np.allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
        print(f"| {ms:g} | {seconds:.1f} | {'yes' if ok else 'NO'} |", flush=True)
    sys.setswitchinterval(conftest.SIMULATOR_SWITCH_INTERVAL)


if __name__ == "__main__":
    main(sys.argv[1:])
