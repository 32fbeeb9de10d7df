#!/usr/bin/env bash
# Fetch the wheels a lent GPU machine needs for docs/gpu_check.sh into .whl/ (ignored by git;
# name `.whl` in the device run's `carry`): NumPy 2.4 (the image's NumPy 2.5 breaks numba-cuda
# 0.30.4) in .whl/, and asv with its dependencies in .whl/asv/ (record_here.sh installs those to a
# folder of their own, so they shadow nothing of the image's).
#
#   asv_bench/gpu_wheels.sh [PYTHON_VERSION]       (default 3.12, the image's Python)
set -euo pipefail
cd "$(dirname "$0")/.."
py="${1:-3.12}"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
fetch() {  # DEST NAME==VERSION ...
    local dest=$1
    shift
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$dest" "$@"
}
fetch .whl "numpy>=2.4,<2.5"
# asv 0.6.6 and what it imports (pip show asv virtualenv build importlib-metadata)
fetch .whl/asv asv==0.6.6 asv_runner json5 tabulate pympler pyyaml build pyproject_hooks virtualenv distlib \
    filelock platformdirs python-discovery importlib_metadata lazy-importer zipp
du -sh .whl
