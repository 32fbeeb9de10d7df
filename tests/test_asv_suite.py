"""The ASV suite in asv_bench/ must not rot: ``asv check`` and a quick dry run of every benchmark
against the installed checkout (what CI runs; the benchmarks skip what this machine lacks)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

asv = pytest.importorskip("asv")

ASV_DIR = pathlib.Path(__file__).resolve().parent.parent / "asv_bench"
pytestmark = pytest.mark.asv


def _asv(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}  # real backends only
    return subprocess.run([sys.executable, "-m", "asv", *args], cwd=ASV_DIR, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def machine():
    res = _asv("machine", "--yes", timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_asv_check(machine):
    res = _asv("check", "-E", f"existing:{sys.executable}", timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "No problems found" in res.stdout


def test_asv_quick_dry_run(machine):
    res = _asv("run", "--quick", "--dry-run", "--show-stderr", "-E", f"existing:{sys.executable}", timeout=1200)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    # every benchmark ran (or skipped cleanly); none failed
    assert "failed" not in out, out
    for name in ("Forward.time_conv2d", "Forward.track_gflops", "Forward.peakmem_conv2d",
                 "GroupsSweep.time_forward", "FirstCall.track_cold_jit_seconds"):
        assert name in out, name
