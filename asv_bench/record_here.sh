#!/usr/bin/env bash
# Run the kept-history benchmarks of one backend on this checkout, as it is (no git history, no
# install: nbconv is imported from this checkout), and leave the ASV result in OUTDIR as three flat
# files: asv-result.json, asv-machine.json, asv-benchmarks.json. For a machine that is lent for one
# run (the GPU check, docs/gpu_check.sh); asv_bench/import_results.py files them here under the
# real commit.
#
#   asv_bench/record_here.sh OUTDIR [MACHINE] [BACKEND]      (defaults: nvidia-h200, cuda)
#
# BENCH=REGEX picks other benchmarks than the history's (a quick check of this script:
# BENCH="FirstCall.*'cpu'" asv_bench/record_here.sh /tmp/out local-check cpu).
#
# asv comes from the Python on PATH, or from the wheels in .whl/asv/ (asv_bench/gpu_wheels.sh
# fetches them), installed to a folder of their own. ASV needs a git repository for the commit it
# records: a throwaway one with an empty commit stands in (the import replaces its hash and date).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
outdir="$(mkdir -p "$1" && cd "$1" && pwd)"
machine="${2:-nvidia-h200}"
backend="${3:-cuda}"
python="${PYTHON:-python3}"
if ! "$python" -c "import asv" 2>/dev/null; then
    ls "$repo"/.whl/asv/*.whl >/dev/null 2>&1 || { echo "no asv: pip install asv, or asv_bench/gpu_wheels.sh" >&2; exit 1; }
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/asvsite "$repo"/.whl/asv/*.whl
    export PYTHONPATH="/tmp/asvsite${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"  # nbconv from this checkout
work="$(mktemp -d)"
git init -q -b main "$work/repo"
git -C "$work/repo" -c user.name=nbconv -c user.email=nbconv@localhost commit -q --allow-empty -m "stand-in"
hash="$(git -C "$work/repo" rev-parse HEAD)"
"$python" - "$here/asv.conf.json" "$work" <<'EOF'
import json, sys
from asv.util import load_json
conf = load_json(sys.argv[1], js_comments=True)
here = sys.argv[1].rsplit("/", 1)[0]
conf.update(repo=f"{sys.argv[2]}/repo", branches=["main"], benchmark_dir=f"{here}/benchmarks",
            results_dir=f"{sys.argv[2]}/results", html_dir=f"{sys.argv[2]}/html", env_dir=f"{sys.argv[2]}/env")
json.dump(conf, open(f"{sys.argv[2]}/asv.conf.json", "w"))
EOF
bench="${BENCH:-$(sed "s/BACKEND/'$backend'/g" "$here/history_bench.txt")}"  # BENCH: another asv --bench regex
cd "$work"
"$python" -m asv machine --yes --config asv.conf.json --machine "$machine" >/dev/null
"$python" -m asv run --config asv.conf.json -E "existing:$(command -v "$python")" --machine "$machine" \
    --set-commit-hash "$hash" --bench "$bench" --show-stderr
"$python" "$here/compact_results.py" "$work/results/$machine"  # python X.Y instead of the interpreter's path
cp "$work"/results/"$machine"/"${hash:0:8}"-*.json "$outdir/asv-result.json"
cp "$work/results/$machine/machine.json" "$outdir/asv-machine.json"
cp "$work/results/benchmarks.json" "$outdir/asv-benchmarks.json"
echo "ASV result of $backend on $machine in $outdir; here: python asv_bench/import_results.py $outdir --commit <commit>"
