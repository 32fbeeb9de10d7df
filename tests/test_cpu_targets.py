"""The assembly tests (marker ``asm``) hold when the kernels are compiled for x86 CPUs other than
this machine's: the machines that run CI and the users' are Intel or AMD, with or without
AVX-512, and LLVM vectorises differently on each (``tests/asm.py``).

Each target runs those tests in a fresh process, with ``NUMBA_CPU_NAME`` set to that CPU and
``NUMBA_CPU_FEATURES`` empty (the CPU's own features, whatever the host has): the kernels are
compiled and read, never run, so this machine need not have the instructions.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from asm import loop_vector_bits

from nbconv._numba_options import CPU_SERIAL
from nbconv.cpu._target import target

#: CPU -> ((explicit vector bits, loop vector bits), what it stands for)
TARGETS = {
    "skylake-avx512": ((512, 256), "Intel Xeon, AVX-512; LLVM prefers 256-bit vectors for loops it vectorises"),
    "znver4": ((512, 512), "AMD Zen 4/5, AVX-512; 512-bit loops"),
    "haswell": ((256, 256), "AVX2 only: explicit 16-lane vectors split in two"),
}


def _host_widths() -> tuple[int, int]:
    """The widths this process compiles for: a target that has them compiles as the host does."""
    return target().vector_bits, loop_vector_bits(CPU_SERIAL)


def test_assembly_tests_pass_compiled_for_other_cpus(tmp_path):
    """One process per target, all at once (compiling is serial: two cores halve the wait)."""
    tests = Path(__file__).parent
    runs = {}
    for cpu in (cpu for cpu in TARGETS if TARGETS[cpu][0] != _host_widths()):  # the suite's own run covers those
        env = dict(os.environ, NUMBA_CPU_NAME=cpu, NUMBA_CPU_FEATURES="", NUMBA_CACHE_DIR=str(tmp_path / cpu),
                   NBCONV_CACHE_DIR=str(tmp_path / cpu / "generated"))
        runs[cpu] = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-m", "asm", "-p", "no:cacheprovider", str(tests)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tests.parent)
    failed = []
    for cpu, run in runs.items():
        output = run.communicate(timeout=900)[0]
        summary = output.strip().splitlines()[-1] if output.strip() else ""
        if run.returncode != 0 or " passed" not in summary:
            failed.append(f"compiled for {cpu} ({TARGETS[cpu][1]}):\n{output[-5000:]}")
    assert not failed, "\n\n".join(failed)


#: Test modules of the kernels whose blocking follows the target's registers and vector width, run
#: compiled for AVX2 (``haswell``: 16 registers of 256 bits) where this machine can execute it.
#: (The rest of the CPU suite passed so on a Zen 3, AVX2 host; it takes minutes more.)
AVX2_MODULES = ["test_cpu_pointwise.py", "test_cpu_im2col.py", "test_cpu_depthwise_lanes.py",
                # _outer's stores by tiles of the target's vectors, whole where later blocks overwrite
                # (20 s more compiled afresh), and the weight gradients' blocks within AVX2's sums
                "test_cpu_outer.py::test_outer_product_row", "test_cpu_outer.py::test_outer_product_row_overwritten",
                "test_cpu_outer.py::test_packed_row_formula", "test_cpu_outer.py::test_idle_groups_store_nothing",
                "test_cpu_outer.py::test_weight_grad_block_choice",
                "test_cpu_winograd_wgrad.py::test_blocking_keeps_its_sums_in_the_registers"]


def _runs_avx2() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx2 " in flags and " fma " in flags


def test_kernels_compute_the_reference_compiled_for_avx2(tmp_path):
    """The numbers, not only the assembly, on a CPU without AVX-512: the modules above in a fresh
    process compiled for ``haswell`` (AVX2, 16 vector registers: other block sizes, the BLAS for
    the 1x1 products), on this machine when it can run AVX2 code."""
    import pytest

    if not _runs_avx2():
        pytest.skip("this machine cannot run AVX2 code")
    if target().vector_bits == 256 and target().vector_registers == 16:
        pytest.skip("this process already compiles for AVX2: the suite's own run covers it")
    tests = Path(__file__).parent
    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES="", NUMBA_CACHE_DIR=str(tmp_path),
               NBCONV_CACHE_DIR=str(tmp_path / "generated"))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          *(str(tests / m) for m in AVX2_MODULES)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tests.parent,
                         timeout=900)
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    assert run.returncode == 0 and " passed" in summary, run.stdout[-5000:]
