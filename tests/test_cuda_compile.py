"""The CUDA kernel specialisations compile to real PTX for sm_90 (no GPU needed).

The simulator accepts code that the CUDA compiler rejects, so this runs the real compiler in a
fresh interpreter with the simulator off (see tests/compile_kernels.py). It compiles the covering
subset (per kernel type, every dtype and every value of every key field, the register-setting
ones once per value width), since CI's two cores are short of time, and with ptxas (the test
extra's ``nvidia-cuda-nvcc``) fails on any kernel that spills registers to local memory;
``python tests/compile_kernels.py 8.0 9.0`` compiles them all, and the GPU check runs that.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.cuda


def test_specialisations_compile_for_sm90_without_spills():
    from sass import cuda_tool

    script = os.path.join(os.path.dirname(__file__), "compile_kernels.py")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    spill_check = ["--no-spill"] if cuda_tool("ptxas") else []  # ptxas: the test extra's nvidia-cuda-nvcc
    res = subprocess.run([sys.executable, script, "--cover", *spill_check, "9.0"], capture_output=True, text=True,
                         env=env, timeout=1200)
    print(res.stdout)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("compiled ") == 1 and "(covering subset)" in res.stdout
    if not spill_check:
        pytest.skip("compiled; the spill check needs ptxas (pip install nvidia-cuda-nvcc)")
