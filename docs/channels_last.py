"""Time the register transpose ``nbconv.cpu._simd.transpose_tile`` (both shuffle plans) against the
same copy written as a Numba loop (fastest of 500 calls), as the channels-last depthwise weight
gradient (``nbconv.cpu._channels_last``) uses it.

Run: ``python docs/channels_last.py``. (Until round 14 this script also timed that module's
forward against the other depthwise kernels; the forward is gone, ``python
docs/depthwise_lanes.py`` compares its successor.)
"""

from __future__ import annotations

import time

import numba
import numpy as np

from nbconv.cpu import _simd


@numba.njit(error_model="numpy", boundscheck=False)
def _loop_copy(x, xs, plane):
    for p in range(plane):
        for lane in range(16):
            xs[numba.uint64(p * 16 + lane)] = x[numba.uint64(lane * plane + p)]


def _tile_copy():
    """A fresh compilation (the intrinsic's shuffles come from ``_simd.transpose_plan`` then)."""
    @numba.njit(error_model="numpy", boundscheck=False)
    def tile_copy(x, xs, plane):
        for p0 in range(0, plane, 16):
            _simd.transpose_tile(x, p0, plane, xs, p0 * 16, 16)
    return tile_copy


def compare_transposes(plane: int = 3136, reps: int = 500) -> None:
    x = np.random.default_rng(0).standard_normal(16 * plane).astype(np.float32)
    xs = np.empty_like(x)
    copies = {"Numba loop": _loop_copy, "transpose_tile, in-lane plan": _tile_copy()}
    planned = _simd.transpose_plan
    _simd.transpose_plan = _simd.perfect_shuffle_plan
    try:
        copies["transpose_tile, perfect shuffles"] = perfect = _tile_copy()
        perfect(x, xs, plane)  # compiled here, with the perfect shuffles
    finally:
        _simd.transpose_plan = planned
    for name, fn in copies.items():
        fn(x, xs, plane)
        assert (xs.reshape(plane, 16) == x.reshape(16, plane).T).all()
        best = min(_timed(fn, x, xs, plane) for _ in range(reps))
        print(f"16 x {plane} float32 to channels-last, {name}: {1e6 * best:.2f} us "
              f"({x.size / best / 1e9:.1f} Gelements/s)")


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


if __name__ == "__main__":
    compare_transposes()
