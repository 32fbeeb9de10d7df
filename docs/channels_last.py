"""Time the channels-last depthwise CPU path (``nbconv.cpu._channels_last``) against the kernels
that would otherwise take each shape, interleaved (medians of 40 rounds), and its register
transpose (both shuffle plans) against the same copy written as a Numba loop (fastest of 500 calls).

Run: ``python docs/channels_last.py`` (the depthwise shapes of ``nbconv bench``, batch 8,
float32) or ``python docs/channels_last.py --transpose``.
"""

from __future__ import annotations

import functools
import sys
import time

import numba
import numpy as np

from nbconv._shapes import STANDARD_SHAPES
from nbconv._spec import conv2d_spec
from nbconv.cpu import _channels_last, _grouped, _launch, _rowblock, _simd

ROUNDS = 40


def _other_path(spec):
    """The forward kernel the launcher picks when the channels-last path is not first in line."""
    if _rowblock.applies(spec):
        return "rows", lambda x, w, b, out: _rowblock.depthwise_forward(x, w, b, out, spec)
    stack = _launch.choose_stack(spec)
    return "grouped", lambda x, w, b, out: _grouped.grouped_forward(x, w, b, out, spec, stack)


def compare_paths() -> None:
    print("depthwise forward, batch 8, float32, 2 threads: medians of interleaved rounds (ms)")
    for shape in STANDARD_SHAPES:
        if shape.groups != shape.c_in or shape.c_out != shape.c_in:
            continue
        rng = np.random.default_rng(0)
        x = rng.standard_normal(shape.input_shape(8)).astype(np.float32)
        w = rng.standard_normal(shape.weight_shape()).astype(np.float32)
        b = rng.standard_normal(shape.c_out).astype(np.float32)
        spec = conv2d_spec(x, w, b, **shape.conv_args())
        out = np.empty(spec.output_shape, np.float32)
        name, other = _other_path(spec)
        paths = {"channels-last": functools.partial(_channels_last.depthwise_forward, x, w, b, out, spec),
                 name: functools.partial(other, x, w, b, out)}
        times = {k: [] for k in paths}
        for fn in paths.values():
            fn()
        for _ in range(ROUNDS):
            for k, fn in paths.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
        cl, ot = np.array(times["channels-last"]), np.array(times[name])
        print(f"  {shape.name:14s} channels-last {1e3 * np.median(cl):.3f}  {name} {1e3 * np.median(ot):.3f}"
              f"  ratio {np.median(ot / cl):.2f}")


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
    compare_transposes() if "--transpose" in sys.argv else compare_paths()
