"""The ASV history kept in asv_bench/results/ loads, names its machines, and publishes offline.

Nothing here runs a benchmark: ``asv publish`` only collates the kept results into the dashboard.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ASV_DIR = pathlib.Path(__file__).resolve().parent.parent / "asv_bench"
RESULTS = ASV_DIR / "results"
sys.path.insert(0, str(ASV_DIR))

from compact_results import compact, result_file_name


def _in_git_checkout() -> bool:
    return subprocess.run(["git", "-C", str(ASV_DIR), "rev-parse", "--git-dir"], capture_output=True,
                          check=False).returncode == 0


def _kept() -> set[pathlib.Path] | None:
    """The files under results/ that git tracks (a local `asv run` may leave others), or None
    outside a git checkout (then every file counts)."""
    if not _in_git_checkout():
        return None
    out = subprocess.run(["git", "-C", str(RESULTS), "ls-files", "--full-name", "."], capture_output=True, text=True,
                         check=True).stdout
    root = RESULTS.parent.parent
    return {(root / line).resolve() for line in out.splitlines()}


def _machines() -> list[pathlib.Path]:
    kept = _kept()
    return sorted(p for p in RESULTS.iterdir()
                  if p.is_dir() and (kept is None or (p / "machine.json").resolve() in kept))


def _result_files(machine: pathlib.Path) -> list[pathlib.Path]:
    kept = _kept()
    return sorted(p for p in machine.glob("*.json")
                  if p.name != "machine.json" and (kept is None or p.resolve() in kept))


def test_every_machine_is_described():
    machines = _machines()
    assert machines, "no kept results"
    readme = (RESULTS / "README.md").read_text(encoding="utf-8")
    for machine in machines:
        info = json.loads((machine / "machine.json").read_text(encoding="utf-8"))
        assert info["machine"] == machine.name
        assert f"`{machine.name}`" in readme, f"{machine.name} has no line in results/README.md"


@pytest.mark.parametrize("machine", _machines(), ids=lambda p: p.name)
def test_kept_results_load(machine):
    """Each result: compact (no interpreter path, no samples), named as ASV names it, for a commit
    of this repository, with the history's benchmarks and at least one finite figure."""
    files = _result_files(machine)
    assert files
    known = json.loads((RESULTS / "benchmarks.json").read_text(encoding="utf-8"))
    for path in files:
        result = json.loads(path.read_text(encoding="utf-8"))
        assert path.name == result_file_name(result)
        assert re.fullmatch(r"existing-py\d+\.\d+", result["env_name"]), result["env_name"]
        assert result["params"]["python"] == result["python"] and "/" not in result["python"]
        assert result["params"]["machine"] == machine.name
        columns = result["result_columns"]
        assert set(result["results"]) <= set(known), set(result["results"]) - set(known)
        values = [v for row in result["results"].values() for v in (row[columns.index("result")] or [])]
        assert any(isinstance(v, float) and math.isfinite(v) for v in values), path.name
        if "samples" in columns:  # asv leaves trailing empty columns out of a row
            at = columns.index("samples")
            assert all(len(row) <= at or row[at] is None for row in result["results"].values())
        if _in_git_checkout():
            found = subprocess.run(["git", "-C", str(ASV_DIR), "cat-file", "-e", f"{result['commit_hash']}^{{commit}}"],
                                   capture_output=True, check=False)
            assert found.returncode == 0, f"{path.name}: commit {result['commit_hash']} is not in this repository"


def test_compact_drops_paths_and_samples():
    raw = {
        "commit_hash": "0123456789abcdef0123456789abcdef01234567", "env_name": "existing-py_tmp_v_bin_python",
        "params": {"machine": "m", "python": "/tmp/v/bin/python"}, "python": "/tmp/v/bin/python",
        "result_columns": ["result", "params", "samples"], "results": {"b.f": [[1.0], [["'cpu'"]], [[1.0, 1.1]]]},
    }
    new = compact(raw, "3.12")
    assert new["env_name"] == "existing-py3.12" and new["python"] == "3.12" and new["params"]["python"] == "3.12"
    assert new["results"]["b.f"] == [[1.0], [["'cpu'"]], None]
    assert result_file_name(new) == "01234567-existing-py3.12.json"
    assert raw["results"]["b.f"][2] == [[1.0, 1.1]]  # the input is not modified


@pytest.mark.asv
@pytest.mark.skipif(not _in_git_checkout(), reason="asv publish reads the commits' order and dates from git")
def test_publish_offline(tmp_path):
    """``publish.py`` builds the dashboard from the kept results alone (asv publish, then the
    vendored scripts): every machine's graphs are in it, and the page loads nothing remote."""
    pytest.importorskip("asv")
    html = tmp_path / "html"
    res = subprocess.run([sys.executable, str(ASV_DIR / "publish.py"), "--html-dir", str(html)], cwd=ASV_DIR,
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    index = json.loads((html / "index.json").read_text(encoding="utf-8"))
    assert {p.name for p in _machines()} <= set(index["params"]["machine"])
    assert "bench_conv.Forward.time_conv2d" in index["benchmarks"]
    page = (html / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"<(script|link)\b[^>]*(src|href)=\"https?://", page)
    graphs = list((html / "graphs").rglob("*.json"))
    assert graphs, "no graph data published"


@pytest.mark.asv
@pytest.mark.skipif(shutil.which("chromium") is None, reason="the render check needs chromium (apt-get install chromium)")
@pytest.mark.skipif(not _in_git_checkout(), reason="asv publish reads the commits' order and dates from git")
def test_dashboard_renders(tmp_path):
    """check_dashboard.sh: the published pages draw their graphs in headless Chromium."""
    html = tmp_path / "html"
    subprocess.run([sys.executable, str(ASV_DIR / "publish.py"), "--html-dir", str(html)], cwd=ASV_DIR,
                   capture_output=True, check=True, timeout=300)
    env = dict(os.environ, HTML_DIR=str(html), PORT=str(20000 + os.getpid() % 20000), PYTHON=sys.executable)
    res = subprocess.run(["bash", str(ASV_DIR / "check_dashboard.sh"), str(tmp_path / "shots")], env=env,
                         capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("ok   ") == 4
