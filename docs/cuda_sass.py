"""What the CUDA kernels compile to for sm_90 (H100/H200), without a GPU: registers, local-memory
spills and the instruction mix of every specialisation the tests and benchmarks launch.

Each specialisation's PTX (``numba.cuda.compile_ptx``, as ``tests/compile_kernels.py`` builds
them) goes through ``ptxas -v`` (registers, spill bytes, shared memory) and ``cuobjdump -sass``
(the SASS instructions). Needs the pip wheels ``nvidia-cuda-nvcc`` (ptxas) and
``nvidia-cuda-cuobjdump``, and NVVM (numba-cuda's ``cu13`` extra); no driver.

    python docs/cuda_sass.py                 # a table of every specialisation
    python docs/cuda_sass.py --json FILE     # also the figures as JSON
    python docs/cuda_sass.py --limit 20      # the first 20 only

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
    from nbconv.cuda._depthwise import DepthwiseKey
    from nbconv.cuda._reduce import ReduceKey

    if isinstance(key, ReduceKey):
        what = "bias grad" if key.bias_only else f"weight grad {key.kernel_size[0]}x{key.kernel_size[1]}"
        return f"{what} s{key.stride[0]} d{key.dilation[0]} {dtype.name}"
    if isinstance(key, DepthwiseKey):
        return (f"depthwise {key.kernel_size[0]}x{key.kernel_size[1]} s{key.stride[0]}{key.stride[1]} "
                f"d{key.dilation[0]}{key.dilation[1]} block{'x'.join(map(str, key.block))} r{key.rows_per_thread} "
                f"{dtype.name}")
    kind = "input grad" if key.transposed_weight else "forward"
    return (f"{kind} {key.kernel_size[0]}x{key.kernel_size[1]} s{key.stride[0]}{key.stride[1]} "
            f"d{key.dilation[0]}{key.dilation[1]} tile{key.tile[0]}x{key.tile[1]} oc{key.oc_block} {dtype.name}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)
    if not (cuda_tool("ptxas") and cuda_tool("cuobjdump")):
        print("needs ptxas and cuobjdump: pip install nvidia-cuda-nvcc nvidia-cuda-cuobjdump")
        return 2
    from compile_kernels import specialisations

    from nbconv.cuda._compile import compile_forward, compile_reduce
    from nbconv.cuda._reduce import ReduceKey

    rows = []
    for key, dtype in list(specialisations())[:args.limit]:
        ptxs = compile_reduce(key, dtype, (9, 0)) if isinstance(key, ReduceKey) else [compile_forward(key, dtype, (9, 0))]
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
