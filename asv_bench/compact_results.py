"""Make one machine's recorded ASV results fit to keep in git.

    python asv_bench/compact_results.py asv_bench/results/MACHINE

Run it with the Python that recorded the results (``record_history.sh`` and ``gpu_history.sh``
do). ``asv run -E existing:PATH`` names the environment after the interpreter's path
(``existing-py_tmp_venv_bin_python``) and writes that path into the results' parameters, so the
same machine recorded from two virtualenvs would draw two lines in the dashboard. Each result
file gets the environment ``existing-py{X.Y}`` and the parameter ``python: X.Y`` instead (a
recorded history follows a machine and a Python version, not a folder), and is renamed to match.
Raw timing samples (``asv run --record-samples``) and profiles are dropped; the JSON is written
without indentation. Files already compact are left as they are.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DROPPED_COLUMNS = ("samples", "profile")


def compact(result: dict, python_version: str) -> dict:
    """``result`` (one ASV result file's JSON) with a path-free environment and no raw samples."""
    out = dict(result)
    out["env_name"] = f"existing-py{python_version}"
    out["python"] = python_version
    out["params"] = dict(result.get("params", {}), python=python_version)
    columns = result.get("result_columns", [])
    drop = [columns.index(c) for c in DROPPED_COLUMNS if c in columns]
    if drop:
        out["results"] = {name: [None if i in drop else v for i, v in enumerate(row)]
                          for name, row in result["results"].items()}
    return out


def result_file_name(result: dict) -> str:
    """ASV's own naming: the first 8 hex digits of the commit, then the environment."""
    return f"{result['commit_hash'][:8]}-{result['env_name']}.json"


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print(__doc__, file=sys.stderr)
        return 2
    folder = Path(argv[0])
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    changed = 0
    for path in sorted(folder.glob("*.json")):
        if path.name == "machine.json":
            continue
        result = json.loads(path.read_text(encoding="utf-8"))
        if result.get("env_name", "").startswith("existing-py") and result.get("python") == result["params"].get(
                "python") and "/" not in result.get("python", "/"):
            continue  # compact already
        new = compact(result, version)
        target = folder / result_file_name(new)
        target.write_text(json.dumps(new, separators=(",", ":"), allow_nan=True), encoding="utf-8")
        if target != path:
            path.unlink()
        changed += 1
    print(f"{folder}: {changed} result file(s) compacted")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
