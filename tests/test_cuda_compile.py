"""Every CUDA kernel specialisation compiles to real PTX for sm_80 and sm_90 (no GPU needed).

The simulator accepts code that the CUDA compiler rejects, so this runs the real compiler in a
fresh interpreter with the simulator off (see tests/compile_kernels.py).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.cuda


def test_all_specialisations_compile_for_sm80_and_sm90():
    script = os.path.join(os.path.dirname(__file__), "compile_kernels.py")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    res = subprocess.run([sys.executable, script, "8.0", "9.0"], capture_output=True, text=True, env=env, timeout=1200)
    print(res.stdout)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("compiled ") == 2
