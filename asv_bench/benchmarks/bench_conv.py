"""ASV benchmarks of nbconv: the standard shapes of ``nbconv bench`` and a groups sweep.

Every ``time_`` and ``track_`` figure is taken after a warm-up call in ``setup``, so JIT compilation
never leaks into it; compilation is tracked on its own by ``FirstCall.track_cold_jit_seconds``.
GPU figures synchronise the device after the timed calls.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from asv_runner.benchmarks.mark import SkipNotImplemented

from nbconv._shapes import STANDARD_SHAPES, Shape

from ._common import (BACKENDS, BACKWARD_OPS, BATCH, DTYPES, SMOKE, SMOKE_BACKWARD_SHAPES, SMOKE_SHAPES,
                      SWEEP_GROUPS, OpCase, median_paired_ratio, torch_or_skip)

SHAPES = {s.name: s for s in STANDARD_SHAPES}
SHAPE_NAMES = list(SMOKE_SHAPES) if SMOKE else list(SHAPES)


class _OpBenchmark:
    """The four metrics of one op on one standard shape; subclasses fix the parameters."""

    timeout = 300
    repeat = (2, 5, 4.0)  # at least 2, at most 5 samples, stop after 4 s

    def _setup(self, backend, op, shape, dtype):
        self.case = OpCase(op, SHAPES[shape], backend, dtype, BATCH[backend])
        self.case.run()  # compile (or load from Numba's cache) outside the timings
        self.case.sync()

    def _time(self, *params):
        self.case.run()
        self.case.sync()

    def _peakmem(self, *params):
        self.case.run()

    def _gflops(self, *params):
        return self.case.flops / self.case.seconds_per_call() / 1e9

    def _speedup(self, *params):
        theirs = self.case.torch_run()  # skips when PyTorch is absent
        theirs()
        self.case.sync()
        return median_paired_ratio(self.case.run, theirs, self.case.sync)


class Forward(_OpBenchmark):
    """``conv2d`` on each standard shape (batch 8 on the CPU, 32 on the GPU), per backend and dtype."""

    params = [BACKENDS, SHAPE_NAMES, DTYPES]
    param_names = ["backend", "shape", "dtype"]

    def setup(self, backend, shape, dtype):
        self._setup(backend, "forward", shape, dtype)

    time_conv2d = _OpBenchmark._time
    peakmem_conv2d = _OpBenchmark._peakmem
    track_gflops = _OpBenchmark._gflops
    track_speedup_vs_torch = _OpBenchmark._speedup


class Backward(_OpBenchmark):
    """The training ops (input gradient, weight gradient, ``conv_transpose2d``) on each standard
    shape, float32. Skipped on commits that predate them."""

    params = [BACKENDS, BACKWARD_OPS, list(SMOKE_BACKWARD_SHAPES) if SMOKE else SHAPE_NAMES]
    param_names = ["backend", "op", "shape"]

    def setup(self, backend, op, shape):
        self._setup(backend, op, shape, "float32")

    time_op = _OpBenchmark._time
    peakmem_op = _OpBenchmark._peakmem
    track_gflops = _OpBenchmark._gflops
    track_speedup_vs_torch = _OpBenchmark._speedup


class GroupsSweep:
    """C_in = C_out = 64, 56x56, 3x3, forward: groups 1, 2, 4, ..., 64.

    FLOPs fall by 2x per step; the time should follow until the work per group gets too small.
    """

    params = [BACKENDS, SWEEP_GROUPS]
    param_names = ["backend", "groups"]
    timeout = 300
    repeat = (2, 5, 4.0)

    def setup(self, backend, groups):
        shape = Shape(f"sweep_g{groups}", 64, 56, 64, 3, 1, 1, groups)
        self.case = OpCase("forward", shape, backend, "float32", BATCH[backend])
        self.case.run()
        self.case.sync()

    def time_forward(self, backend, groups):
        self.case.run()
        self.case.sync()

    def track_gflops(self, backend, groups):
        return self.case.flops / self.case.seconds_per_call() / 1e9

    track_gflops.unit = "GFLOP/s"


_FIRST_CALL = """
import time, numpy as np
to_dev = (lambda a: a) if {backend!r} == "cpu" else __import__("cupy").asarray
x = to_dev(np.ones((1, 32, 112, 112), "float32")); w = to_dev(np.ones((32, 1, 3, 3), "float32"))
import nbconv
t0 = time.perf_counter()
y = nbconv.conv2d(x, w, None, padding=1, groups=32)
if {backend!r} == "cuda":
    __import__("cupy").cuda.Device().synchronize()
