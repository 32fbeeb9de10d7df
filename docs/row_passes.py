"""Time the row-blocked depthwise kernel (``nbconv.cpu._rowblock``) with its kernel rows in passes
against one pass of all taps, interleaved in one process (medians of 30 rounds, batch 8, float32):
the figures behind ``_rowblock.MAX_PASS_TAPS``.

Run: ``python docs/row_passes.py``.
"""

from __future__ import annotations

import time

import numba
import numpy as np

from nbconv._shapes import SHAPES_BY_NAME
from nbconv._spec import conv2d_spec
from nbconv.cpu import _packed, _rowblock

ROUNDS = 30
#: (shape, MAX_PASS_TAPS values): 49 = one pass for 7x7; 15 = passes of 3 and 2 rows for 5x5.
CASES = [("convnext_dw7", (_rowblock.MAX_PASS_TAPS, 49)), ("effnet_dw5_28", (_rowblock.MAX_PASS_TAPS, 15))]


def kernel_with(max_pass_taps: int, spec):
    """The module generated with ``MAX_PASS_TAPS = max_pass_taps`` (a module per geometry and
    pass split, compiled now)."""
    saved = _rowblock.MAX_PASS_TAPS
    _rowblock.MAX_PASS_TAPS = max_pass_taps
    try:
        _rowblock._module.cache_clear()
        passes = _rowblock.kernel_row_passes(*spec.kernel_size)
        module = _rowblock._module(spec)
    finally:
        _rowblock.MAX_PASS_TAPS = saved
        _rowblock._module.cache_clear()
    return passes, module


def main() -> None:
    print("row-blocked depthwise forward, batch 8, float32, all threads: medians of interleaved rounds (ms)")
    for name, limits in CASES:
        shape = SHAPES_BY_NAME[name]
        rng = np.random.default_rng(0)
        x = rng.standard_normal(shape.input_shape(8)).astype(np.float32)
        w = rng.standard_normal(shape.weight_shape()).astype(np.float32)
        b = rng.standard_normal(shape.c_out).astype(np.float32)
        spec = conv2d_spec(x, w, b, **shape.conv_args())
        variants = {}
        for limit in limits:
            passes, module = kernel_with(limit, spec)
            _, scratch_elems, _ = _packed.packed_geometry(spec, 1)
            scratch = np.zeros((numba.get_num_threads(), scratch_elems), np.float32)
            out = np.empty(spec.output_shape, np.float32)
            variants[f"kernel rows {passes}"] = (module.forward, (x, w, b, out, scratch))
        times = {k: [] for k in variants}
        for fn, args in variants.values():
            fn(*args)
        for _ in range(ROUNDS):
            for k, (fn, args) in variants.items():
                t0 = time.perf_counter()
                fn(*args)
                times[k].append(time.perf_counter() - t0)
        print(f"  {name}: " + ", ".join(f"{k} {1e3 * np.median(v):.3f}" for k, v in times.items()))


if __name__ == "__main__":
    main()
