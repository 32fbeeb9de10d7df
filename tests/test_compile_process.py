"""Misses of Numba's disk cache compiled by a helper process (``nbconv._compile_process``): the
kernel then loads from the disk cache here, and nothing is compiled in this process; whatever goes
wrong falls back to Numba's own compile here, with the same result."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid

import numba
import numpy as np
import pytest

from nbconv import _compile_process, _numba_options

pytestmark = pytest.mark.skipif(not _numba_options.CACHE, reason="no disk cache: nothing goes to a helper")

SOURCE = textwrap.dedent('''
    from nbconv._numba_options import njit_parallel, njit_serial

    @njit_serial
    def affine(a, k):
        return a * k + 1.0

    @njit_parallel
    def calls_affine(a):
        out = np.empty_like(a)
        for i in numba.prange(a.size):
            out[i] = affine(a[i], 3.0)
        return out

    @njit_serial
    def untyped(a):
        return a + not_defined_anywhere
    ''')


@pytest.fixture
def module(tmp_path):
    """A new module of routed kernels (a new name and file each time: nothing in any cache)."""
    name = f"compile_process_case_{uuid.uuid4().hex}"
    path = tmp_path / f"{name}.py"
    path.write_text("import numba\nimport numpy as np\n" + SOURCE)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    yield mod
    del sys.modules[name]


@pytest.fixture
def helper(monkeypatch):
    """A helper of this test's own (the module's one is left as it was)."""
    fresh = _compile_process.Helper()
    monkeypatch.setattr(_compile_process, "helper", fresh)
    monkeypatch.setenv(_compile_process.ENV, "1")
    yield fresh
    fresh.stop()


def compiled_here(dispatcher) -> int:
    """Signatures this process compiled itself (Numba's count of disk cache misses)."""
    return sum(dispatcher._cache_misses.values())


def test_a_miss_is_compiled_by_the_helper_and_loaded(module, helper):
    a = np.arange(5.0)
    np.testing.assert_array_equal(module.affine(a, 2.0), a * 2.0 + 1.0)
    assert helper.compiled == 1 and helper.started == 1
    assert compiled_here(module.affine) == 0 and sum(module.affine._cache_hits.values()) == 1
    module.affine(np.arange(3, dtype=np.float32), np.float32(2))  # a second signature, the same helper
    assert helper.compiled == 2 and helper.started == 1 and compiled_here(module.affine) == 0


def test_functions_a_kernel_calls_are_not_compiled_here(module, helper):
    """The helper's code holds what the kernel calls: this process types and compiles none of it."""
    a = np.arange(6.0)
    np.testing.assert_array_equal(module.calls_affine(a), a * 3.0 + 1.0)
    assert compiled_here(module.calls_affine) == 0 and helper.compiled == 1
    assert module.affine.signatures == []


def test_a_kernel_that_does_not_compile_fails_here_as_without_a_helper(module, helper):
    with pytest.raises(numba.core.errors.TypingError, match="not_defined_anywhere"):
        module.untyped(np.arange(3.0))
    assert helper.compiled == 0 and compiled_here(module.untyped) == 1
    module.affine(np.arange(3.0), 1.0)  # the helper is still there for the next miss
    assert helper.compiled == 1 and helper.started == 1


def test_a_helper_that_died_is_replaced(module, helper):
    module.affine(np.arange(3.0), 1.0)
    helper.proc.kill()
    helper.proc.wait()
    np.testing.assert_array_equal(module.affine(np.arange(3, dtype=np.int64), 2), [1.0, 3.0, 5.0])
    assert helper.started == 2 and helper.compiled == 2 and compiled_here(module.affine) == 0


def test_an_idle_helper_exits(module, helper, monkeypatch):
    monkeypatch.setattr(_compile_process, "IDLE_SECONDS", 0.5)
    module.affine(np.arange(3.0), 1.0)
    proc = helper.proc
    deadline = time.monotonic() + 20
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() == 0
    module.affine(np.arange(3, dtype=np.float32), np.float32(1))
    assert helper.started == 2 and helper.compiled == 2 and compiled_here(module.affine) == 0


def test_a_helper_grown_too_large_exits_after_its_compile(module, helper, monkeypatch):
    monkeypatch.setattr(_compile_process, "MAX_HELPER_MIB", 1.0)
    module.affine(np.arange(3.0), 1.0)
    assert helper.compiled == 1 and helper.proc is None and compiled_here(module.affine) == 0
    module.affine(np.arange(3, dtype=np.float32), np.float32(1))
    assert helper.started == 2 and helper.compiled == 2


def test_turned_off_compiles_here(module, helper, monkeypatch):
    monkeypatch.setenv(_compile_process.ENV, "0")
    module.affine(np.arange(3.0), 1.0)
    assert helper.started == 0 and compiled_here(module.affine) == 1


def test_no_helper_can_start(module, helper, monkeypatch):
    monkeypatch.setattr(sys, "executable", os.path.join(os.sep, "no", "such", "python"))
    with pytest.warns(RuntimeWarning, match="no helper process could start"):
        np.testing.assert_array_equal(module.affine(np.arange(3.0), 2.0), [1.0, 3.0, 5.0])
    assert compiled_here(module.affine) == 1 and helper.broken
    module.affine(np.arange(3, dtype=np.float32), np.float32(1))  # no second try, no second warning
    assert compiled_here(module.affine) == 2


def test_a_helper_for_another_target_is_not_used(module, helper, monkeypatch):
    """Code compiled for other CPU features would load here and fault: refused at the start."""
    monkeypatch.setattr(_compile_process, "_target_key", lambda: ("numba", "x86_64", "some-other-cpu", "+avx"))
    with pytest.warns(RuntimeWarning, match="another target"):
        module.affine(np.arange(3.0), 2.0)
    assert compiled_here(module.affine) == 1 and helper.compiled == 0 and helper.proc is None


RUN = textwrap.dedent('''
    import json, sys
    import numpy as np
    import nbconv
    from nbconv import _compile_process
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 8, 9, 9), dtype=np.float32)
    outs = [nbconv.conv2d(x, rng.standard_normal((16, 1, 3, 3), dtype=np.float32), stride=2, padding=1, groups=8),
            nbconv.conv2d(x, rng.standard_normal((5, 8, 1, 1), dtype=np.float32))]
    np.savez(sys.argv[1], *outs)
    misses = sum(sum(v._cache_misses.values()) for m in list(sys.modules.values())
                 if getattr(m, "__name__", "").startswith("nbconv")
                 for v in list(vars(m).values()) if hasattr(v, "_cache_misses"))
    proc = _compile_process.helper.proc
    print(json.dumps({"misses": misses, "compiled": _compile_process.helper.compiled,
                      "pid": proc.pid if proc is not None else None}))
    ''')


def test_real_kernels_same_bits_and_no_helper_left(tmp_path):
    """A process with empty caches: every nbconv kernel compiled by the helper (none here), the
    same bits as compiled here, and the helper gone once the process has exited."""
    results = {}
    for setting in ("1", "0"):
        env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / f"numba{setting}"),
                   NBCONV_CACHE_DIR=str(tmp_path / f"generated{setting}"), **{_compile_process.ENV: setting})
        done = subprocess.run([sys.executable, "-c", RUN, str(tmp_path / f"out{setting}.npz")], env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        results[setting] = json.loads(done.stdout.strip().splitlines()[-1])
    assert results["1"]["misses"] == 0 and results["1"]["compiled"] >= 2
    assert results["0"]["misses"] > 0 and results["0"]["compiled"] == 0
    with np.load(tmp_path / "out1.npz") as one, np.load(tmp_path / "out0.npz") as zero:
        for key in one.files:
            np.testing.assert_array_equal(one[key], zero[key])
    pid = results["1"]["pid"]
    assert pid is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"helper process {pid} still running after its parent exited")


