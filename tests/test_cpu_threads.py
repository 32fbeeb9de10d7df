"""Calls from several Python threads give the single-threaded results under every threading
layer Numba has here; under ``workqueue`` (which aborts on concurrent parallel regions) they take
turns."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import threading, numpy as np, nbconv, numba
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 32, 28, 28)).astype(np.float32)
    w = rng.standard_normal((32, 1, 3, 3)).astype(np.float32)
    y = nbconv.conv2d(x, w, padding=1, groups=32)
    gw = nbconv.grad.conv2d_weight(x, w.shape, y, padding=1, groups=32)
    gb = nbconv.grad.conv2d_bias(y)
    bad = []
    def work():
        for _ in range(20):
            ok = (np.array_equal(nbconv.conv2d(x, w, padding=1, groups=32), y)
                  and np.array_equal(nbconv.grad.conv2d_weight(x, w.shape, y, padding=1, groups=32), gw)
                  and np.array_equal(nbconv.grad.conv2d_bias(y), gb))
            bad.append(not ok)
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads: t.start()
    for t in threads: t.join()
    assert len(bad) == 80 and not any(bad), sum(bad)
    print(numba.threading_layer())
""")


@pytest.mark.parametrize("layer", ["workqueue", "omp", "tbb"])
def test_threads_under_each_layer(layer):
    env = dict(os.environ, NUMBA_THREADING_LAYER=layer)
    run = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600, check=False)
    if run.returncode and "No threading layer could be loaded" in run.stderr:
        pytest.skip(f"Numba's {layer} layer is not installed here")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == layer
