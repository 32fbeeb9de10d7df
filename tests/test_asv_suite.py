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
    env["NBCONV_ASV_SMOKE"] = "1"  # batch 1, one sample: proves each benchmark runs, measures nothing
    return subprocess.run([sys.executable, "-m", "asv", *args], cwd=ASV_DIR, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> str:
    """asv.conf.json with results, html and environments in a temporary folder: a smoke run must
    not write into the kept history (asv_bench/results: its machine.json, its benchmarks.json)."""
    import json

    from asv.util import load_json

    conf = load_json(str(ASV_DIR / "asv.conf.json"), js_comments=True)
    tmp = tmp_path_factory.mktemp("asv")
    conf.update(repo=str(ASV_DIR.parent), benchmark_dir=str(ASV_DIR / "benchmarks"), results_dir=str(tmp / "results"),
                html_dir=str(tmp / "html"), env_dir=str(tmp / "env"))
    path = tmp / "asv.conf.json"
    path.write_text(json.dumps(conf))
    return str(path)


@pytest.fixture(scope="module")
def machine(config):
    res = _asv("machine", "--yes", timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    return config


def test_asv_check(machine):
    res = _asv("check", "--config", machine, "-E", f"existing:{sys.executable}", timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "No problems found" in res.stdout


def test_asv_quick_dry_run(machine):
    res = _asv("run", "--config", machine, "--quick", "--dry-run", "--show-stderr", "-E", f"existing:{sys.executable}",
               timeout=1200)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    # every benchmark ran (or skipped cleanly); none failed
    assert "failed" not in out, out
    for name in ("Forward.time_conv2d", "Forward.track_gflops", "Forward.peakmem_conv2d",
                 "GroupsSweep.time_forward", "FirstCall.track_cold_jit_seconds", "PaddingModes.track_extra_mib",
                 "DaskBatch.track_seconds"):
        assert name in out, name


def _publish_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("asv_publish", ASV_DIR / "publish.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dashboard_has_no_remote_dependencies():
    """Every CDN script/stylesheet of the installed asv's page templates has a vendored copy, and
    the localised pages reference only files that exist under vendor/."""
    import re

    publish = _publish_module()
    www = pathlib.Path(asv.__file__).resolve().parent / "www"
    pages = sorted(www.glob("*.html"))
    assert pages, www
    for page in pages:
        new, unknown = publish.localise(page.read_text(encoding="utf-8"))
        assert unknown == [], (page.name, unknown)
        assert not re.search(r"<(script|link)\b[^>]*(src|href)=\"https?://", new), page.name
        for ref in re.findall(r"(?:src|href)=\"vendor/([^\"]+)\"", new):
            assert (ASV_DIR / "vendor" / ref).is_file(), ref
    assert publish.localise('<script src="https://cdn.example/x.js"></script>')[1] == ["https://cdn.example/x.js"]
