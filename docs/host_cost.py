"""Host time of one nbconv call on CuPy arrays, by launch path, against PyTorch (needs a GPU).

Every op on a tiny depthwise layer (1 x 32 x 8 x 8, 3x3), 2000 calls each without
synchronisation: the time is the host's (validation, dispatch, argument packing, the launches),
not the kernels'. Each launch path runs in a fresh interpreter (``NBCONV_CUDA_LAUNCH`` is read
at import), and PyTorch's twins of the ops in another.

    python docs/host_cost.py              # on a GPU machine
    python docs/host_cost.py --offline    # no GPU: the Python part of the raw launch path

``--offline`` times what the raw launch path does in Python for one call of each op (forward by
the plane kernel and by tiles, the transposed convolution by phases, the input, weight and bias
gradients), on stand-in arrays (shape, strides and pointer only) with the driver's launch
replaced by a C call that does nearly nothing: validation (the spec, cached per geometry),
dispatch and the op's plan (its launches, recorded on the first call, replayed with each call's
addresses).
"""

from __future__ import annotations

import os
import subprocess
import sys

# Each op on CuPy arrays (or torch tensors), checked once, then timed: host time per call.
_NBCONV = r"""
import time
import cupy as cp
import numpy as np
import nbconv
x = cp.ones((1, 32, 8, 8), cp.float32); w = cp.ones((32, 1, 3, 3), cp.float32); b = cp.ones(32, cp.float32)
xt = cp.ones((1, 32, 4, 4), cp.float32); gy = cp.ones((1, 32, 8, 8), cp.float32)
out = nbconv.conv2d(x, w, b, padding=1, groups=32)
cp.cuda.Device().synchronize()
assert float(out[0, 0, 4, 4]) == 10.0 and float(out[0, 0, 0, 0]) == 5.0, "wrong result"
OPS = {
    "conv2d": lambda: nbconv.conv2d(x, w, b, padding=1, groups=32),
    "conv_transpose2d, stride 2": lambda: nbconv.conv_transpose2d(xt, w, b, stride=2, padding=1, output_padding=1,
                                                                  groups=32),
    "grad.conv2d_input": lambda: nbconv.grad.conv2d_input(x.shape, w, gy, padding=1, groups=32),
    "grad.conv2d_weight": lambda: nbconv.grad.conv2d_weight(x, w.shape, gy, padding=1, groups=32),
    "grad.conv2d_bias": lambda: nbconv.grad.conv2d_bias(gy),
}
"""

_TORCH = r"""
import time, torch
F = torch.nn.functional
x = torch.ones((1, 32, 8, 8), device="cuda"); w = torch.ones((32, 1, 3, 3), device="cuda"); b = torch.ones(32, device="cuda")
xt = torch.ones((1, 32, 4, 4), device="cuda"); gy = torch.ones((1, 32, 8, 8), device="cuda")
OPS = {
    "conv2d": lambda: F.conv2d(x, w, b, padding=1, groups=32),
    "conv_transpose2d, stride 2": lambda: F.conv_transpose2d(xt, w, b, stride=2, padding=1, output_padding=1,
                                                             groups=32),
    "grad.conv2d_input": lambda: torch.nn.grad.conv2d_input(x.shape, w, gy, padding=1, groups=32),
    "grad.conv2d_weight": lambda: torch.nn.grad.conv2d_weight(x, w.shape, gy, padding=1, groups=32),
    "grad.conv2d_bias": lambda: gy.sum((0, 2, 3)),
}
"""

_TIME = r"""
import json
sync = (lambda: cp.cuda.Device().synchronize()) if "cp" in globals() else torch.cuda.synchronize
times = {}
for name, op in OPS.items():
    for _ in range(200):
        op()
    sync()
    t0 = time.perf_counter()
    for _ in range(2000):
        op()
    t1 = time.perf_counter()
    sync()
    times[name] = round((t1 - t0) / 2000 * 1e6, 1)
print(json.dumps(times))
"""


