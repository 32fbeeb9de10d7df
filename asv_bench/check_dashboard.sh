#!/usr/bin/env bash
# Open the published ASV dashboard in headless Chromium and save screenshots of its summary page
# and of one graph, to check that the graphs render (look at the PNGs).
#
#   asv_bench/check_dashboard.sh [OUTDIR]      (needs `chromium`: apt-get install chromium)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/screenshots}"
mkdir -p "$out"
[ -f "$here/html/index.html" ] || { echo "no dashboard: run asv publish first" >&2; exit 1; }
port=8765
"${PYTHON:-python}" -m http.server "$port" --bind 127.0.0.1 --directory "$here/html" >/dev/null 2>&1 &
server=$!
trap 'kill $server' EXIT
sleep 1
shot() {  # URL-fragment file
    chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1400,1000 \
        --virtual-time-budget=15000 --screenshot="$out/$2" "http://127.0.0.1:$port/$1" 2>/dev/null
    echo "wrote $out/$2"
}
shot "index.html" summary.png
shot "index.html#bench_conv.Forward.time_conv2d?backend=cpu&dtype=float32" forward_time.png
shot "index.html#bench_conv.GroupsSweep.track_gflops?backend=cpu" groups_gflops.png
