"""Interleaved timing for the scripts in ``docs/``: each function runs once to warm up, then all
of them in turn, ``rounds`` times; the medians are in milliseconds."""

from __future__ import annotations

import time

import numpy as np


def interleaved_medians(*fns, rounds: int) -> list[float]:
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(rounds):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [float(np.median(ts)) * 1e3 for ts in times]