print(time.perf_counter() - t0)
"""


class FirstCall:
    """Cold first call of ``conv2d`` (mbv2_dw_112 at batch 1) in a fresh interpreter with an empty
    Numba cache: the JIT compilation a user waits for, reported apart from every ``time_`` figure."""

    params = [BACKENDS]
    param_names = ["backend"]
    number = 1
    repeat = 1
    timeout = 300

    def setup(self, backend):
        if backend == "cuda":
            from ._common import backend_arrays

            backend_arrays(backend)  # skips without a GPU

    def track_cold_jit_seconds(self, backend):
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, NUMBA_CACHE_DIR=cache)
            res = subprocess.run([sys.executable, "-c", _FIRST_CALL.format(backend=backend)],
                                 capture_output=True, text=True, env=env)
        if res.returncode != 0:
            raise SkipNotImplemented(res.stderr.strip().splitlines()[-1] if res.stderr else "failed")
        return float(res.stdout.split()[-1])

    track_cold_jit_seconds.unit = "seconds"


class PaddingModes:
    """``padding_mode`` against zeros: mbv2_dw_56's depthwise 3x3 (C = 144, 56x56, padding 1),
    forward, on the CPU. ``time_`` per mode; ``track_speedup_vs_torch`` against PyTorch's
    ``nn.Conv2d`` with the same mode (it pads a copy of the input first); ``peakmem_`` the process
    peak, and ``track_extra_mib`` the memory a call allocates beyond its output (tracemalloc).
    Skipped on commits without ``padding_mode``."""

    params = [["zeros", "reflect"] if SMOKE else ["zeros", "reflect", "replicate", "circular"]]
    param_names = ["mode"]
    timeout = 300
    repeat = (2, 5, 4.0)

    def setup(self, mode):
        import inspect

        import numpy as np

        import nbconv

        if "padding_mode" not in inspect.signature(nbconv.conv2d).parameters:
            raise SkipNotImplemented("padding_mode: not in this commit of nbconv")
        shape = SHAPES["mbv2_dw_56"]
        self.case = OpCase("forward", shape, "cpu", "float32", BATCH["cpu"])
        x, w, b = (self.case.host[k] for k in ("x", "w", "b"))
        args = shape.conv_args()
        self.run = lambda: nbconv.conv2d(x, w, b, **args, padding_mode=mode)
        self.run()
        self.mode, self.args, self.x, self.w, self.b, self.np = mode, args, x, w, b, np

    def time_forward(self, mode):
        self.run()

    def peakmem_forward(self, mode):
        self.run()

    def track_extra_mib(self, mode):
        import tracemalloc

        tracemalloc.start()
        y = self.run()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return (peak - y.nbytes) / 2**20

    track_extra_mib.unit = "MiB"

    def track_speedup_vs_torch(self, mode):
        torch = torch_or_skip("cpu")
        layer = torch.nn.Conv2d(self.x.shape[1], self.w.shape[0], self.w.shape[2:], padding_mode=mode, **self.args)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(self.w))
            layer.bias.copy_(torch.from_numpy(self.b))
        tx = torch.from_numpy(self.x)

        def theirs():
            with torch.no_grad():
                return layer(tx)

        theirs()
        return median_paired_ratio(self.run, theirs, lambda: None)


class DaskBatch:
    """``nbconv bench --dask``'s measure: MobileNetV2's 56x56 depthwise layer over a batch larger
    than a worker's memory limit (generated and reduced in the tasks), on a local cluster of 1 or 2
    worker processes of one core each: seconds, and each worker's peak resident memory. Skipped
    without Dask / distributed, and on commits without ``nbconv.dask``."""

    params = [[1, 2]]
    param_names = ["workers"]
    number = 1
    repeat = 1
    timeout = 600

    def setup_cache(self):
        try:
            import distributed  # noqa: F401

            from nbconv.bench._dask import run_dask_bench
        except ImportError:
            return None
        batch = 8 if SMOKE else 512  # 0.92 GB in (and out) against 512 MiB per worker
        return {r["workers"]: r for r in run_dask_bench(workers=(1, 2), batch=batch, chunk=4 if SMOKE else 16)}

    def setup(self, results, workers):
        if results is None:
            raise SkipNotImplemented("nbconv.dask or distributed unavailable")

    def track_seconds(self, results, workers):
        return results[workers]["seconds"]

    track_seconds.unit = "seconds"

    def track_peak_rss_mib(self, results, workers):
        return max(results[workers]["peak_rss_mib"])

    track_peak_rss_mib.unit = "MiB"
