"""Run the benchmark: per shape, check against NumPy, then time nbconv against PyTorch."""

from __future__ import annotations

import math
import platform
import sys
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from .._shapes import Shape
from ._check import max_scaled_error
from ._ops import host_arrays, op_call
from ._timing import first_call_latency, interleaved, interleaved_kernel_times, warm_allocator

TOLERANCE = {"float16": 2e-2, "float32": 1e-4, "float64": 1e-10}
#: GPU timing cycles through copies of the arrays until they span this many bytes (twice the
#: 50-60 MB L2 of an H100/H200), so that a kernel does not find its input in L2.
ROTATE_BYTES = 128 << 20
MAX_COPIES = 8


@dataclass
class BenchResult:
    name: str
    backend: str
    batch: int
    dtype: str
    time_s: float
    gflops: float
    gbps: float
    max_error: float
    torch_time_s: Optional[float] = None
    speedup: Optional[float] = None  # median over interleaved pairs of torch time / nbconv time
    op: str = "forward"
    # CUDA only: GPU time per call (host cost hidden, inputs rotated), as above
    kernel_time_s: Optional[float] = None
    kernel_gbps: Optional[float] = None
    torch_kernel_time_s: Optional[float] = None
    kernel_speedup: Optional[float] = None


def _torch(backend: str):
    try:
        import torch
    except ImportError:
        return None
    if backend == "cuda" and not torch.cuda.is_available():
        return None
    return torch


def bench_shape(shape: Shape, batch: int, dtype: str, backend: str, rounds: int, op: str = "forward") -> BenchResult:
    """Check ``op`` on ``shape`` against NumPy (float64), then time it against PyTorch, interleaved."""
    torch = _torch(backend)
    sync = None
    if backend == "cuda":
        import cupy

        to_device, to_host = cupy.asarray, cupy.asnumpy
        sync = cupy.cuda.Device().synchronize
    else:
        to_device, to_host = (lambda a: a), np.asarray
    host = host_arrays(shape, batch, dtype)
    call = op_call(op, shape, host, to_device, torch, backend)
    err = max_scaled_error(to_host(call.ours()), call.want)
    if not err <= TOLERANCE[dtype]:
        raise AssertionError(f"{shape.name} {op}: nbconv differs from the NumPy check by {err:.3g} (scaled)")
    if call.theirs is not None:
        call.theirs()
    t_ours, t_theirs, ratio = interleaved(call.ours, call.theirs, rounds, sync)
    kernel = {}
    if backend == "cuda":
        copies = max(1, min(MAX_COPIES, math.ceil(ROTATE_BYTES / max(call.min_bytes, 1))))
        more = [op_call(op, shape, host, to_device, torch, backend, check=False) for _ in range(copies - 1)]
        ours = [call.ours] + [c.ours for c in more]
        theirs = [call.theirs] + [c.theirs for c in more] if call.theirs is not None else None
        k_ours, k_theirs, k_ratio = interleaved_kernel_times(ours, theirs, rounds, t_ours, t_theirs, cupy)
        kernel = dict(kernel_time_s=k_ours, kernel_gbps=call.min_bytes / k_ours / 1e9,
                      torch_kernel_time_s=k_theirs, kernel_speedup=k_ratio)
    return BenchResult(
        name=shape.name,
        backend=backend,
        batch=batch,
        dtype=dtype,
        time_s=t_ours,
        gflops=call.flops / t_ours / 1e9,
        gbps=call.min_bytes / t_ours / 1e9,
        max_error=err,
        torch_time_s=t_theirs,
        speedup=ratio,
        op=op,
        **kernel,
    )


def geomean(values: Sequence[float]) -> float:
    return float(math.exp(sum(math.log(v) for v in values) / len(values))) if values else float("nan")


def machine_description(backend: str) -> dict:
    import numba

    info = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "threads": numba.get_num_threads(),
    }
    if backend == "cpu":  # what the kernels are compiled for (NUMBA_CPU_NAME may name another CPU)
        from ..cpu._target import target

        info["compiled_for"] = target().name
    torch = _torch(backend)
    if torch is not None:
        info["torch"] = torch.__version__
        if backend == "cpu":  # the instruction set PyTorch's kernels use (ATEN_CPU_CAPABILITY)
            info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    if backend == "cuda":
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        info["gpu"] = props["name"].decode()
        info["cupy"] = cupy.__version__
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def run_bench(
    shapes: Sequence[Shape],
    backend: str = "cpu",
    batch: int = 8,
    dtype: str = "float32",
    rounds: int = 15,
    op: str = "forward",
    progress: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> list[BenchResult]:
    torch = _torch(backend)
    if torch is not None and backend == "cpu":
        import numba

        torch.set_num_threads(numba.get_num_threads())  # same number of threads on both sides
    if torch is not None and backend == "cuda":
        torch.backends.cudnn.benchmark = True  # cuDNN's fastest algorithm per shape
        torch.backends.cudnn.allow_tf32 = False  # FP32 on both sides: Numba has no tensor cores
        torch.backends.cuda.matmul.allow_tf32 = False
    warm_allocator()
    results = []
    for i, shape in enumerate(shapes, 1):
        progress(f"[{i}/{len(shapes)}] {shape.name} ...")
        results.append(bench_shape(shape, batch, dtype, backend, rounds, op))
    return results


def format_table(results: Sequence[BenchResult]) -> str:
    has_torch = any(r.speedup is not None for r in results)
    has_kernel = any(r.kernel_time_s is not None for r in results)
    head = "| shape | time (ms) | GFLOP/s | GB/s |" + (" torch (ms) | speedup |" if has_torch else "")
    rule = "|---|---:|---:|---:|" + ("---:|---:|" if has_torch else "")
    if has_kernel:
        head += " kernel (us) | kernel GB/s |" + (" torch kernel (us) | kernel speedup |" if has_torch else "")
        rule += "---:|---:|" + ("---:|---:|" if has_torch else "")
    rows = [head, rule]
    for r in results:
        row = f"| {r.name} | {r.time_s * 1e3:.3f} | {r.gflops:.1f} | {r.gbps:.1f} |"
        if has_torch:
            row += f" {r.torch_time_s * 1e3:.3f} | {r.speedup:.2f}x |" if r.speedup else " - | - |"
        if has_kernel:
            row += f" {r.kernel_time_s * 1e6:.1f} | {r.kernel_gbps:.0f} |" if r.kernel_time_s else " - | - |"
            if has_torch:
                row += (f" {r.torch_kernel_time_s * 1e6:.1f} | {r.kernel_speedup:.2f}x |" if r.kernel_speedup
                        else " - | - |")
        rows.append(row)
    if has_torch:
        tail = f"| **geometric mean** | | | | | **{geomean([r.speedup for r in results if r.speedup]):.2f}x** |"
        if has_kernel:
            tail += f" | | | **{geomean([r.kernel_speedup for r in results if r.kernel_speedup]):.2f}x** |"
        rows.append(tail)
    return "\n".join(rows)


def results_json(results: Sequence[BenchResult], backend: str, first_call: Optional[dict]) -> dict:
    speedups = [r.speedup for r in results if r.speedup]
    return {
        "machine": machine_description(backend),
        "results": [asdict(r) for r in results],
        "geomean_speedup": geomean(speedups) if speedups else None,
        "first_call_s": first_call,
    }


__all__ = ["BenchResult", "run_bench", "format_table", "results_json", "first_call_latency"]
