"""Timing helpers: interleaved pairs, medians, and Numba's first-call (JIT) latency."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional


def warm_allocator() -> None:
    """Raise glibc's dynamic mmap threshold (to its 32 MiB cap) by freeing one large block.

    In a fresh process glibc serves every allocation over 128 KiB with mmap and returns it with
    munmap, so a library that allocates its output per call pays page faults on every call (on a
    2-core VM PyTorch's mbv2_dw_112 took 12 ms instead of 1.7 ms). One large free moves the
    threshold up, as a long-running program's would, for both libraries alike.
    """
    import numpy as np

    block = np.empty((32 << 20) - 4096, np.uint8)
    del block


def calls_per_sample(fn: Callable[[], object], target_s: float = 0.02) -> int:
    """How many back-to-back calls make one timing sample of about ``target_s`` seconds."""
    fn()  # the first call after the other library ran is slow (its threads, our pool waking)
    t0 = time.perf_counter()
    fn()
    dt = max(time.perf_counter() - t0, 1e-6)
    return max(3, min(1000, int(target_s / dt)))


def sample(fn: Callable[[], object], reps: int, sync: Optional[Callable[[], object]] = None) -> float:
    """Seconds per call over ``reps`` back-to-back calls, after one untimed call.

    The untimed call absorbs the switch from the other library (Numba's OpenMP pool and
    PyTorch's each wake their threads; on 2 cores the first call after a switch is slow).
    """
    fn()
    if sync:
        sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if sync:
        sync()
    return (time.perf_counter() - t0) / reps


def interleaved(a, b, rounds: int, sync=None) -> tuple[float, Optional[float], Optional[float]]:
    """Median time of ``a``, of ``b``, and median of the paired ratios time(b) / time(a).

    ``a`` and ``b`` alternate, so slow phases of a shared machine hit both; ``b`` may be None.
    """
    ra = calls_per_sample(a)
    rb = calls_per_sample(b) if b else 0
    return alternating(lambda: sample(a, ra, sync), (lambda: sample(b, rb, sync)) if b else None, rounds)


def alternating(time_a: Callable[[], float], time_b: Optional[Callable[[], float]],
                rounds: int) -> tuple[float, Optional[float], Optional[float]]:
    """Medians of ``rounds`` timings of ``time_a`` and of ``time_b`` (None: ``a`` alone) and of
    their paired ratios b / a, alternating which of the two goes first."""
    ta, tb, ratios = [], [], []
    for i in range(rounds):
        pair = {}
        for who in ((0, 1) if i % 2 == 0 else (1, 0)):
            if who == 0:
                pair[0] = time_a()
            elif time_b:
                pair[1] = time_b()
        ta.append(pair[0])
        if time_b:
            tb.append(pair[1])
            ratios.append(pair[1] / pair[0])
    med = statistics.median
    return med(ta), (med(tb) if time_b else None), (med(ratios) if time_b else None)


def busy_gpu_function():
    """``busy(ms)``, to compile for the GPU: keeps it busy for about ``ms`` milliseconds (one
    thread, ``ms`` naps of 1 ms)."""
    from numba import cuda

    def busy(ms):
        for _ in range(ms):
            cuda.nanosleep(1000000)  # at most 1 ms per call

    return busy


def _launch_busy(ms: int, stream_ptr: int) -> None:
    from numba import cuda

    kernel = _BUSY.get("kernel") or _BUSY.setdefault("kernel", cuda.jit(busy_gpu_function()))
    kernel[1, 1, cuda.external_stream(stream_ptr) if stream_ptr else cuda.default_stream()](ms)


_BUSY: dict = {}


def cuda_kernel_time(calls: list, reps: int, host_s: float, cupy, launch_busy=_launch_busy) -> float:
    """Seconds of GPU time per call of ``calls`` (cycled: distinct buffers, so the data does not
    stay in L2), with the host's cost hidden.

    A busy kernel queued first keeps the GPU occupied while the host queues ``reps`` calls
    (``host_s`` each, as measured with a synchronisation); CUDA events around the calls then
    time the kernels back to back. If the busy kernel ended early the host's gaps count too,
    so the figure errs high, never low.
    """
    stream = cupy.cuda.get_current_stream()
    ms = int(min(2000, max(5, 2e3 * reps * host_s)))
    calls[0]()
    stream.synchronize()
    launch_busy(ms, stream.ptr)
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    start.record(stream)
    for i in range(reps):
        calls[i % len(calls)]()
    end.record(stream)
    end.synchronize()
    return cupy.cuda.get_elapsed_time(start, end) * 1e-3 / reps


def interleaved_kernel_times(a: list, b: Optional[list], rounds: int, host_a: float, host_b: Optional[float],
                             cupy, reps: int = 20) -> tuple[float, Optional[float], Optional[float]]:
    """Median GPU time per call of ``a``, of ``b``, and the median of the paired ratios b / a,
    alternating who goes first (see :func:`cuda_kernel_time`)."""
    return alternating(lambda: cuda_kernel_time(a, reps, host_a, cupy),
                       (lambda: cuda_kernel_time(b, reps, host_b, cupy)) if b else None, rounds)


_FIRST_CALL = """
import time, numpy as np
t0 = time.perf_counter()
import nbconv
from nbconv._spec import conv2d_spec
{setup}
args = dict(stride={stride}, padding={padding}, dilation={dilation}, groups={groups})
gy_shape = conv2d_spec(x, w, b, **args).output_shape
{gy_setup}
t1 = time.perf_counter()
{call}
{sync}
print(time.perf_counter() - t1)
"""

#: The call each ``--op`` times, as source for the first-call interpreter.
_FIRST_CALL_OPS = {
    "forward": "nbconv.conv2d(x, w, b, **args)",
    "input_grad": "nbconv.grad.conv2d_input(x.shape, w, gy, **args)",
    "weight_grad": "nbconv.grad.conv2d_weight(x, w.shape, gy, **args)",
    "transpose": "nbconv.conv_transpose2d(gy, w, None, **args)",
}


def first_call_latency(shape, batch: int, dtype: str, backend: str, op: str = "forward") -> tuple[float, float]:
    """(cold, warm-cache) seconds of the first call of ``op`` (``conv2d`` by default, or a
    training op of ``nbconv bench --op``) in a fresh interpreter.

    Cold: an empty Numba on-disk cache, so the call includes JIT compilation. Warm: a second
    fresh interpreter reusing that cache (CPU kernels load from disk; CUDA kernels compile).
    """
    if backend == "cpu":
        setup = "x = np.ones({xs}, '{dt}'); w = np.ones({ws}, '{dt}'); b = np.ones({co}, '{dt}')"
        sync = ""
        gy_setup = "gy = np.ones(gy_shape, '{dt}')"
    else:
        setup = (
            "import cupy; x = cupy.ones({xs}, '{dt}'); w = cupy.ones({ws}, '{dt}'); b = cupy.ones({co}, '{dt}'); "
            "cupy.cuda.Device().synchronize()"
        )
        sync = "cupy.cuda.Device().synchronize()"
        gy_setup = "gy = cupy.ones(gy_shape, '{dt}'); cupy.cuda.Device().synchronize()"
    code = _FIRST_CALL.format(
        setup=setup.format(xs=shape.input_shape(batch), ws=shape.weight_shape(), co=shape.c_out, dt=dtype),
        gy_setup=gy_setup.format(dt=dtype),
        call=_FIRST_CALL_OPS[op],
        sync=sync,
        stride=shape.stride,
        padding=shape.pad,
        dilation=shape.dilation,
        groups=shape.groups,
    )
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        times = []
        for _ in range(2):
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
            times.append(float(res.stdout.strip().splitlines()[-1]))
    return times[0], times[1]
