"""Throughput of the CPU kernel's inner loops alone (one thread, data in L1/L2), the figures that
docs/performance.md quotes for the inner loops:

    python docs/inner_loops.py

For each helper of ``nbconv/cpu/_packed.py`` and each number of taps per pass it prints GFLOP/s
(multiply-adds x 2) over 2048-element segments: ``_row_taps`` (one output channel),
``_row_taps4`` (four output channels sharing every input load), and the weight gradient's dot
products ``_dot3`` / ``_dot3x4``.
"""

from __future__ import annotations

import time

import numba
import numpy as np

from nbconv.cpu import _packed

N = 2048  # elements per pass (a segment)
PASSES = 16
OPTS = dict(cache=False, nogil=True, error_model="numpy", fastmath={"contract"})


@numba.njit(**OPTS)
def _one(acc, xs, cols, wofs, w, reps):
    for _ in range(reps):
        for q in range(PASSES):
            _packed._row_taps(acc[0], xs, q * 7, N, cols, wofs, w, q, q == 0, 0.0)


@numba.njit(**OPTS)
def _four(acc, xs, cols, wofs, w, reps):
    for _ in range(reps):
        for q in range(PASSES):
            _packed._row_taps4(acc[0], acc[1], acc[2], acc[3], xs, q * 7, N, cols, wofs, w, q, 64, q == 0,
                               0.0, 0.0, 0.0, 0.0)


@numba.njit(**OPTS)
def _dots(g, xs, zero, reps):
    t = 0.0
    for _ in range(reps):
        for q in range(PASSES):
            s = _packed._dot3(g[0], xs, q * 7, N, 0, 300, 600, zero)
            t += s[0] + s[1] + s[2]
    return t


@numba.njit(**OPTS)
def _dots4(g, xs, zero, reps):
    t = 0.0
    for _ in range(reps):
        for q in range(PASSES):
            s = _packed._dot3x4(g[0], g[1], g[2], g[3], xs, q * 7, N, 0, 300, 600, zero)
            for k in range(12):  # every sum used: none may be optimised away
                t += s[k]
    return t


def _rate(fn, args: tuple, flops_per_rep: float, reps: int = 200) -> float:
    """GFLOP/s of ``fn(*args, reps)``, best of three, after a compiling call."""
    fn(*args, 1)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        fn(*args, reps)
        best = min(best, time.perf_counter() - t0)
    return flops_per_rep * reps / best / 1e9


def main() -> None:
    numba.set_num_threads(1)
    rng = np.random.default_rng(0)
    xs = rng.random(N + 8 * 300 + 64 * 8, dtype=np.float32)
    w = rng.random(1024, dtype=np.float32)
    acc = np.zeros((4, N), np.float32)
    g = rng.random((4, N), dtype=np.float32)
    print(f"inner loops, one thread, {N}-element passes, float32 (GFLOP/s)")
    for taps in (3, 5, 6, 7):
        cols = tuple(range(0, 300 * taps, 300))  # taps far apart, as rows or channels are
        wofs = tuple(range(taps))
        one = _rate(_one, (acc, xs, cols, wofs, w), 2.0 * taps * N * PASSES)
        four = _rate(_four, (acc, xs, cols, wofs, w), 8.0 * taps * N * PASSES)
        print(f"  {taps} taps per pass: _row_taps {one:6.1f}   _row_taps4 {four:6.1f}")
    zero = np.float32(0)
    print(f"  _dot3 (3 taps):            {_rate(_dots, (g, xs, zero), 6.0 * N * PASSES):6.1f}")
    print(f"  _dot3x4 (3 taps x 4):      {_rate(_dots4, (g, xs, zero), 24.0 * N * PASSES):6.1f}")


if __name__ == "__main__":
    main()
