"""Host time of one nbconv call on CuPy arrays, by launch path, against PyTorch (needs a GPU).

A tiny depthwise conv (1 x 32 x 8 x 8, 3x3), 2000 calls without synchronisation: the time is
the host's (validation, dispatch, argument packing, the launch), not the kernel's. Each launch
path runs in a fresh interpreter (``NBCONV_CUDA_LAUNCH`` is read at import).

    python docs/host_cost.py              # on a GPU machine
    python docs/host_cost.py --offline    # no GPU: the Python part of the raw launch path

``--offline`` times what the raw launch path does in Python for one call, on stand-in arrays
(shape, strides and pointer only) with CuPy's launch replaced by a no-op: validation (the spec,
cached per geometry), the launch configuration (cached per spec) and the argument packing.
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


def offline() -> int:
    import time

    import numpy as np

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from test_cuda_raw_launch import FakeCupyArray

    from nbconv._spec import conv2d_spec
    from nbconv.cuda import _launch, _raw

    _raw._function = lambda *key: (lambda grid, block, args: None)  # no CuPy, no launch
    _raw._compute_capability = lambda: (9, 0)
    x, w, b = (FakeCupyArray(s, np.float32) for s in ((1, 32, 8, 8), (32, 1, 3, 3), (32,)))
    out = FakeCupyArray((1, 32, 8, 8), np.float32)
    spec = conv2d_spec(x, w, b, padding=1, groups=32)
    cfg = _launch.forward_launch_config(spec)

    def whole():
        s = conv2d_spec(x, w, b, padding=1, groups=32)
        _raw.launch_plane(s, _launch.forward_launch_config(s), x, w, b, out)

    print("| step (stand-in arrays, no launch) | us per call |\n|---|---:|")
    for label, fn in (("validation (conv2d_spec)", lambda: conv2d_spec(x, w, b, padding=1, groups=32)),
                      ("launch configuration", lambda: _launch.forward_launch_config(spec)),
                      ("argument packing", lambda: _raw.arguments(spec, cfg, x, w, b, out)),
                      ("all of it (launch_plane with a no-op launch)", whole)):
        for _ in range(200):
            fn()
        t0 = time.perf_counter()
        for _ in range(5000):
            fn()
        print(f"| {label} | {(time.perf_counter() - t0) / 5000 * 1e6:.1f} |")
    return 0


def main() -> int:
    if "--offline" in sys.argv[1:]:
        os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
        return offline()
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
