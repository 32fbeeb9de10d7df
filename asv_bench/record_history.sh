#!/usr/bin/env bash
# Record ASV results for a range of commits with an existing Python environment (no network, no
# per-commit virtualenvs), then publish the HTML dashboard to asv_bench/html.
#
#   asv_bench/record_history.sh [RANGE] [extra `asv run` arguments ...]
#
# RANGE defaults to every commit since the suite applies (the one that added nbconv/_shapes.py)
# up to HEAD; it is passed to `git rev-list`, so "A..B" or "--no-walk C1 C2 ..." (chosen commits). Each commit is checked out in a temporary git worktree and installed into the
# environment of $PYTHON (default: the `python` on PATH) with pip --no-deps; the benchmarks
# themselves always come from this checkout. At the end this checkout is installed back (editable).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
python="${PYTHON:-$(command -v python)}"
first="$(git -C "$repo" log --reverse --format=%H --diff-filter=A -- nbconv/_shapes.py | head -1)"
if git -C "$repo" rev-parse --verify --quiet "$first^" >/dev/null; then
    default_range="$first^..HEAD"
else
    default_range="HEAD"  # the suite applies from the root commit on
fi
range="${1:-$default_range}"
shift || true

cd "$here"
"$python" -m asv machine --yes >/dev/null
tmp="$(mktemp -d)"
cleanup() {
    git -C "$repo" worktree remove --force "$tmp/wt" 2>/dev/null || true
    rm -rf "$tmp"
    "$python" -m pip install --quiet --no-deps --no-build-isolation -e "$repo"
}
trap cleanup EXIT
# shellcheck disable=SC2086  # RANGE is git rev-list arguments: "A..B", or "--no-walk C1 C2 ..."
for commit in $(git -C "$repo" rev-list --reverse $range); do
    echo "== $(git -C "$repo" log -1 --format='%h %s' "$commit")"
    git -C "$repo" worktree add --quiet --detach "$tmp/wt" "$commit"
    "$python" -m pip install --quiet --no-deps --no-build-isolation "$tmp/wt"
    "$python" -m asv run -E "existing:$python" --set-commit-hash "$commit" "$@"
    git -C "$repo" worktree remove --force "$tmp/wt"
done
"$python" "$here/publish.py"
echo "check it renders: asv_bench/check_dashboard.sh"
