"""File an ASV result brought back from a lent machine (``record_here.sh``) into the kept history.

    python asv_bench/import_results.py DIR --commit COMMIT [--machine NAME]

DIR holds ``asv-result.json`` and ``asv-machine.json`` as ``record_here.sh`` left them. The result
was recorded against a stand-in commit (the lent machine has the files, not the history); it is
filed under COMMIT (the commit the run was made from: it must be in this repository) with that
commit's date, compacted like every kept result (``compact_results.py``), in
``asv_bench/results/NAME/`` (NAME: the machine's name in asv-machine.json unless given). Add a
line for a new machine to ``asv_bench/results/README.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from compact_results import compact, result_file_name


def commit_info(commit: str) -> tuple[str, int]:
    """(full hash, committer date in ms since the epoch, as ASV records it) of a commit here."""
    out = subprocess.run(["git", "-C", str(HERE), "log", "-1", "--format=%H %ct", commit], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"import_results: {commit!r} is not a commit of this repository: {out.stderr.strip()}")
    full, seconds = out.stdout.split()
    return full, int(seconds) * 1000


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--commit", required=True)
    parser.add_argument("--machine")
    args = parser.parse_args(argv)
    result = json.loads((args.dir / "asv-result.json").read_text(encoding="utf-8"))
    machine = json.loads((args.dir / "asv-machine.json").read_text(encoding="utf-8"))
    name = args.machine or machine["machine"]
    full, date = commit_info(args.commit)
    version = result.get("python", "")
    if "/" in version:
        raise SystemExit("import_results: the result names its interpreter by path; record_here.sh compacts it "
                         "where it ran (run compact_results.py there with the Python that recorded it)")
    result.update(commit_hash=full, date=date)
    result["params"] = dict(result["params"], machine=name)
    result = compact(result, version)
    folder = HERE / "results" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "machine.json").write_text(json.dumps(dict(machine, machine=name), indent=4) + "\n", encoding="utf-8")
    target = folder / result_file_name(result)
    target.write_text(json.dumps(result, separators=(",", ":"), allow_nan=True), encoding="utf-8")
    print(f"filed {target.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
