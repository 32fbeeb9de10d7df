"""Publish the ASV dashboard so that it renders with no network.

``asv publish`` writes an ``index.html`` that loads jQuery, flot, stupidtable, blueimp-md5 and
Bootstrap from public CDNs; offline, the page shows asv's "Can not determine continental origin of
swallow" error instead of graphs. This script runs ``asv publish`` (unless ``--no-asv``), copies
the pinned copies in ``asv_bench/vendor/`` into ``html/vendor/`` and points every CDN ``<script>``
and ``<link>`` at them. A CDN reference it does not know (a newer asv) is an error, not a silent
half-offline page.

    python asv_bench/publish.py [--no-asv] [--html-dir DIR] [extra `asv publish` arguments ...]

It publishes every result kept in ``asv_bench/results/`` (one folder per reference machine, see
its README.md): on a fresh clone it rebuilds the dashboard without running any benchmark.
``--html-dir`` writes the site somewhere else than ``asv_bench/html``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENDOR = HERE / "vendor"
HTML = HERE / "html"

# CDN file name (the last part of the URL) -> vendored file. The vendored files come from the npm
# registry tarballs named in vendor/README.md (flot's are the unminified files of the same release).
CDN_TO_VENDOR = {
    "jquery-3.3.1.min.js": "jquery.min.js",
    "jquery.flot.min.js": "jquery.flot.js",
    "jquery.flot.time.min.js": "jquery.flot.time.js",
    "jquery.flot.selection.min.js": "jquery.flot.selection.js",
    "jquery.flot.categories.min.js": "jquery.flot.categories.js",
    "jquery.flot.orderBars.js": "jquery.flot.orderBars.js",
    "stupidtable.min.js": "stupidtable.min.js",
    "md5.min.js": "md5.min.js",
    "bootstrap.min.js": "bootstrap.min.js",
    "bootstrap.min.css": "bootstrap.min.css",
}

# A <script src=...> or <link href=...> tag whose URL is remote.
_REMOTE_TAG = re.compile(r"<(script|link)\b[^>]*?(?:src|href)=\"(https?://[^\"]+)\"[^>]*>")
# Attributes that only make sense for the CDN copy: subresource integrity pins the CDN's bytes.
_CDN_ATTRS = re.compile(r"\s+(?:integrity|crossorigin|referrerpolicy)=\"[^\"]*\"")


def localise(page: str) -> tuple[str, list[str]]:
    """Return ``page`` with its CDN references pointed at ``vendor/``, and the unknown URLs."""
    unknown: list[str] = []

    def replace(match: re.Match[str]) -> str:
        url = match.group(2)
        name = url.rsplit("/", 1)[-1]
        if name not in CDN_TO_VENDOR:
            unknown.append(url)
            return match.group(0)
        tag = _CDN_ATTRS.sub("", match.group(0))
        return tag.replace(url, f"vendor/{CDN_TO_VENDOR[name]}")

    return _REMOTE_TAG.sub(replace, page), unknown


def main(argv: list[str]) -> int:
    run_asv = argv[:1] != ["--no-asv"]
    if not run_asv:
        argv = argv[1:]
    html = HTML
    if "--html-dir" in argv:
        i = argv.index("--html-dir")
        html = Path(argv[i + 1]).resolve()
        argv = argv[:i] + argv[i + 2:]
    if run_asv:
        subprocess.run([sys.executable, "-m", "asv", "publish", "--html-dir", str(html), *argv], cwd=HERE, check=True)
    index = html / "index.html"
    if not index.is_file():
        print(f"no {index}: run `asv publish` first", file=sys.stderr)
        return 1
    shutil.copytree(VENDOR, html / "vendor", dirs_exist_ok=True)
    changed = 0
    unknown: list[str] = []
    for page in sorted(html.glob("*.html")):
        text = page.read_text(encoding="utf-8")
        new, missing = localise(text)
        unknown += [f"{page.name}: {url}" for url in missing]
        if new != text:
            page.write_text(new, encoding="utf-8")
            changed += 1
    if unknown:
        print("remote dependencies with no vendored copy (update vendor/ and CDN_TO_VENDOR):",
              *unknown, sep="\n  ", file=sys.stderr)
        return 1
    print(f"dashboard: {index} ({changed} page(s) pointed at vendor/; serve it with "
          f"`python -m http.server -d {html}` or check it with check_dashboard.sh)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
