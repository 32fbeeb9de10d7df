"""``nbconv bench --dask``: a convolution over a batch several times larger than a worker's memory
limit, on a local ``distributed`` cluster of 1, then 2 worker processes; wall time, throughput and
each worker's peak resident memory.

The layer is MobileNetV2's 56x56 depthwise 3x3 (144 channels, float32). The input is generated
inside the tasks (``dask.array.random``) and the result reduced there (its sum), so no process
ever holds the whole batch: what bounds a worker's memory is its chunks in flight. Each worker
runs one task at a time on one core (``NUMBA_NUM_THREADS=1``), so 2 workers use 2 cores.
"""

from __future__ import annotations

import os
import time


def run_dask_bench(workers: tuple[int, ...] = (1, 2), batch: int = 1024, chunk: int = 16,
                   memory_limit: str = "512MiB") -> list[dict]:
    import dask
    import dask.array as da
    import numpy as np
    from distributed import Client, LocalCluster

    import nbconv.dask

    channels, side = 144, 56
    w = np.random.default_rng(0).standard_normal((channels, 1, 3, 3)).astype(np.float32)
    data_gb = batch * channels * side * side * 4 / 1e9
    results = []
    # one core per worker: the workers' environment only (the nanny's pre-spawn-environ would also
    # change this process's, and Numba refuses a new NUMBA_NUM_THREADS once its threads run)
    one_thread = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    saved = {k: os.environ.get(k) for k in one_thread}
    with dask.config.set({"distributed.admin.system-monitor.interval": "50ms"}):
        for n in workers:
            with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, memory_limit=memory_limit,
                              dashboard_address=None, env=one_thread) as cluster, Client(cluster) as client:
                def total(batch, conv=True):
                    x = da.random.default_rng(1).random((batch, channels, side, side), chunks=(chunk, -1, -1, -1),
                                                        dtype=np.float32)
                    return (nbconv.dask.conv2d(x, w, padding=1, groups=channels) if conv else x).sum()

                client.compute(total(chunk * n), sync=True)  # compile (or load) the kernel in every worker
                t0 = time.perf_counter()
                client.compute(total(batch, conv=False), sync=True)  # the same tasks without the conv
                baseline = time.perf_counter() - t0
                starts = client.run(_sample_count)
                t0 = time.perf_counter()
                value = client.compute(total(batch), sync=True)
                seconds = time.perf_counter() - t0
                peaks = client.run(_peak_rss_since, starts)
            results.append({"workers": n, "seconds": seconds, "without_conv_seconds": baseline, "batch": batch, "chunk": chunk,
                            "input_gb": data_gb, "gb_per_s": 2 * data_gb / seconds,
                            "memory_limit": memory_limit, "peak_rss_mib": sorted(v / 2**20 for v in peaks.values()),
                            "sum": float(value)})
    for k, v in saved.items():  # whatever the cluster did, this process's environment as it was
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    return results


def _sample_count(dask_worker=None) -> int:
    """How many samples the worker's system monitor has taken (the start of a measurement). Its
    sample queues are not cleared for this: the worker's heartbeat reads their last values, and
    an empty queue makes it close the worker (``IndexError`` in ``SystemMonitor.recent``)."""
    return dask_worker.monitor.count


def _peak_rss_since(starts: dict, dask_worker=None) -> float:
    """The worker's largest resident memory sample since sample ``starts[its address]``."""
    memory = dask_worker.monitor.range_query(starts[dask_worker.address])["memory"]
    return max((m for m in memory if m is not None), default=float("nan"))


def format_dask_table(results: list[dict]) -> str:
    base = results[0]["seconds"]
    lines = [f"{'workers':>7} {'seconds':>8} {'speedup':>8} {'GB/s':>6} {'without conv s':>14} "
             f"{'peak RSS per worker (MiB)':>27}"]
    for r in results:
        peaks = ", ".join(f"{p:.0f}" for p in r["peak_rss_mib"])
        lines.append(f"{r['workers']:>7} {r['seconds']:8.2f} {base / r['seconds']:7.2f}x {r['gb_per_s']:6.2f} "
                     f"{r['without_conv_seconds']:14.2f} {peaks:>27}")
    r = results[0]
    lines.append("without conv: the same tasks generating and summing the input only")
    lines.append(f"input {r['input_gb']:.2f} GB float32 ({r['batch']} x 144 x 56 x 56, chunks of {r['chunk']} images), "
                 f"output as large, reduced in the tasks; worker memory limit {r['memory_limit']}; "
                 f"cpus: {os.cpu_count()}")
    return "\n".join(lines)
