#!/usr/bin/env bash
# Record the kept ASV history (asv_bench/results/MACHINE/) for a range of commits with an existing
# Python environment (no network, no per-commit virtualenvs), then publish the dashboard.
#
#   MACHINE=amd-epyc-zen3-2c PYTHON=/path/to/venv/bin/python asv_bench/record_history.sh [RANGE] [asv run args ...]
#
# MACHINE  the results folder, one per reference machine (asv_bench/results/README.md says what
#          each is; add a line there for a new one). Required.
# PYTHON   an environment with nbconv's dependencies, asv and PyTorch (for the speedup figures),
#          used only for this: each commit is installed into it in turn. Default: `python`.
# RANGE    `git rev-list` arguments. Default: the last 10 commits of HEAD that touch nbconv/
#          ("-n 10 HEAD -- nbconv/"); "A..B" or "--no-walk C1 C2 ..." pick others.
# BENCH    the benchmarks kept in the history (an `asv run --bench` regex). Default: the CPU's
#          of history_bench.txt. BENCH=. records every benchmark.
#
# Each commit is checked out in a temporary git worktree and installed with pip --no-deps; the
# benchmarks themselves always come from this checkout. Benchmarks already recorded for a commit
# are skipped (--skip-existing), so an interrupted run can be resumed. At the end this checkout is
# installed back (editable) into $PYTHON, the results are compacted (asv_bench/compact_results.py)
# and the dashboard is published (asv_bench/publish.py).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
python="${PYTHON:-$(command -v python)}"
machine="${MACHINE:?set MACHINE to the results folder of this machine, e.g. amd-epyc-zen3-2c}"
# What the history keeps (history_bench.txt, for the CPU backend here; record_here.sh uses it for
# the GPU): float32 forward time and speedup over PyTorch on every standard shape, the groups
# sweep and the cold first call. The training ops and float64 are in the suite for a commit's own
# run (`asv run`), not in the kept history.
bench="${BENCH:-$(sed "s/BACKEND/'cpu'/g" "$here/history_bench.txt")}"
range="${1:--n 10 HEAD -- nbconv/}"
shift || true

cd "$here"
cpu="$("$python" -c "import platform, llvmlite.binding as ll; print(platform.processor() or platform.machine(), ll.get_host_cpu_name())")"
"$python" -m asv machine --yes --machine "$machine" --cpu "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') ($cpu)" >/dev/null
tmp="$(mktemp -d)"
cleanup() {
    git -C "$repo" worktree remove --force "$tmp/wt" 2>/dev/null || true
    rm -rf "$tmp"
    "$python" -m pip install --quiet --no-deps --no-build-isolation -e "$repo"
}
trap cleanup EXIT
# shellcheck disable=SC2086  # RANGE is git rev-list arguments
for commit in $(git -C "$repo" rev-list --reverse $range); do
    echo "== $(date -u +%H:%M:%S) $(git -C "$repo" log -1 --format='%h %s' "$commit" | cut -c1-100)"
    git -C "$repo" worktree add --quiet --detach "$tmp/wt" "$commit"
    "$python" -m pip install --quiet --no-deps --no-build-isolation "$tmp/wt"
    "$python" -m asv run -E "existing:$python" --machine "$machine" --set-commit-hash "$commit" \
        --skip-existing --bench "$bench" "$@"
    git -C "$repo" worktree remove --force "$tmp/wt"
done
"$python" "$here/compact_results.py" "$here/results/$machine"
"$python" "$here/publish.py"
echo "check it renders and refresh the README's picture: asv_bench/check_dashboard.sh"
