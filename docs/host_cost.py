"""Host time of one nbconv call on CuPy arrays, by launch path, against PyTorch (needs a GPU).

A tiny depthwise conv (1 x 32 x 8 x 8, 3x3), 2000 calls without synchronisation: the time is
the host's (validation, dispatch, argument packing, the launch), not the kernel's. Each launch
path runs in a fresh interpreter (``NBCONV_CUDA_LAUNCH`` is read at import).

    python docs/host_cost.py
"""

from __future__ import annotations

import os
import subprocess
import sys

_ONE = r"""
import time
import cupy as cp
import nbconv
x = cp.ones((1, 32, 8, 8), cp.float32); w = cp.ones((32, 1, 3, 3), cp.float32); b = cp.ones(32, cp.float32)
out = nbconv.conv2d(x, w, b, padding=1, groups=32)
cp.cuda.Device().synchronize()
assert float(out[0, 0, 4, 4]) == 10.0 and float(out[0, 0, 0, 0]) == 5.0, "wrong result"
for _ in range(200):
    nbconv.conv2d(x, w, b, padding=1, groups=32)
cp.cuda.Device().synchronize()
t0 = time.perf_counter()
for _ in range(2000):
    nbconv.conv2d(x, w, b, padding=1, groups=32)
t1 = time.perf_counter()
cp.cuda.Device().synchronize()
print(f"{(t1 - t0) / 2000 * 1e6:.1f}")
"""

_TORCH = r"""
import time, torch
F = torch.nn.functional
x = torch.ones((1, 32, 8, 8), device="cuda"); w = torch.ones((32, 1, 3, 3), device="cuda"); b = torch.ones(32, device="cuda")
for _ in range(200): F.conv2d(x, w, b, padding=1, groups=32)
torch.cuda.synchronize(); t0 = time.perf_counter()
for _ in range(2000): F.conv2d(x, w, b, padding=1, groups=32)
t1 = time.perf_counter(); torch.cuda.synchronize()
print(f"{(t1 - t0) / 2000 * 1e6:.1f}")
"""


def main() -> int:
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    print("| path | host us per call |\n|---|---:|")
    for label, code, extra in (("nbconv, numba-cuda dispatcher", _ONE, {"NBCONV_CUDA_LAUNCH": "numba"}),
                               ("nbconv, CuPy RawModule (NBCONV_CUDA_LAUNCH=raw)", _ONE, {"NBCONV_CUDA_LAUNCH": "raw"}),
                               ("PyTorch F.conv2d", _TORCH, {})):
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**env, **extra})
        print(f"| {label} | {res.stdout.strip() if res.returncode == 0 else 'failed: ' + res.stderr[-300:]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
