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

from llvmlite import binding as llvm

TARGETS = {
    "skylake-avx512": "Intel Xeon, AVX-512; LLVM prefers 256-bit vectors for loops it vectorises",
    "znver4": "AMD Zen 4, AVX-512; 512-bit loops",
    "haswell": "AVX2 only: explicit 16-lane vectors split in two",
}


def test_assembly_tests_pass_compiled_for_other_cpus(tmp_path):
    """One process per target, all at once (compiling is serial: two cores halve the wait)."""
    tests = Path(__file__).parent
    host = llvm.get_host_cpu_name()
    runs = {}
    for cpu in (cpu for cpu in TARGETS if cpu != host):  # the suite's own run covers the host
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
            failed.append(f"compiled for {cpu} ({TARGETS[cpu]}):\n{output[-5000:]}")
    assert not failed, "\n\n".join(failed)
