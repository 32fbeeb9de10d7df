"""Shared set-up for the ASV benchmarks: arrays per backend, the op under test, its PyTorch twin.

Self-contained on purpose: ASV runs this (current) benchmark code against older commits of nbconv,
so it relies only on what every commit since the suite applies has: ``nbconv.conv2d``,
``nbconv._shapes`` and ``nbconv._spec.conv2d_spec``. An op that a commit lacks is skipped there.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
from asv_runner.benchmarks.mark import SkipNotImplemented

#: ``NBCONV_ASV_SMOKE=1`` (set by the CI's dry run, tests/test_asv_suite.py): every benchmark runs
#: once at batch 1 with single timing samples, to prove it still works, not to measure anything.
#: Never set it when recording results.
SMOKE = os.environ.get("NBCONV_ASV_SMOKE") == "1"
#: Batch per backend: the batch of ``nbconv bench`` (8 on the CPU, 32 on the GPU).
BATCH = {"cpu": 1, "cuda": 1} if SMOKE else {"cpu": 8, "cuda": 32}
BACKENDS = ["cpu", "cuda"]
#: A smoke run takes every benchmark through a depthwise and a grouped shape, float32 only, and
#: two points of the groups sweep: each process imports NumPy, Numba and PyTorch afresh, and the
#: full parameter grid (~500 processes) took 8 of CI's 20 minutes.
DTYPES = ["float32"] if SMOKE else ["float32", "float64"]
SMOKE_SHAPES = ("mbv2_dw_7", "resnext_g32_14")
#: The training ops' smoke run takes the depthwise shape only: three ops on the grouped one were
#: half of the smoke run's time (kernels generated per geometry, compiled in each process).
SMOKE_BACKWARD_SHAPES = SMOKE_SHAPES[:1]
SWEEP_GROUPS = [1, 64] if SMOKE else [1, 2, 4, 8, 16, 32, 64]
#: The training ops of ``nbconv bench --op``; one missing from the commit under test is skipped there.
BACKWARD_OPS = ["input_grad", "weight_grad", "transpose"]


def backend_arrays(backend: str):
    """(to_device, synchronize) for a backend; skip the benchmark where the backend is absent."""
    if backend == "cpu":
        return (lambda a: a), (lambda: None)
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise SkipNotImplemented("no CUDA device")
    except (ImportError, RuntimeError, SkipNotImplemented) as e:  # no CuPy, no driver, no device
        raise SkipNotImplemented(f"cuda backend unavailable: {e}") from None
    sync = cupy.cuda.Device().synchronize
    return cupy.asarray, sync


def torch_or_skip(backend: str):
    try:
        import torch
    except ImportError:
        raise SkipNotImplemented("PyTorch is not installed") from None
    if backend == "cuda":
        if not torch.cuda.is_available():
            raise SkipNotImplemented("PyTorch has no CUDA here")
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    else:
        import numba

        torch.set_num_threads(numba.get_num_threads())  # same threads on both sides
    return torch


def warm_allocator() -> None:
    """Raise glibc's dynamic mmap threshold (to its 32 MiB cap) by freeing one large block.

    In a fresh process glibc serves every allocation over 128 KiB with mmap and returns it with
    munmap, so a library that allocates its output per call pays page faults on every call: on the
    2-core VM this made PyTorch's mbv2_dw_112 take 12 ms instead of 1.7 ms. One large free moves the
    threshold up, as a long-running program's would, for both libraries alike.
    """
    block = np.empty((32 << 20) - 4096, np.uint8)
    del block


class OpCase:
    """One op on one shape: ``run()`` calls nbconv (no sync), ``flops`` counts multiply-adds x 2."""

    def __init__(self, op: str, shape, backend: str, dtype: str, batch: int):
        import nbconv
        from nbconv._spec import conv2d_spec

        self.op, self.shape, self.backend = op, shape, backend
        warm_allocator()
        to_device, self.sync = backend_arrays(backend)
        rng = np.random.default_rng(0)
        x = rng.standard_normal(shape.input_shape(batch), dtype=dtype)
        w = rng.standard_normal(shape.weight_shape(), dtype=dtype) / np.sqrt(np.prod(shape.weight_shape()[1:]), dtype=dtype)
        b = rng.standard_normal(shape.c_out, dtype=dtype)
        self.host = {"x": x, "w": w, "b": b}
        self.dev = {k: to_device(v) for k, v in self.host.items()}
        args = shape.conv_args()
        spec = conv2d_spec(self.dev["x"], self.dev["w"], self.dev["b"], **args)
        self.flops = spec.flops
        self.args = args
        X, W, B = self.dev["x"], self.dev["w"], self.dev["b"]
        if op == "forward":
            self.run = lambda: nbconv.conv2d(X, W, B, **args)
            return
        grad = getattr(nbconv, "grad", None)
        if grad is None or not hasattr(nbconv, "conv_transpose2d"):
            raise SkipNotImplemented(f"{op}: not in this commit of nbconv")
        gy_host = rng.standard_normal(spec.output_shape, dtype=dtype)
        self.host["gy"] = gy_host
        GY = self.dev["gy"] = to_device(gy_host)
        if op == "input_grad":
            self.run = lambda: grad.conv2d_input(X.shape, W, GY, **args)
        elif op == "weight_grad":
            self.run = lambda: grad.conv2d_weight(X, W.shape, GY, **args)
        elif op == "transpose":  # conv_transpose2d with the adjoint's weight: the same FLOPs
            a = dict(stride=shape.stride, padding=shape.pad, dilation=shape.dilation, groups=shape.groups)
            self.run = lambda: nbconv.conv_transpose2d(GY, W, None, **a)
        else:
            raise ValueError(op)

    def torch_run(self):
        """The same op in PyTorch (on the same device and threads)."""
        torch = torch_or_skip(self.backend)
        F = torch.nn.functional
        dev = "cuda" if self.backend == "cuda" else "cpu"
        t = {k: torch.from_numpy(v).to(dev) for k, v in self.host.items()}
        a = self.args
        if self.op == "forward":
            return lambda: F.conv2d(t["x"], t["w"], t["b"], **a)
        if self.op == "input_grad":
            return lambda: torch.nn.grad.conv2d_input(t["x"].shape, t["w"], t["gy"], **a)
        if self.op == "weight_grad":
            return lambda: torch.nn.grad.conv2d_weight(t["x"], t["w"].shape, t["gy"], **a)
        a = dict(stride=self.shape.stride, padding=self.shape.pad, dilation=self.shape.dilation,
                 groups=self.shape.groups)
        return lambda: F.conv_transpose2d(t["gy"], t["w"], None, **a)

    def seconds_per_call(self, fn=None, samples: int = 5) -> float:
        """Median over ``samples`` of synchronised back-to-back calls (about 20 ms each)."""
        fn = fn or self.run
        reps = _reps(fn, self.sync)
        return statistics.median(_sample(fn, reps, self.sync) for _ in range(1 if SMOKE else samples))


def _sample(fn, reps: int, sync) -> float:
    """Seconds per call over ``reps`` back-to-back calls, after one untimed call.

    The untimed call absorbs the switch from the other library: nbconv (Numba's OpenMP pool) and
    PyTorch (its own OpenMP runtime) each wake their threads, and the first call after the other
    ran can be several milliseconds slower on a 2-core machine.
    """
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t0) / reps


def _reps(fn, sync, target_s: float = 0.05) -> int:
    """Calls per sample for about ``target_s`` seconds (from the faster of two warm calls)."""
    if SMOKE:
        return 1
    one = min(_sample(fn, 1, sync) for _ in range(2))
    return max(3, min(1000, int(target_s / max(one, 1e-6))))


def median_paired_ratio(ours, theirs, sync, rounds: int = 9) -> float:
    """Median over interleaved pairs of time(theirs) / time(ours): machine noise hits both sides."""
    ra, rb = _reps(ours, sync), _reps(theirs, sync)
    ratios = []
    for i in range(1 if SMOKE else rounds):
        if i % 2:
            tb, ta = _sample(theirs, rb, sync), _sample(ours, ra, sync)
        else:
            ta, tb = _sample(ours, ra, sync), _sample(theirs, rb, sync)
        ratios.append(tb / ta)
    return statistics.median(ratios)
