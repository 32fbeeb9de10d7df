"""What LLVM makes of nbconv's CPU inner loops on several x86 targets, without running them:
the vector width of the packed FMAs, how many there are, and how many vector registers are
spilled to the stack, for the loops LLVM vectorises itself (``_packed``'s tap rows, the generated
row-block kernel and the channels-last weight-gradient row) and for one explicit 16-lane kernel
(``_simd``'s outer product row).

Each target is compiled in its own process with ``NUMBA_CPU_NAME`` set and
``NUMBA_CPU_FEATURES`` empty (the CPU's own features), so this machine need not have them. On
Intel server CPUs LLVM prefers 256-bit vectors for loops it vectorises (``prefer-256-bit``) even
with AVX-512; AMD Zen 4/5 take 512 bits.

Run: ``python docs/vector_width.py [CPU ...]`` (default: skylake-avx512 sapphirerapids znver4
znver5 haswell znver3).

With ``--bench [ALTERNATIONS]`` it instead runs, on this machine, ``nbconv bench --op forward``
on the depthwise shapes in fresh processes that alternate two compile settings: the host's
features with ``+prefer-256-bit`` (LLVM vectorises loops 256 bits wide, as it does by default
on Intel server CPUs) and with ``-prefer-256-bit`` (512 bits where the CPU has AVX-512, the
default on AMD Zen 4/5), each with its own empty caches. Each process times nbconv against
PyTorch interleaved; the table gives, per shape, the median over the alternations of that
speedup with 512-bit loops divided by the one with 256-bit loops (above 1: 512-bit loops are
the faster), so the machine's drift between processes cancels::

    python docs/vector_width.py --bench [ALTERNATIONS] [--rounds N] [--shapes A,B,...]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

TARGETS = ["skylake-avx512", "sapphirerapids", "znver4", "znver5", "haswell", "znver3"]


def _measure() -> dict:
    """Runs in the child process: the figures for the target it was started for."""
    import numba
    import numpy as np
    from numba import types

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from asm import fresh_asm, loop_vector_bits, packed_fmas, spills

    from nbconv._numba_options import CPU_SERIAL
    from nbconv._spec import conv2d_spec
    from nbconv.cpu import _channels_last, _generated, _packed, _rowblock, _simd
    from nbconv.cpu._target import target

    f32, i64 = types.float32[::1], types.int64
    loop_bits, explicit_bits = loop_vector_bits(CPU_SERIAL), target().vector_bits
    kernels = []
    for width in (3, 7):
        cols = types.UniTuple(i64, width)
        sig = (f32, f32, i64, i64, cols, cols, f32, i64, types.boolean, types.float32)
        kernels.append((f"_packed._row_taps ({width} taps)", fresh_asm(_packed._row_taps, sig, CPU_SERIAL), loop_bits))
    x = np.ones((2, 2, 20, 40), np.float32)
    spec = conv2d_spec(x, np.ones((2, 1, 3, 3), np.float32), None, 1, 1, 1, 2)
    driver = _generated.load(_rowblock.module_source(spec), "nbconv_rowblock").forward
    k = driver.py_func.__globals__[f"_rows{_rowblock.rows_per_pass(spec)}"]
    kernels.append(("_rowblock rows (3x3)", fresh_asm(k, (f32, i64, f32, i64, f32, i64, types.float32),
                                                      k.targetoptions), loop_bits))
    x = np.ones((2, 32, 7, 7), np.float32)
    spec = conv2d_spec(x, np.ones((32, 1, 3, 3), np.float32), None, 1, 1, 1, 32)
    k = _generated.load(_channels_last.weight_grad_source(spec), "nbconv_channels_last_wgrad")._wrow
    kernels.append(("_channels_last._wrow (3x3)", fresh_asm(k, (f32, i64) * 2 + (f32,), k.targetoptions), loop_bits))
    row = _simd.outer_product_row(3, 70, (0, 1, 2, 20, 21, 22), 8, 2, 240, 40, 50)

    @numba.njit
    def run(xs, x0, w, w0, b, b0, out, o0):
        row(xs, x0, w, w0, b, b0, out, o0)

    run.compile((f32, i64, f32, i64, f32, i64, f32, i64))
    kernels.append(("_simd.outer_product_row (explicit)", run.inspect_asm(run.signatures[-1]), explicit_bits))
    return {"loop_bits": loop_bits, "explicit_bits": explicit_bits,
            "kernels": [(name, bits, packed_fmas(asm, bits), len(spills(asm, bits))) for name, asm, bits in kernels]}


def main(targets: list[str]) -> None:
    rows = []
    for cpu in targets:
        with tempfile.TemporaryDirectory() as tmp:
            env = dict(os.environ, NUMBA_CPU_NAME=cpu, NUMBA_CPU_FEATURES="", NUMBA_CACHE_DIR=tmp,
                       NBCONV_CACHE_DIR=os.path.join(tmp, "generated"))
            run = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True,
                                 check=False)
        if run.returncode:
            print(f"{cpu}: failed\n{run.stderr[-2000:]}")
            continue
        figures = json.loads(run.stdout.strip().splitlines()[-1])
        rows += [(cpu, figures["loop_bits"], *k) for k in figures["kernels"]]
    print("| target | loops LLVM vectorises | kernel | register | packed FMAs | vector spills |")
    print("|---|---:|---|---:|---:|---:|")
    for cpu, loop_bits, name, bits, fmas, spilled in rows:
        print(f"| {cpu} | {loop_bits}-bit | {name} | {bits}-bit | {fmas} | {spilled} |")


#: Depthwise shapes of ``nbconv bench`` whose kernels hold loops LLVM vectorises itself.
BENCH_SHAPES = "mbv2_dw_112,mbv2_dw_s2,mbv2_dw_56,mbv2_dw_7,effnet_dw5_28,effnet_dw5_14,convnext_dw7,dw_mult2"


def bench(alternations: int, rounds: int, shapes: str) -> None:
    """The ``--bench`` mode (module docstring)."""
    import statistics

    from llvmlite import binding as llvm

    host = llvm.get_host_cpu_features().flatten()
    settings = {256: host + ",+prefer-256-bit", 512: host + ",-prefer-256-bit"}
    speedups: dict[int, list[dict]] = {bits: [] for bits in settings}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(alternations):
            for bits, features in settings.items():
                out = os.path.join(tmp, f"{bits}-{i}.json")
                env = dict(os.environ, NUMBA_CPU_FEATURES=features, NUMBA_CACHE_DIR=os.path.join(tmp, str(bits)),
                           NBCONV_CACHE_DIR=os.path.join(tmp, str(bits), "generated"))
                subprocess.run([sys.executable, "-m", "nbconv", "bench", "--op", "forward", "--shapes", shapes,
                                "--rounds", str(rounds), "--json", out], env=env, check=True, capture_output=True)
                with open(out) as f:
                    results = json.load(f)
                speedups[bits].append({r["name"]: r["speedup"] for r in results["results"]})
                machine = results["machine"]
    print(f"{machine.get('processor')}, {machine.get('threads')} threads, torch {machine.get('torch')}; LLVM host "
          f"CPU {llvm.get_host_cpu_name()}; {alternations} alternations of "
          f"`nbconv bench --op forward --rounds {rounds}`")
    print("| shape | speedup, 256-bit loops | speedup, 512-bit loops | 512 / 256 (median) |")
    print("|---|---:|---:|---:|")
    for name in shapes.split(","):
        s256 = [run[name] for run in speedups[256]]
        s512 = [run[name] for run in speedups[512]]
        ratio = statistics.median(b / a for a, b in zip(s256, s512))
        print(f"| {name} | {statistics.median(s256):.2f}x | {statistics.median(s512):.2f}x | {ratio:.2f} |")


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        print(json.dumps(_measure()))
    elif sys.argv[1:2] == ["--bench"]:
        import argparse

        parser = argparse.ArgumentParser()
        parser.add_argument("--bench", type=int, nargs="?", const=3, default=3, metavar="ALTERNATIONS")
        parser.add_argument("--rounds", type=int, default=7)
        parser.add_argument("--shapes", default=BENCH_SHAPES)
        args = parser.parse_args()
        bench(args.bench, args.rounds, args.shapes)
    else:
        main(sys.argv[1:] or TARGETS)