def test_code_that_does_not_load_here_stops_the_helpers(module, helper, monkeypatch):
    """The helper's code written where this process does not look (a cache folder changed under
    it): each kernel compiled here as well, and after MAX_NOT_LOADED of them no more helpers."""
    cache = module.affine._cache._cache
    monkeypatch.setattr(cache, "load_overload", lambda sig, target_context: None)
    kinds = [np.float64, np.float32, np.int64, np.int32][:_compile_process.MAX_NOT_LOADED + 1]
    with pytest.warns(RuntimeWarning, match="did not load from the disk cache"):
        for kind in kinds:
            module.affine(np.arange(3, dtype=kind), kind(2))
    assert helper.compiled == _compile_process.MAX_NOT_LOADED and helper.broken and helper.proc is None
    assert compiled_here(module.affine) == len(kinds)


def test_an_interrupted_request_leaves_no_stale_answer(module, helper, monkeypatch):
    """Ctrl-C while waiting for the helper: its answer must not be read as the next request's."""
    import pickle
    import types

    module.affine(np.arange(3.0), 1.0)
    first = helper.proc

    def interrupted(stream):
        raise KeyboardInterrupt

    monkeypatch.setattr(_compile_process, "pickle", types.SimpleNamespace(dump=pickle.dump, load=interrupted,
                                                                         UnpicklingError=pickle.UnpicklingError))
    with pytest.raises(KeyboardInterrupt):
        module.affine(np.arange(3, dtype=np.float32), np.float32(1))
    assert helper.proc is None and first.poll() is not None
    monkeypatch.setattr(_compile_process, "pickle", pickle)
    np.testing.assert_array_equal(module.affine(np.arange(3, dtype=np.int64), 2), [1.0, 3.0, 5.0])
    assert helper.started == 2 and compiled_here(module.affine) == 0
