"""nbconv.dask: random shapes and chunkings (uneven, 1-pixel, smaller than the halo, cutting groups)
give the single-array results, on the synchronous, threaded and distributed schedulers; the
reductions are the same bits run after run; errors come when the graph is built."""

from __future__ import annotations

import subprocess
import sys
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nbconv

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
import nbconv.dask


def _partition(draw, n: int) -> tuple[int, ...]:
    """A random chunking of an axis of length n (1-element chunks likely)."""
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=min(4, n - 1)))) if n > 1 else []
    bounds = [0, *cuts, n]
    return tuple(b - a for a, b in pairwise(bounds))


@st.composite
def problems(draw):
    groups, cin_g, cout_g = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dil = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    kind = draw(st.sampled_from(["int", "sides", "same", "valid"]))
    stride = (1, 1) if kind == "same" else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = {"int": draw(st.integers(0, 3)), "same": "same", "valid": "valid",
               "sides": ((draw(st.integers(0, 3)), draw(st.integers(0, 3))),
                         (draw(st.integers(0, 3)), draw(st.integers(0, 3))))}[kind]
    h = draw(st.integers(dil[0] * (kh - 1) + 1, 12))
    w = draw(st.integers(dil[1] * (kw - 1) + 1, 12))
    n = draw(st.integers(1, 3))
    shape = (n, groups * cin_g, h, w)
    chunks = tuple(_partition(draw, size) for size in shape)
    args = dict(stride=stride, padding=padding, dilation=dil, groups=groups)
    return shape, (groups * cout_g, cin_g, kh, kw), chunks, args, draw(st.booleans()), draw(st.integers(0, 2**31))


