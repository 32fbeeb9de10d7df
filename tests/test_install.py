"""The CUDA extras resolve, on the Python versions CI does not run, to package sets that work,
and a broken set already installed is one clear error at the first CUDA call.

The resolution asks the package index (pip's ``--dry-run --report`` with ``--python-version`` and
binary wheels only, as a fresh install on that Python would resolve); without a reachable index
it skips, saying why.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nbconv.cuda import _versions

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent
PYTHONS = ("3.12", "3.13")
EXTRAS = ("cuda12", "cuda13")


def _requirements(extra: str) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["dependencies"] + project["optional-dependencies"][extra]


def _pip_version() -> tuple[int, ...]:
    import pip

    return _versions.release(pip.__version__)


def test_the_unpinned_set_is_known_to_break():
    """The table catches what a fresh Python 3.12 install resolved before the pin, and not the
    pinned set or a later numba-cuda."""
    assert _versions.broken({"numba-cuda": "0.30.4", "numpy": "2.5.5"})
    assert _versions.broken({"numba-cuda": "0.29.0", "numpy": "2.5.0"})
    assert not _versions.broken({"numba-cuda": "0.30.4", "numpy": "2.4.6"})
    assert not _versions.broken({"numba-cuda": "0.31.0", "numpy": "2.5.5"})
    assert not _versions.broken({"numpy": "2.5.5"})


def test_a_broken_installed_set_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(_versions, "installed", lambda: {"numba-cuda": "0.30.4", "numpy": "2.5.1"})
    with pytest.raises(ImportError, match=r"numba-cuda 0\.30\.4 with numpy 2\.5\.1: .*row_stack.*"
                                          r"Fix: pip install \"numpy<2\.5\""):
        _versions.check_installed()


def test_this_environment_passes_the_check():
    _versions.check_installed()


def test_extras_resolve_to_working_sets(tmp_path):
    """Every (Python, extra) pair, resolved at once (pip processes in parallel)."""
    if _pip_version() < (24,):
        pytest.skip("pip < 24 checks Requires-Python against the running interpreter, not --python-version")
    runs = {}
    for python in PYTHONS:
        for extra in EXTRAS:
            report = tmp_path / f"{python}-{extra}.json"
            cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
                   "--only-binary=:all:", "--python-version", python, "--report", str(report),
                   *_requirements(extra)]
            runs[python, extra] = (report, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                            text=True))
    problems = []
    for (python, extra), (report, run) in runs.items():
        output = run.communicate(timeout=600)[0]
        if run.returncode != 0:
            if any(s in output for s in ("NewConnectionError", "Could not fetch URL", "Network is unreachable",
                                         "Temporary failure in name resolution")):
                pytest.skip(f"no package index reachable: {output.strip().splitlines()[-1]}")
            problems.append(f"Python {python} .[{extra}] does not resolve:\n{output[-3000:]}")
            continue
        resolved = {item["metadata"]["name"].lower(): item["metadata"]["version"]
                    for item in json.loads(report.read_text())["install"]}
        assert "numba-cuda" in resolved and "numpy" in resolved, sorted(resolved)
        problems += [f"Python {python} .[{extra}]: {p}" for p in _versions.broken(resolved)]
    assert not problems, "\n".join(problems)
