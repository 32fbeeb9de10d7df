"""Every CUDA kernel specialisation compiles to real PTX for sm_90 (no GPU needed).

sm_90 only: each architecture costs ~65 s of CI, whose 20 minutes are nearly spent; for sm_80
run ``python tests/compile_kernels.py 8.0`` (the kernels use no feature either lacks).

The simulator accepts code that the CUDA compiler rejects, so this runs the real compiler in a
fresh interpreter with the simulator off (see tests/compile_kernels.py).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.cuda


def test_all_specialisations_compile_for_sm90():
    script = os.path.join(os.path.dirname(__file__), "compile_kernels.py")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    res = subprocess.run([sys.executable, script, "9.0"], capture_output=True, text=True, env=env, timeout=1200)
    print(res.stdout)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("compiled ") == 1
