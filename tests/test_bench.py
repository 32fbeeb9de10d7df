"""``nbconv bench``: every op runs, checks its result before timing it, and reports it.

Timings are not asserted (speed is measured, never a test); what is tested is that the command
works end to end and that its NumPy check would catch a wrong answer.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from nbconv.__main__ import main
from nbconv._shapes import SHAPES_BY_NAME
from nbconv.bench import _ops, _run
from nbconv.bench._ops import OPS

from reference import conv2d_input_reference, conv2d_reference, conv2d_weight_reference

SMALL = "mbv2_dw_7,resnext_g32_14"  # fast at batch 1; depthwise and grouped


@pytest.mark.parametrize("op", OPS)
def test_bench_op_end_to_end(op, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--rounds", "1", "--op", op, "--shapes", SMALL, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert f"--op {op}" in table and "mbv2_dw_7" in table and "resnext_g32_14" in table
    report = json.loads(out.read_text())
    assert [r["name"] for r in report["results"]] == SMALL.split(",")
    for r in report["results"]:
        assert r["op"] == op and r["time_s"] > 0 and r["gflops"] > 0 and r["max_error"] < 1e-4


@pytest.mark.parametrize("op", OPS)
def test_bench_check_agrees_with_test_reference(op):
    """The bench's fast NumPy check computes the same thing as the tests' independent reference."""
    # hw=10, stride 2, pad 1: the transposed output is 9x9, not the input's size
    shape = SHAPES_BY_NAME["odd_dw3_33"]._replace(c_in=4, c_out=8, groups=2, stride=2, hw=10)
    host = _ops.host_arrays(shape, 2, "float64")
    call = _ops.op_call(op, shape, host, lambda a: a, None, "cpu")
    x, w, b, gy = host["x"], host["w"], host["b"], host["gy"]
    args = dict(stride=(2, 2), padding=(1, 1, 1, 1), dilation=(1, 1), groups=2)
    if op == "forward":
        want = conv2d_reference(x, w, b, **args)
    elif op == "weight_grad":
        want = conv2d_weight_reference(x, w.shape, gy, **args)
    else:
        size = x.shape if op == "input_grad" else x.shape[:2] + (9, 9)
        want = conv2d_input_reference(size, w, gy, **args)
    np.testing.assert_allclose(call.want, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(call.ours()), want, rtol=1e-10, atol=1e-10)


def test_bench_arrays_in_float16():
    """The CUDA bench's float16 arrays are made on the host, where conv2d refuses float16: the
    output gradient's shape must not come from a CPU spec of them."""
    shape = SHAPES_BY_NAME["mbv2_dw_7"]
    host = _ops.host_arrays(shape, 2, "float16")
    assert {a.dtype for a in host.values()} == {np.dtype(np.float16)}
    assert host["gy"].shape == (2, shape.c_out, 7, 7)


def test_bench_refuses_a_wrong_result(monkeypatch):
    shape = SHAPES_BY_NAME["mbv2_dw_7"]
    real = _ops.op_call

    def wrong(*a, **k):
        call = real(*a, **k)
        good = call.ours
        call.ours = lambda: good() * 1.01
        return call

    monkeypatch.setattr(_run, "op_call", wrong)
    with pytest.raises(AssertionError, match="differs from the NumPy check"):
        _run.bench_shape(shape, 1, "float32", "cpu", 1)


def test_bench_rejects_unknown_op(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--op", "backward"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("op", ["weight_grad", "transpose"])
def test_first_call_latency_of_each_op(op):
    """The first call (JIT included) of a training op in fresh interpreters: a cold on-disk cache,
    then a warm one; the warm call must not compile again (it is faster than the cold one)."""
    from nbconv.bench._timing import first_call_latency

    cold, warm = first_call_latency(SHAPES_BY_NAME["mbv2_dw_7"], 1, "float32", "cpu", op)
    assert 0 < warm < cold


class _FakeCupy:
    """The parts of CuPy that the GPU timing uses, timed with the host clock (no GPU)."""

    def __init__(self):
        import time
        import types

        self.log = []
        fake = self

        class Stream:
            ptr = 0

            def synchronize(self):
                fake.log.append("sync")

        class Event:
            def record(self, stream):
                self.t = time.perf_counter()
                fake.log.append("record")

            def synchronize(self):
                pass

        self.cuda = types.SimpleNamespace(get_current_stream=Stream, Event=Event,
                                          get_elapsed_time=lambda a, b: (b.t - a.t) * 1e3)


def test_cuda_kernel_time_queues_busy_work_then_cycles_through_the_copies():
    import time

    from nbconv.bench._timing import cuda_kernel_time

    cupy, seen, busy = _FakeCupy(), [], []
    calls = [lambda i=i: (seen.append(i), time.sleep(0.001)) for i in range(3)]
    t = cuda_kernel_time(calls, 7, host_s=0.004, cupy=cupy, launch_busy=lambda ms, ptr: busy.append(ms))
    assert seen == [0] + [0, 1, 2, 0, 1, 2, 0]  # one untimed call, then the copies in turn
    assert busy == [56]  # twice what the host needs to queue the 7 calls (4 ms each), in ms
    assert cupy.log == ["sync", "record", "record"]  # the busy kernel goes between sync and start
    assert 0.001 <= t < 0.01


def test_busy_kernel_compiles_for_sm90():
    import os
    import subprocess
    import sys

    code = ("from numba import cuda, types\nfrom nbconv.bench._timing import busy_gpu_function\n"
            "ptx, _ = cuda.compile_ptx(busy_gpu_function(), (types.int64,), cc=(9, 0))\n"
            "assert 'nanosleep' in ptx, ptx\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, NUMBA_ENABLE_CUDASIM="0"), timeout=300)
    assert res.returncode == 0, res.stderr


def test_alternating_takes_turns_going_first_and_pairs_the_ratios():
    from nbconv.bench._timing import alternating

    order, times = [], {"a": iter([1.0, 2.0, 4.0]), "b": iter([3.0, 2.0, 2.0])}

    def timer(name):
        return lambda: order.append(name) or next(times[name])

    ta, tb, ratio = alternating(timer("a"), timer("b"), 3)
    assert order == ["a", "b", "b", "a", "a", "b"]
    assert (ta, tb, ratio) == (2.0, 2.0, 1.0)  # medians of 1,2,4 / 3,2,2 / 3,1,0.5
    times["a"] = iter([5.0])
    assert alternating(timer("a"), None, 1) == (5.0, None, None)  # nothing to compare with
