"""What LLVM makes of nbconv's CPU inner loops on several x86 targets, without running them:
the vector width of the packed FMAs, how many there are, and how many vector registers are
spilled to the stack, for the loops LLVM vectorises itself (``_packed``'s tap rows, the generated
row-block and channels-last kernels) and for one explicit 16-lane kernel (``_simd``'s outer
product row).

Each target is compiled in its own process with ``NUMBA_CPU_NAME`` set and
``NUMBA_CPU_FEATURES`` empty (the CPU's own features), so this machine need not have them. On
Intel server CPUs LLVM prefers 256-bit vectors for loops it vectorises (``prefer-256-bit``) even
with AVX-512; AMD Zen 4/5 take 512 bits.

Run: ``python docs/vector_width.py [CPU ...]`` (default: skylake-avx512 sapphirerapids znver4
znver5 haswell znver3).
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
    for source, name, sig in [(_channels_last.module_source(spec), "_block", (f32, i64) * 4),
                              (_channels_last.weight_grad_source(spec), "_wrow", (f32, i64) * 2 + (f32,))]:
        k = getattr(_generated.load(source, "nbconv_channels_last"), name)
        kernels.append((f"_channels_last.{name} (3x3)", fresh_asm(k, sig, k.targetoptions), loop_bits))
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


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        print(json.dumps(_measure()))
    else:
        main(sys.argv[1:] or TARGETS)
