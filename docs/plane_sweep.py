"""The plane and tile kernels' time by their tuning constants, on the depthwise standard shapes
and (``--tiles``) the layers with many channels per group (needs a GPU).

Each variant sets module constants of :mod:`nbconv.cuda._launch`, :mod:`nbconv.cuda._planes` and
:mod:`nbconv.cuda._tiles` (loads in flight a thread while staging a tile and whether they are
clamped, threads a block, outputs a thread down a column, threads an SM the launch bounds aim
for; the tiles' and micro-tiles' shapes and the products' indices), rebuilds the kernels, checks
one result against the default variant's, and times ``nbconv.conv2d`` (``--op weight_grad``:
``nbconv.grad.conv2d_weight``) on CuPy arrays: GPU
time per call with the host's cost hidden (a busy kernel queued first, 20 calls between two CUDA
events, inputs rotated through copies spanning 128 MB so that L2 does not hold them), the median
of 5 rounds. GB/s counts the input, weight and output bytes once; TFLOP/s two per multiply-add.

    python docs/plane_sweep.py [--batch 32] [--dtype float32] [--shapes a,b,...] [--json FILE]
    python docs/plane_sweep.py --tiles [--op forward|weight_grad]   # the tile kernels' shapes
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "0")

#: (name, {module constant: value}); "default" first. STAGE_CHUNK 1 stores each loaded value
#: before the next load, as the kernel did before its loads were issued in chunks.
VARIANTS = [
    ("default", {}),
    ("chunk 1", {"STAGE_CHUNK": 1}),
    ("chunk 16", {"STAGE_CHUNK": 16}),
    ("loads under a branch", {"STAGE_CLAMPED": False}),
    ("threads 128", {"PLANE_THREADS": 128}),
    ("threads 512", {"PLANE_THREADS": 512}),
    ("rows 2", {"PLANE_ROWS": 2}),
    ("rows 8", {"PLANE_ROWS": 8}),
    ("resident 2048", {"RESIDENT_THREADS": 2048}),
]
SHAPES = "mbv2_dw_112,mbv2_dw_s2,mbv2_dw_56,mbv2_dw_7,effnet_dw5_28,effnet_dw5_14,convnext_dw7,dw_mult2"
#: ``--tiles``: the tile kernels' shapes (tile rows and columns, micro-tile, positions a step) and
#: the products' shared-memory indices, on the layers with many channels per group. Their sm_90
#: SASS, without a GPU: ``python docs/tile_shapes.py`` (the larger micro-tiles execute fewer
#: instructions per FFMA with unsigned indices, and need more registers).
UNSIGNED = {"UNSIGNED_PRODUCT_INDICES": True}
#: the tiles in use on a GPU (``nbconv.cuda._launch``), which the larger shapes change
GPU_TILES = {"TILES_ROWS": (16, 64), "TILES_COLUMNS": 64, "TILES_MICRO": (4, 4), "TILES_MAX_STEP": 16}
TILE_VARIANTS = [
    ("default", {}),
    ("unsigned", UNSIGNED),
    ("128x64 8x4", {**GPU_TILES, **UNSIGNED, "TILES_ROWS": (16, 128), "TILES_MICRO": (8, 4), "TILES_MAX_STEP": 8}),
    ("64x128 4x8", {**GPU_TILES, **UNSIGNED, "TILES_COLUMNS": 128, "TILES_MICRO": (4, 8), "TILES_MAX_STEP": 8}),
    ("128x128 8x8", {**GPU_TILES, **UNSIGNED, "TILES_ROWS": (16, 128), "TILES_COLUMNS": 128, "TILES_MICRO": (8, 8),
                     "TILES_MAX_STEP": 8}),
]
TILE_SHAPES = "alexnet_g2,dense_64_28,pw_g4_28"
CONSTANTS = ("STAGE_CHUNK", "STAGE_CLAMPED", "PLANE_THREADS", "PLANE_ROWS", "RESIDENT_THREADS", "TILES_ROWS",
             "TILES_COLUMNS", "TILES_MICRO", "TILES_MAX_STEP", "UNSIGNED_PRODUCT_INDICES")


def _set(values: dict) -> None:
    from nbconv.cuda import _launch, _planes, _tiles

    for module in (_launch, _planes, _tiles):
        for name in list(values):
            if hasattr(module, name):
                setattr(module, name, values[name])
    _launch.forget_kernels()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--tiles", action="store_true", help=f"the tile kernels' variants (default shapes: {TILE_SHAPES})")
    p.add_argument("--op", choices=("forward", "weight_grad"), default="forward")
    p.add_argument("--shapes", default=None)
    p.add_argument("--variants", default=None, help="comma-separated variant names (default: all)")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args()

    import cupy
    import numpy as np

    import nbconv
    from nbconv._shapes import SHAPES_BY_NAME
    from nbconv._spec import conv2d_spec, conv2d_weight_spec
    from nbconv.bench._timing import cuda_kernel_time, warm_allocator
    from nbconv.cuda import _launch, _planes, _tiles

    defaults = {name: getattr(m, name) for m in (_launch, _planes, _tiles) for name in CONSTANTS if hasattr(m, name)}
    variants = [v for v in (TILE_VARIANTS if args.tiles else VARIANTS)
                if args.variants is None or v[0] in args.variants.split(",")]
    shapes = args.shapes or (TILE_SHAPES if args.tiles else SHAPES)
    warm_allocator()
    rng = np.random.default_rng(0)
    rows = []
    for name in shapes.split(","):
        shape = SHAPES_BY_NAME[name]
        x = rng.standard_normal(shape.input_shape(args.batch)).astype(args.dtype)
        w = rng.standard_normal(shape.weight_shape()).astype(args.dtype)
        b = rng.standard_normal(shape.c_out).astype(args.dtype)
        kw = shape.conv_args()
        spec = conv2d_spec(x, w, b, **kw)
        if args.op == "weight_grad":  # x and the output gradient in; the weight's gradient out
            gy = rng.standard_normal(spec.output_shape).astype(args.dtype)
            spec = conv2d_weight_spec(x, w.shape, gy, **kw)
            inputs = (x, gy)
        else:
            inputs = (x, w, b)
        copies = max(1, min(8, math.ceil((128 << 20) / spec.min_bytes)))
        arrays = [tuple(cupy.asarray(a) for a in inputs) for _ in range(copies)]
        if args.op == "weight_grad":
            calls = [lambda a=a: nbconv.grad.conv2d_weight(a[0], w.shape, a[1], **kw) for a in arrays]
        else:
            calls = [lambda a=a: nbconv.conv2d(*a, **kw) for a in arrays]
        want = None
        for variant, values in variants:
            _set({**defaults, **values})
            cfg = (_launch.tile_reduce_launch(spec) if args.op == "weight_grad"
                   else _launch.forward_launch_config(conv2d_spec(*arrays[0], **kw)))
            t0 = time.perf_counter()
            got = cupy.asnumpy(calls[0]())
            compile_s = time.perf_counter() - t0
            if want is None:
                want = got
            err = float(np.max(np.abs(got - want)) / max(1e-30, float(np.max(np.abs(want)))))
            t0 = time.perf_counter()
            for c in calls[:4]:
                c()
            cupy.cuda.Device().synchronize()
            host_s = (time.perf_counter() - t0) / 4
            times = sorted(cuda_kernel_time(calls, 20, host_s, cupy) for _ in range(5))
            t = statistics.median(times)
            key = getattr(cfg, "key", None)
            row = dict(shape=name, op=args.op, variant=variant, kernel_us=t * 1e6, gbps=spec.min_bytes / t / 1e9,
                       tflops=spec.flops / t / 1e12, block=getattr(key, "block", None),
                       rows=getattr(key, "rows_per_thread", None), tile=getattr(key, "tile", None),
                       micro=getattr(key, "micro", None), kind=type(cfg).__name__, compile_s=compile_s, rel_diff=err)
            rows.append(row)
            shown = (f"tile {row['tile']} micro {row['micro']}" if row["tile"]
                     else f"block {row['block']} R {row['rows']}")
            print(f"{name:14s} {variant:14s} {t * 1e6:8.1f} us {row['gbps']:7.0f} GB/s {row['tflops']:6.2f} TFLOP/s  "
                  f"{row['kind']} {shown}  first call {compile_s:.1f} s  diff {err:.1e}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gpu": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(), "batch": args.batch,
                       "dtype": args.dtype, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
