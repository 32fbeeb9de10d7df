#!/usr/bin/env bash
# One-shot GPU check: everything a CUDA measurement needs, in one go (aim: under 8 minutes on an
# H100/H200). Run from the repository root on a machine with an NVIDIA GPU, numba-cuda, CuPy and
# (for the comparison) PyTorch:
#
#     bash docs/gpu_check.sh [--short] [RESULTS_DIR]      # default: /tmp/gpu-results
#
# --short fits a lease of 15 minutes with the machine's start (about 8 minutes of commands): the CUDA
# tests (the compile check left to CI; CuPy arrays by the default launch path only), the bench in
# float32 for every op and in float16 for the forward with fewer rounds, and the host cost; no
# launch-path timings, PTX compile or ASV history.
#
# Prepare it here with asv_bench/gpu_wheels.sh (then name `.whl` in the run's carry): NumPy 2.5
# breaks numba-cuda 0.30.4 (np.row_stack), so the wheels in .whl/ (NumPy 2.4) are installed to
# /tmp/site first and put on PYTHONPATH; .whl/asv/ holds asv for step 5.
# Writes into RESULTS_DIR: the machine and commit (machine.txt), the GPU tests' summary
# (tests.txt), the PTX compile of the covering subset of specialisations (ptx.txt), the CUDA bench tables and JSON
# per op and dtype (bench-*.txt / .json), the launch-path timings (launch_paths.txt), the host
# cost of one nbconv call by launch path (host_cost.txt), the tile kernels' shapes timed
# (tile_sweep_*.txt / .json: docs/plane_sweep.py --tiles) and the ASV history benchmarks of the
# CUDA backend (asv/asv-*.json: file them with `python asv_bench/import_results.py DIR/asv
# --commit COMMIT`). Where $OUT is set (a lent machine brings back at most 8 files), all of it
# goes there as one gpu-results.tar.gz, with machine.txt beside it.
set -u
cd "$(dirname "$0")/.."
short=0
if [ "${1:-}" = "--short" ]; then short=1; shift; fi
results="${1:-/tmp/gpu-results}"
mkdir -p "$results"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}   # nbconv from this checkout, without installing it
export NUMBA_ENABLE_CUDASIM=0

{
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
    python3 -c "import sys, numpy, numba, numba_cuda; print('python', sys.version.split()[0], 'numpy', numpy.__version__, 'numba', numba.__version__, 'numba-cuda', numba_cuda.__version__)"
    python3 -c "import cupy; print('cupy', cupy.__version__)" 2>&1
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())" 2>&1
} > "$results/machine.txt"
cat "$results/machine.txt"

save() {  # the results so far into $OUT (a lent machine's command may be stopped at its limit)
    if [ -n "${OUT:-}" ]; then
        tar -czf "$OUT/gpu-results.tar.gz" -C "$results" . && cp "$results/machine.txt" "$OUT/"
    fi
}
step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep its output, say how it ended
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$results/$name.txt" 2>&1
    echo "$name: exit $? in $((SECONDS - t0)) s (tail of $results/$name.txt below)" | tee -a "$results/steps.txt"
    tail -3 "$results/$name.txt"
    save
}
bench() {  # bench OP DTYPE SECONDS ROUNDS
    step "bench-$1-$2" "$3" python3 -m nbconv bench --backend cuda --op "$1" --dtype "$2" --rounds "$4" \
        --json "$results/bench-$1-$2.json"
}

if [ "$short" = 1 ]; then
    step tests 150 python3 -m pytest -v --tb=short -n 14 -p no:cacheprovider -m cuda --durations=15 -rf \
        --ignore=tests/test_cuda_compile.py tests
    bench forward float32 60 5
    bench weight_grad float32 60 5
    bench input_grad float32 90 5  # (the stride-2 layers' phases compile four kernels each)
    bench forward float16 60 5
    step host_cost 35 python3 docs/host_cost.py
    echo "results in $results"
    exit 0
fi

# 1. the CUDA tests at full size, through Numba arrays, CuPy and torch CUDA tensors (CuPy arrays
#    by the raw launch path: every kernel's PTX loaded by CuPy and launched by the driver with one
#    parameter buffer); then the CuPy-array tests again through numba-cuda's dispatcher
step tests 240 python3 -m pytest -q -n 14 -p no:cacheprovider -m cuda --ignore=tests/test_cuda_compile.py tests
step tests_dispatcher 120 env NBCONV_CUDA_LAUNCH=numba python3 -m pytest -q -n 14 -p no:cacheprovider -m cuda \
    tests/test_conv2d.py tests/test_grad.py
# 2. the covering subset of the kernel specialisations compiled for sm_90 by this machine's NVVM
#    (all of them, 624, take about 5 minutes of one core: `python tests/compile_kernels.py
#    --no-spill 9.0` runs them without a GPU, so this check's minutes go to the GPU instead)
step ptx 150 python3 tests/compile_kernels.py --cover 9.0
# 3. the bench: forward, input and weight gradients, float32 and float16, against PyTorch
for dtype in float32 float16; do
    for op in forward input_grad weight_grad; do
        bench "$op" "$dtype" 90 10
    done
done
# 4. the host cost of one launch by each launch path, and of one call of each op by each
step launch_paths 60 python3 docs/launch_paths.py
step host_cost 60 python3 docs/host_cost.py
# 4b. the tile kernels' shapes (AlexNet's, dense and grouped 1x1 layers), forward and weight gradient
step tile_sweep_forward 120 python3 docs/plane_sweep.py --tiles --json "$results/tile_sweep_forward.json"
step tile_sweep_weight_grad 120 python3 docs/plane_sweep.py --tiles --op weight_grad \
    --json "$results/tile_sweep_weight_grad.json"
# 5. the ASV suite's kept-history benchmarks on the CUDA backend, in ASV's layout
step asv 240 bash asv_bench/record_here.sh "$results/asv" nvidia-h200 cuda
echo "results in $results${OUT:+ and in $OUT/gpu-results.tar.gz}"