def _close(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11 * (np.abs(want).max() + 1))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(problems())
def test_property_equals_single_array(problem):
    shape, w_shape, chunks, args, has_bias, seed = problem
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0]) if has_bias else None
    X = da.from_array(x, chunks=chunks)
    with dask.config.set(scheduler="synchronous"):
        y = nbconv.dask.conv2d(X, w, b, **args)
        want = nbconv.conv2d(x, w, b, **args)
        assert y.shape == want.shape
        _close(y.compute(), want)
        gy = rng.standard_normal(want.shape)
        GY = da.from_array(gy, chunks=(chunks[0], -1, max(1, want.shape[2] // 2), max(1, want.shape[3] // 3)))
        gx = nbconv.dask.grad.conv2d_input(shape, w, GY, **args, chunks=chunks[2:])
        assert gx.chunks[2:] == chunks[2:]
        _close(gx.compute(), nbconv.grad.conv2d_input(shape, w, gy, **args))
        _close(nbconv.dask.grad.conv2d_weight(X, w_shape, GY, **args).compute(),
               nbconv.grad.conv2d_weight(x, w_shape, gy, **args))
        _close(nbconv.dask.grad.conv2d_bias(GY).compute(), nbconv.grad.conv2d_bias(gy))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_property_conv_transpose2d(data):
    groups, cin_g, cout_g = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
    k, d, s = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))
    p = data.draw(st.integers(0, d * (k - 1)))
    op = data.draw(st.integers(0, max(s, d) - 1))
    h, w_ = data.draw(st.integers(1, 7)), data.draw(st.integers(1, 7))
    shape = (data.draw(st.integers(1, 2)), groups * cin_g, h, w_)
    if (h - 1) * s - 2 * p + d * (k - 1) + op + 1 < 1 or (w_ - 1) * s - 2 * p + d * (k - 1) + op + 1 < 1:
        return
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    x, w, b = rng.standard_normal(shape), rng.standard_normal((groups * cin_g, cout_g, k, k)), rng.standard_normal(
        groups * cout_g)
    X = da.from_array(x, chunks=tuple(_partition(data.draw, n) for n in shape))
    args = dict(stride=s, padding=p, output_padding=op, groups=groups, dilation=d)
    with dask.config.set(scheduler="synchronous"):
        _close(nbconv.dask.conv_transpose2d(X, w, b, **args).compute(), nbconv.conv_transpose2d(x, w, b, **args))


def _problem():
    rng = np.random.default_rng(7)
    x, w, b = rng.standard_normal((4, 8, 20, 18)), rng.standard_normal((16, 2, 3, 3)), rng.standard_normal(16)
    X = da.from_array(x, chunks=(2, 4, 7, 9))
    gy = rng.standard_normal((4, 16, 10, 9))
    return x, w, b, X, gy, da.from_array(gy, chunks=(2, 8, 5, 3)), dict(stride=2, padding=1, groups=4)


def _all_ops(X, w, b, GY, args):
    return [nbconv.dask.conv2d(X, w, b, **args), nbconv.dask.grad.conv2d_input(X.shape, w, GY, **args),
            nbconv.dask.grad.conv2d_weight(X, w.shape, GY, **args), nbconv.dask.grad.conv2d_bias(GY)]


def test_schedulers_give_the_same_bits():
    """Synchronous, threaded and distributed (a local cluster of 2 workers) compute the same bits,
    and the reductions (fixed trees) give the same bits run after run."""
    distributed = pytest.importorskip("distributed")
    x, w, b, X, _gy, GY, args = _problem()
    ops = _all_ops(X, w, b, GY, args)
    sync = dask.compute(*ops, scheduler="synchronous")
    assert all(np.array_equal(a, c) for a, c in zip(sync, dask.compute(*ops, scheduler="synchronous")))
    threaded = dask.compute(*ops, scheduler="threads", num_workers=2)
    assert all(np.array_equal(a, c) for a, c in zip(sync, threaded))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        remote = client.compute(ops, sync=True)
    assert all(np.array_equal(a, c) for a, c in zip(sync, remote))
    _close(sync[0], nbconv.conv2d(x, w, b, **args))


def test_weight_and_bias_as_dask_arrays_and_channel_split():
    """Dask weights (several chunks) go to every task as one; channel chunks of whole groups run
    independently (AlexNet's split), chunks that cut a group are merged to whole groups."""
    x, w, b, X, _gy, _GY, args = _problem()
    with dask.config.set(scheduler="synchronous"):
        y = nbconv.dask.conv2d(X, da.from_array(w, chunks=5), da.from_array(b, chunks=3), **args)
        _close(y.compute(), nbconv.conv2d(x, w, b, **args))
        assert y.chunks[1] == (8, 8)  # input channel chunks (4, 4): two groups each
        cut = nbconv.dask.conv2d(X.rechunk({1: (3, 5)}), w, b, **args)
        assert cut.chunks[1] == (4, 12)  # boundary 3 moved to 2 (groups of 2 input channels)
        _close(cut.compute(), nbconv.conv2d(x, w, b, **args))


ERRORS = [
    (lambda X, w: nbconv.dask.conv2d(X, w[:, :1], groups=4), ValueError,
     r"conv2d: weight.shape\[1\] \* groups \(1 \* 4 = 4\) must equal in_channels \(8\)"),
    (lambda X, w: nbconv.dask.conv2d(X, w, groups=3), ValueError, r"conv2d: in_channels \(8\) is not divisible by groups"),
    (lambda X, w: nbconv.dask.conv2d(X.compute(), w, groups=4), TypeError,
     r"conv2d: input must be a dask.array.Array \(use nbconv.conv2d for other arrays\), got ndarray"),
    (lambda X, w: nbconv.dask.conv2d(X[0], w, groups=4), ValueError, r"conv2d: input must be 4-D"),
    (lambda X, w: nbconv.dask.conv2d(X, w.astype(np.float32), groups=4), TypeError, r"conv2d: "),
    (lambda X, w: nbconv.dask.conv2d(X[X[:, 0, 0, 0] > 0], w, groups=4), ValueError,
     r"conv2d: input has unknown chunk sizes; call input.compute_chunk_sizes\(\) first"),
    (lambda X, w: nbconv.dask.grad.conv2d_weight(X, w.shape, da.ones((4, 16, 3, 3), chunks=2), stride=2, padding=1,
                                                 groups=4), ValueError, r"conv2d_weight: grad_output has shape"),
]


@pytest.mark.parametrize("call, error, message", ERRORS, ids=[m[:40] for _, _, m in ERRORS])
def test_errors_when_the_graph_is_built(call, error, message):
    _, w, _, X, _, _, _ = _problem()
    with pytest.raises(error, match=message):
        call(X, w)


def test_import_nbconv_does_not_import_dask():
    code = "import sys, nbconv; assert 'dask' not in sys.modules, 'dask imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bench_dask_runs_and_computes_the_right_sum():
    """``nbconv bench --dask`` on a tiny batch (one worker process): its figures are there, and the
    sum it reduces equals the same conv computed in this process on the same random data."""
    pytest.importorskip("distributed")
    from nbconv.bench._dask import format_dask_table, run_dask_bench

    (r,) = run_dask_bench(workers=(1,), batch=4, chunk=2, memory_limit="1GiB")
    assert r["seconds"] > 0 and len(r["peak_rss_mib"]) == 1 and r["peak_rss_mib"][0] > 0
    x = da.random.default_rng(1).random((4, 144, 56, 56), chunks=(2, -1, -1, -1), dtype=np.float32).compute()
    w = np.random.default_rng(0).standard_normal((144, 1, 3, 3)).astype(np.float32)
    want = float(nbconv.conv2d(x, w, padding=1, groups=144).astype(np.float64).sum())
    assert abs(r["sum"] - want) <= 1e-4 * abs(want) + 1.0
    assert "workers" in format_dask_table([r])


def test_bench_dask_leaves_this_process_environment_alone():
    """The workers get one thread each through their own environment; this process's
    NUMBA_NUM_THREADS must not change (Numba raises on the next config reload if it does)."""
    pytest.importorskip("distributed")
    import os

    from nbconv.bench._dask import run_dask_bench

    before = {k: os.environ.get(k) for k in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS")}
    run_dask_bench(workers=(1,), batch=2, chunk=2, memory_limit="1GiB")
    assert {k: os.environ.get(k) for k in before} == before
