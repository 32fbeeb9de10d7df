"""What the CUDA kernels compile to for sm_90 (H100/H200), without a GPU: registers, local-memory
spills and the instruction mix of every specialisation the tests and benchmarks launch.

Each specialisation's PTX (``numba.cuda.compile_ptx``, as ``tests/compile_kernels.py`` builds
them) goes through ``ptxas -v`` (registers, spill bytes, shared memory) and ``cuobjdump -sass``
(the SASS instructions). Needs the pip wheels ``nvidia-cuda-nvcc`` (ptxas) and
``nvidia-cuda-cuobjdump``, and NVVM (numba-cuda's ``cu13`` extra); no driver.

    python docs/cuda_sass.py                 # a table of every specialisation
    python docs/cuda_sass.py --json FILE     # also the figures as JSON
    python docs/cuda_sass.py --limit 20      # the first 20 only
    python docs/cuda_sass.py --steps         # instructions executed per step of the tile kernels,
                                             # and per output of the weight gradient's pair kernel
    python docs/cuda_sass.py --steps --strip 1   # the pair kernel one output at a time
    python docs/cuda_sass.py --standard      # per standard shape (batch 32, float32): the kernel
                                             # launched against the general tiled kernel, and the
                                             # weight gradient's tile kernel against the pair kernel

Exits 1 if any kernel spills to local memory (the test suite runs it that way when ptxas is there).
Columns: registers per thread, spill stores/loads (bytes), SASS instructions, FFMA (and HFMA2 /
DFMA) count and share of all instructions, global and generic loads (LDG, LD), shared loads (LDS), and calls
(in these kernels: to the 64-bit integer division routine, for index arithmetic in int64), then
the most frequent instructions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "0")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from sass import cuda_tool, ptxas_report  # noqa: E402 (after the path insert)


def _describe(key, dtype) -> str:
    from nbconv.cuda._conv_tiles import ConvTileKey
    from nbconv.cuda._planes import PlaneKey
    from nbconv.cuda._reduce import ReduceKey
    from nbconv.cuda._wgrad_tiles import TileReduceKey

    if isinstance(key, ConvTileKey):
        kind = "tiles, transposed" if key.transposed_weight else "tiles"
        return (f"{kind} {key.kernel_size[0]}x{key.kernel_size[1]} s{key.stride[0]}{key.stride[1]} "
                f"d{key.dilation[0]}{key.dilation[1]} tile{'x'.join(map(str, key.tile))} "
                f"micro{key.micro[0]}x{key.micro[1]} {dtype.name}")
    if isinstance(key, TileReduceKey):
        return (f"weight grad tiles {key.kernel_size[0]}x{key.kernel_size[1]} s{key.stride[0]} d{key.dilation[0]} "
                f"tile{'x'.join(map(str, key.tile))} micro{key.micro[0]}x{key.micro[1]} {dtype.name}")
    if isinstance(key, ReduceKey):
        what = "bias grad" if key.bias_only else f"weight grad {key.kernel_size[0]}x{key.kernel_size[1]}"
        return f"{what} s{key.stride[0]} d{key.dilation[0]} {dtype.name}"
    if isinstance(key, PlaneKey):
        kind = "planes, transposed" if key.transposed_weight else "planes"
        return (f"{kind} {key.kernel_size[0]}x{key.kernel_size[1]} s{key.stride[0]}{key.stride[1]} "
                f"d{key.dilation[0]}{key.dilation[1]} block{'x'.join(map(str, key.block))} r{key.rows_per_thread} "
                f"oc{key.oc_block} {dtype.name}")
    kind = "input grad" if key.transposed_weight else "forward"
    return (f"{kind} {key.kernel_size[0]}x{key.kernel_size[1]} s{key.stride[0]}{key.stride[1]} "
            f"d{key.dilation[0]}{key.dilation[1]} tile{key.tile[0]}x{key.tile[1]} oc{key.oc_block} {dtype.name}")


def resident_threads(registers: int, threads: int, smem: int) -> int:
    """Threads an sm_90 SM keeps resident: 64K registers (8 per thread at a time), 228 KB shared
    memory (1 KB reserved per block), 2048 threads and 32 blocks at most."""
    regs = -(-max(registers, 1) // 8) * 8
    blocks = min(32, 2048 // threads, 65536 // (regs * threads), (228 * 1024) // (smem + 1024))
    return blocks * threads


def standard_table() -> list[dict]:
    """Forward, input and weight gradient of every standard shape (batch 32, float32): the kernel
    the launcher picks and the general one (tiled forward, pair reduction), as ptxas compiles
    them for sm_90."""
    import numpy as np
    from compile_kernels import DeviceStandIn

    from nbconv._shapes import STANDARD_SHAPES
    from nbconv._spec import conv2d_input_spec, conv2d_spec
    from nbconv.cuda._compile import compile_forward, compile_key
    from nbconv.cuda._launch import (
        REDUCE_THREADS,
        ConvTileLaunch,
        PlaneLaunch,
        launch_configs,
        plane_launch_config,
        reduce_key,
        tile_launch_config,
        tile_reduce_launch,
    )

    dt = np.dtype(np.float32)
    rows = []
    for shape in STANDARD_SHAPES:
        x, w = DeviceStandIn(shape.input_shape(32), dt), DeviceStandIn(shape.weight_shape(), dt)
        fwd = conv2d_spec(x, w, None, **shape.conv_args())
        gy = DeviceStandIn(fwd.output_shape, dt)
        for op, spec in (("forward", fwd), ("input grad", conv2d_input_spec(shape.input_shape(32), w, gy,
                                                                               **shape.conv_args()))):
            launched = launch_configs(spec)  # one, or one per output phase
            # against the general tiled kernel, or for the product by tiles against the plane kernel
            other = plane_launch_config(spec) if isinstance(launched[0], ConvTileLaunch) else \
                tile_launch_config(spec) if isinstance(launched[0], PlaneLaunch) else None
            for cfg in launched + ([other] if other is not None else []):
                fn = ptxas_report(compile_forward(cfg.key, dt, (9, 0)))[0]
                threads = int(np.prod(cfg.block))
                if isinstance(cfg, ConvTileLaunch):
                    per_thread = cfg.key.micro[0] * cfg.key.micro[1]
                else:
                    per_thread = cfg.key.oc_block * (cfg.key.rows_per_thread if isinstance(cfg, PlaneLaunch) else 1)
                rows.append({"shape": shape.name, "op": op, "kernel": _describe(cfg.key, dt),
                             "launched": any(cfg is c for c in launched), "threads": threads,
                             "outputs_per_thread": per_thread,
                             "resident": resident_threads(fn["registers"], threads, fn["smem"]), **fn})
        # the weight gradient's pass 1: by tiles where a group has many output channels, else by
        # pairs (shown in both cases); outputs per thread: its micro-tile, or the pair's taps
        tiles = tile_reduce_launch(fwd)
        pairs = reduce_key(fwd, bias_only=False)
        kernels = [(pairs, REDUCE_THREADS, pairs.kernel_size[0] * pairs.kernel_size[1], tiles is None)]
        if tiles is not None:
            kernels.insert(0, (tiles.key, tiles.key.threads, tiles.key.micro[0] * tiles.key.micro[1], True))
        for key, threads, per_thread, launched in kernels:
            fn = ptxas_report(compile_key(key, dt, (9, 0))[0])[0]
            rows.append({"shape": shape.name, "op": "weight grad", "kernel": _describe(key, dt), "launched": launched,
                         "threads": threads, "outputs_per_thread": per_thread,
                         "resident": resident_threads(fn["registers"], threads, fn["smem"]), **fn})
    return rows


def steps_table() -> list[dict]:
    """The tile kernels of the standard and extra shapes (batch 32, float32): instructions
    executed per step of TK values (forward, input gradient) or positions (weight gradient),
    counted from the SASS loops (:func:`sass.step_loop_mix`), and the FFMA share of them."""
    import numpy as np
    from compile_kernels import DeviceStandIn

    from nbconv._shapes import EXTRA_SHAPES, STANDARD_SHAPES
    from nbconv._spec import conv2d_input_spec, conv2d_spec
    from nbconv.cuda._launch import ConvTileLaunch, forward_launch_config, tile_reduce_launch

    dt = np.dtype(np.float32)
    rows = []
    for shape in STANDARD_SHAPES + EXTRA_SHAPES:
        x, w = DeviceStandIn(shape.input_shape(32), dt), DeviceStandIn(shape.weight_shape(), dt)
        fwd = conv2d_spec(x, w, None, **shape.conv_args())
        gy = DeviceStandIn(fwd.output_shape, dt)
        inp = conv2d_input_spec(shape.input_shape(32), w, gy, **shape.conv_args())
        for op, cfg in (("forward", forward_launch_config(fwd)), ("input grad", forward_launch_config(inp)),
                        ("weight grad", tile_reduce_launch(fwd))):
            if cfg is None or (op != "weight grad" and not isinstance(cfg, ConvTileLaunch)):
                continue
            rows.append({"shape": shape.name, "op": op, "kernel": _describe(cfg.key, dt), **tile_step_figures(cfg.key)})
    return rows


def tile_step_figures(key) -> dict:
    """A tile kernel's step (float32, sm_90): a thread's FFMA, global loads and shared loads per
    step, the instructions it executes per step and the FFMA share of them, from the SASS loops
    (:func:`sass.step_loop_mix`)."""
    import numpy as np
    from sass import step_loop_mix

    from nbconv.cuda._compile import compile_key

    mix = step_loop_mix(compile_key(key, np.dtype(np.float32), (9, 0))[0])
    ffma = key.micro[0] * key.micro[1] * key.tile[2]  # a thread's products per step
    if "products_ffma" in mix:  # the products' loop, partly unrolled, runs several passes
        passes = ffma // mix["products_ffma"]
        executed = mix["step_instructions"] + (passes - 1) * mix["products_instructions"]
        lds = mix["step_lds"] + (passes - 1) * mix["products_lds"]
    else:  # unrolled whole into the step
        assert mix["step_ffma"] == ffma, (mix, ffma)
        executed, lds = mix["step_instructions"], mix["step_lds"]
    loads = (key.tile[0] + key.tile[1]) * key.tile[2] // key.threads
    return {"ffma": ffma, "loads": loads, "lds": lds, "executed": executed, "ffma_share": ffma / executed, **mix}


def pairs_table() -> list[dict]:
    """The pair reduction's pass 1 (the weight gradient of the standard depthwise and ResNeXt
    shapes): instructions executed per output position, from its loop over strips."""
    import numpy as np
    from compile_kernels import DeviceStandIn
    from sass import step_loop_mix

    from nbconv._shapes import STANDARD_SHAPES
    from nbconv._spec import conv2d_spec
    from nbconv.cuda._compile import compile_key
    from nbconv.cuda._launch import reduce_key, tile_reduce_launch
    from nbconv.cuda._reduce import reduce_launch_bounds

    dt = np.dtype(np.float32)
    rows, seen = [], {}
    for shape in STANDARD_SHAPES:
        spec = conv2d_spec(DeviceStandIn(shape.input_shape(32), dt), DeviceStandIn(shape.weight_shape(), dt), None,
                           **shape.conv_args())
        if tile_reduce_launch(spec) is not None:
            continue
        key = reduce_key(spec, bias_only=False)
        if key not in seen:
            mix = step_loop_mix(compile_key(key, dt, (9, 0))[0], pairs=True)
            taps = key.kernel_size[0] * key.kernel_size[1]
            outputs = mix["step_ffma"] // taps  # outputs a pass of the loop takes (strips x unrolling)
            seen[key] = {"kernel": _describe(key, dt), "strip": key.strip, "outputs_per_pass": outputs,
                         "instructions_per_output": mix["step_instructions"] / outputs,
                         "loads_per_output": mix["step_loads"] / outputs,
                         "resident_blocks": reduce_launch_bounds(key)[1], **mix}
        rows.append({"shape": shape.name, **seen[key]})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--standard", action="store_true")
    parser.add_argument("--steps", action="store_true")
    parser.add_argument("--strip", type=int, default=None,
                        help="with --steps: the pair kernel's outputs a strip (1: one at a time)")
    args = parser.parse_args(argv)
    if not (cuda_tool("ptxas") and cuda_tool("cuobjdump")):
        print("needs ptxas and cuobjdump: pip install nvidia-cuda-nvcc nvidia-cuda-cuobjdump")
        return 2
    if args.steps:
        if args.strip is not None:
            from nbconv.cuda import _launch

            _launch.REDUCE_STRIP = args.strip
        rows = steps_table()
        print("| shape | op | kernel | global loads | LDS | FFMA | instructions | FFMA share |")
        print("|---|---|---|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['shape']} | {r['op']} | {r['kernel']} | {r['loads']} | {r['lds']} | {r['ffma']} | "
                  f"{r['executed']} | {100 * r['ffma_share']:.0f}% |")
        pairs = pairs_table()
        print()
        print("| shape | weight gradient by pairs | strip | instructions per output | loads per output |")
        print("|---|---|---:|---:|---:|")
        for r in pairs:
            print(f"| {r['shape']} | {r['kernel']} | {r['strip']} | {r['instructions_per_output']:.0f} | "
                  f"{r['loads_per_output']:.1f} |")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"tiles": rows, "pairs": pairs}, f, indent=1)
        return 0
    if args.standard:
        rows = standard_table()
        print("| shape | op | kernel | launched | regs | resident threads/SM | outputs/thread | SASS instr | FFMA "
              "| LDS | LDG | CALL |")
        print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['shape']} | {r['op']} | {r['kernel']} | {'yes' if r['launched'] else 'no'} | "
                  f"{r['registers']} | {r['resident']} | {r['outputs_per_thread']} | {r['instructions']} | "
                  f"{r['fma']} | {r['lds']} | {r['ldg']} | {r['calls']} |")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        return 1 if any(r["spill_stores"] or r["spill_loads"] for r in rows) else 0
    from compile_kernels import specialisations

    from nbconv.cuda._compile import compile_key

    rows = []
    for key, dtype in list(specialisations())[:args.limit]:
        ptxs = compile_key(key, dtype, (9, 0))
        for part, ptx in enumerate(ptxs):
            for fn in ptxas_report(ptx):
                rows.append({"kernel": _describe(key, dtype) + (f" pass {part + 1}" if len(ptxs) > 1 else ""), **fn})
    print("| kernel | regs | spill st/ld (B) | SASS instr | FMA | FMA share | LDG+LD | LDS | CALL | most frequent |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        top = " ".join(f"{op} {n}" for op, n in r["top"][:4])
        print(f"| {r['kernel']} | {r['registers']} | {r['spill_stores']}/{r['spill_loads']} | {r['instructions']} | "
              f"{r['fma']} | {100 * r['fma_share']:.1f}% | {r['ldg']} | {r['lds']} | {r['calls']} | {top} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    spilled = [r["kernel"] for r in rows if r["spill_stores"] or r["spill_loads"]]
    print(f"{len(rows)} kernels; {len(spilled)} spill to local memory" + (": " + ", ".join(spilled) if spilled else ""))
    return 1 if spilled else 0


if __name__ == "__main__":
    sys.exit(main())
