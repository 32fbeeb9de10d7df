"""The CUDA kernel specialisations compile to real PTX for sm_90 (no GPU needed).

The simulator accepts code that the CUDA compiler rejects, so this runs the real compiler in a
fresh interpreter with the simulator off (see tests/compile_kernels.py). It compiles the covering
subset (every value of every key field, per kernel type and dtype: 63 of the 228 the tests and
benchmarks launch), since CI's two cores are short of time; ``python tests/compile_kernels.py 8.0
9.0`` compiles them all, and the GPU check runs that.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.cuda


def test_specialisations_compile_for_sm90():
    script = os.path.join(os.path.dirname(__file__), "compile_kernels.py")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    res = subprocess.run([sys.executable, script, "--cover", "9.0"], capture_output=True, text=True, env=env,
                         timeout=1200)
    print(res.stdout)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("compiled ") == 1 and "(covering subset)" in res.stdout