def offline() -> int:
    import time

    import numpy as np

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    import ctypes
    import types

    from test_cuda_raw_launch import FakeCupyArray

    import nbconv
    from nbconv.cuda import _launch, _raw

    launches = []
    function = types.SimpleNamespace(ptr=1)  # a CuPy function's handle, never called
    _raw._function = lambda key, signature, cc: launches.append(key) or function
    _raw._compute_capability = lambda: (9, 0)
    _raw._device = lambda: 0
    # the driver's cuLaunchKernel replaced by a C function that does nearly nothing (sched_yield:
    # the same ctypes call with the same 11 arguments, which it ignores, and a system call); on a
    # GPU machine CuPy's compiled binding takes the launch, which converts its arguments for less
    noop = ctypes.CDLL(None).sched_yield
    noop.restype = ctypes.c_int
    launch = _raw.driver_launch_function(types.SimpleNamespace(cuLaunchKernel=noop))
    _raw._driver_launch = lambda: launch
    stream = types.SimpleNamespace(ptr=0)

    made: dict = {}

    def empty(shape, dtype):  # a stand-in cupy.empty: the same stand-in array per shape, no cost
        key = (tuple(shape), np.dtype(dtype))
        if key not in made:
            made[key] = FakeCupyArray(shape, dtype)
        return made[key]

    sys.modules["cupy"] = types.SimpleNamespace(ndarray=FakeCupyArray, empty=empty, cuda=types.SimpleNamespace(
        get_current_stream=lambda: stream))  # the stand-in arrays are of CuPy's kind
    run = _raw.RawLauncher()

    class Unplanned(_raw.RawLauncher):
        """The raw launcher running the op's launch code on every call (no plan)."""

        def planned(self, op, spec, arrays, out):
            op(spec, self, *arrays, out)

    taking = [run]
    _launch.launcher = lambda spec: taking[0]  # what the default picks for CuPy arrays

    def arrays(*shapes):
        return [FakeCupyArray(s, np.float32) for s in shapes]

    x, w, b = arrays((1, 32, 8, 8), (32, 1, 3, 3), (32,))
    xg, wg = arrays((1, 64, 8, 8), (64, 32, 3, 3))
    xt = arrays((1, 32, 4, 4))[0]
    y, yg = arrays((1, 32, 8, 8), (1, 64, 8, 8))
    # the weight gradient by tiles on 7 x 7: its 49 positions are one chunk under the simulator's
    # small tile steps too (as 64 are on a GPU), so one launch here as there
    xg7, yg7 = arrays((1, 64, 7, 7), (1, 64, 7, 7))
    # a GPU's threshold for the phases of a strided transposed convolution (the simulator's is 0):
    # the tiny one here is one launch, as on a GPU
    _launch.PHASES_MIN_MACS = _launch.TINY_TRANSPOSED_MACS
    ops = {
        "conv2d, depthwise 3x3 (plane)": lambda: nbconv.conv2d(x, w, b, padding=1, groups=32),
        "conv2d, 64 -> 64 g2 3x3 (tiles)": lambda: nbconv.conv2d(xg, wg, padding=1, groups=2),
        "conv_transpose2d, stride 2 (tiny: one launch)": lambda: nbconv.conv_transpose2d(
            xt, w, b, stride=2, padding=1, output_padding=1, groups=32),
        "grad.conv2d_input, depthwise (plane)": lambda: nbconv.grad.conv2d_input(x.shape, w, y, padding=1, groups=32),
        "grad.conv2d_weight, depthwise (pairs, one chunk)": lambda: nbconv.grad.conv2d_weight(
            x, w.shape, y, padding=1, groups=32),
        "grad.conv2d_weight, 64 -> 64 g2 @ 7 x 7 (tiles, one chunk)": lambda: nbconv.grad.conv2d_weight(
            xg7, wg.shape, yg7, padding=1, groups=2),
        "grad.conv2d_bias (pairs, one chunk)": lambda: nbconv.grad.conv2d_bias(y),
    }
    print("The public call on stand-in CuPy arrays (shape, strides, pointer), with the raw path's")
    print("launcher, the driver's cuLaunchKernel replaced by a C call through ctypes that does nearly nothing,")
    print("and cupy.empty by a stand-in that costs nothing: validation (cached per geometry), dispatch, and the")
    print("op's plan (its launches recorded on the first call): scratch, addresses into each launch's parameter")
    print("buffer, the call. The driver's own work and CuPy's allocations (the output, a reduction's partial sums)")
    print("come on top; on a GPU machine CuPy's compiled binding of cuLaunchKernel takes the call, for less than")
    print("ctypes. Without plans: the op's launch code (views, launch configuration, packing) on every call.")
    print("Best of 5 rounds of 1000 calls (after 200), the two ways alternating round by round.\n")
    print("| op (1 x C x 8 x 8, float32) | launches | us per call | without plans |\n|---|---:|---:|---:|")

    def per_call(fn) -> float:
        for _ in range(200):
            fn()
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(1000):
                fn()
            best = min(best, (time.perf_counter() - t0) / 1000 * 1e6)
        return best

    def both_ways(fn) -> tuple[float, float]:
        """(best us per call by plans, without), in alternating rounds."""
        best = [float("inf"), float("inf")]
        for way in (0, 1):
            taking[0] = (run, unplanned)[way]
            for _ in range(200):
                fn()
        for _ in range(5):
            for way in (0, 1):
                taking[0] = (run, unplanned)[way]
                t0 = time.perf_counter()
                for _ in range(1000):
                    fn()
                best[way] = min(best[way], (time.perf_counter() - t0) / 1000 * 1e6)
        taking[0] = run
        return best[0], best[1]

    unplanned = Unplanned()
    for label, fn in ops.items():
        launches.clear()
        fn()
        print(f"| {label} | {len(launches)} | " + " | ".join(f"{t:.1f}" for t in both_ways(fn)) + " |")

    from nbconv import _spec

    spec = _spec.conv2d_spec(x, w, b, padding=1, groups=32)
    views = [_raw.view(a) for a in (x, w, b, y)]
    cfg = _launch.forward_launch_config(spec)
    ints = (1, 1, 32, 1, 1, cfg.n_oc_blocks, cfg.planes)
    _, packed = _raw.pack((*views, *ints))
    parts = {
        "validation (conv2d_spec)": lambda: _spec.conv2d_spec(x, w, b, padding=1, groups=32),
        "the launch by its plan (from the validated spec)": lambda: run.planned(_launch.forward, spec, (x, w, b), y),
        "of which the buffer and the ctypes call": lambda: _raw.launch_with_buffer(
            launch, 1, cfg.grid, cfg.block, 0, packed),
        "the launch without a plan (views, configuration, packing, the call)": lambda: _launch.forward(
            spec, run, x, w, b, y),
    }
    print("\nParts of the depthwise conv2d call (the rest of the call is dispatch: the output, the checks):\n")
    print("| part | us per call |\n|---|---:|")
    for label, fn in parts.items():
        print(f"| {label} | {per_call(fn):.1f} |")
    return 0


def main() -> int:
    if "--offline" in sys.argv[1:]:
        os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
        return offline()
    import json

    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    columns = {}
    for label, code, extra in (("dispatcher (NBCONV_CUDA_LAUNCH=numba)", _NBCONV, {"NBCONV_CUDA_LAUNCH": "numba"}),
                               ("raw (the default)", _NBCONV, {"NBCONV_CUDA_LAUNCH": "raw"}),
                               ("PyTorch", _TORCH, {})):
        res = subprocess.run([sys.executable, "-c", code + _TIME], capture_output=True, text=True,
                             env={**env, **extra})
        if res.returncode:
            print(f"{label}: failed: {res.stderr[-600:]}")
        columns[label] = json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else {}
    print("Host us per call (1 x 32 x 8 x 8 depthwise 3x3, float32; 2000 calls, no synchronisation):\n")
    print("| op | " + " | ".join(columns) + " |\n|---|" + "---:|" * len(columns))
    for op in ("conv2d", "conv_transpose2d, stride 2", "grad.conv2d_input", "grad.conv2d_weight", "grad.conv2d_bias"):
        print(f"| {op} | " + " | ".join(str(col.get(op, "-")) for col in columns.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
