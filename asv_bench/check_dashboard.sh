#!/usr/bin/env bash
# Open the published ASV dashboard in headless Chromium, fail unless its pages render, and save
# screenshots of the summary grid and of two graphs to look at.
#
#   asv_bench/check_dashboard.sh [--readme] [OUTDIR]    (needs `chromium`: apt-get install chromium)
#
# --readme also copies the speedup graph's screenshot to docs/asv-dashboard.png, the README's
# picture of the dashboard (regenerate it with this after recording new results).
#
# A page fails when it ends on asv's "continental origin of swallow" error (a JavaScript
# dependency did not load: publish with asv_bench/publish.py, which vendors them) or when it
# holds no flot canvas (no graph was drawn).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
readme=0
if [ "${1:-}" = "--readme" ]; then
    readme=1
    shift
fi
out="${1:-$here/screenshots}"
mkdir -p "$out"
html="${HTML_DIR:-$here/html}"  # where publish.py wrote the site (its --html-dir)
[ -f "$html/index.html" ] || { echo "no dashboard: run asv_bench/publish.py first" >&2; exit 1; }
port="${PORT:-8765}"
"${PYTHON:-python}" -m http.server "$port" --bind 127.0.0.1 --directory "$html" >/dev/null 2>&1 &
server=$!
trap 'kill $server' EXIT
sleep 1
browse() {  # chromium action, URL fragment
    chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1400,1000 \
        --virtual-time-budget=15000 "$1" "http://127.0.0.1:$port/$2" 2>/dev/null
}
failed=0
check() {  # URL fragment, screenshot file, what must be on the page (a grep -E pattern)
    local dom
    dom="$(browse --dump-dom "$1")"
    if grep -q "continental origin of swallow" <<<"$dom"; then
        echo "FAIL $1: asv's dependency-load error page (a JavaScript dependency did not load)"
        failed=1
    elif ! grep -Eq "$3" <<<"$dom"; then
        echo "FAIL $1: no match for /$3/ in the rendered page"
        failed=1
    else
        echo "ok   $1"
    fi
    browse --screenshot="$out/$2" "$1" >/dev/null
    echo "     screenshot: $out/$2"
}
# The summary grid draws one small flot graph (a <canvas>) per benchmark.
check "index.html" summary.png '<canvas'
check "index.html#bench_conv.Forward.time_conv2d?backend=cpu&dtype=float32" forward_time.png \
    'class="flot-(base|overlay)"|<canvas'
check "index.html#bench_conv.GroupsSweep.time_forward?backend=cpu" groups_time.png \
    'class="flot-(base|overlay)"|<canvas'
check "index.html#bench_conv.Forward.track_speedup_vs_torch?backend=cpu&dtype=float32" forward_speedup.png \
    'class="flot-(base|overlay)"|<canvas'
if [ "$readme" = 1 ] && [ "$failed" = 0 ]; then
    cp "$out/forward_speedup.png" "$here/../docs/asv-dashboard.png"
    echo "     README picture: docs/asv-dashboard.png"
fi
exit "$failed"
