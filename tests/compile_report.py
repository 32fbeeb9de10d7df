"""A pytest plugin that reports where the test suite's time goes to Numba compiling CPU code.

    rm -rf ~/.cache/nbconv      # a cold cache, as on a fresh machine
    python -m pytest -n 2 --dist loadfile -p compile_report

Per test, the seconds of each outermost compile (a compile that calls others counts once) and
what was compiled; at the end, the totals by test file and by kernel (a generated module's
digest left out, so ``nbconv_winograd.forward`` sums all the geometries compiled). With
pytest-xdist each worker writes ``compile-report-<worker>.json`` in ``$NBCONV_COMPILE_REPORT``
(default: the current folder) and the controller sums them.

nbconv's compile helper is turned off (``NBCONV_COMPILE_PROCESS=0``): its compiles run in
another process, out of this plugin's sight. CUDA kernels compiled by ``numba.cuda`` (and the
subprocess of ``tests/test_cuda_compile.py``) are not counted.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import re
import time

from numba.core import event

_DIGEST = re.compile(r"_[0-9a-f]{12,}(?=\.)")
_state = {"test": "(outside tests)", "depth": 0, "t0": 0.0}
_compiles: dict[str, list[tuple[float, str]]] = collections.defaultdict(list)


def _name(data) -> str:
    fn = getattr((data or {}).get("dispatcher"), "py_func", None)
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', '?')}"


class _Listener(event.Listener):
    def on_start(self, ev):
        if _state["depth"] == 0:
            _state["t0"] = time.perf_counter()
        _state["depth"] += 1

    def on_end(self, ev):
        _state["depth"] -= 1
        if _state["depth"] == 0:
            _compiles[_state["test"]].append((time.perf_counter() - _state["t0"], _name(ev.data)))


def pytest_configure(config):
    """Only where the plugin is loaded (importing this module changes nothing): compiles in
    this process (nbconv reads the variable at each compile), and the listener."""
    os.environ["NBCONV_COMPILE_PROCESS"] = "0"
    event.register("numba:compile", _Listener())


def _folder() -> str:
    return os.environ.get("NBCONV_COMPILE_REPORT", os.getcwd())


def _path(worker: str) -> str:
    return os.path.join(_folder(), f"compile-report-{worker}.json")


def pytest_sessionstart(session):
    if not hasattr(session.config, "workerinput"):  # the controller (or a run without xdist)
        for old in glob.glob(_path("*")):
            os.unlink(old)


def pytest_runtest_setup(item):
    _state["test"] = item.nodeid


def pytest_sessionfinish(session):
    worker = getattr(session.config, "workerinput", {}).get("workerid", "main")
    if _compiles or worker != "main":
        with open(_path(worker), "w") as f:
            json.dump(_compiles, f)


def summary(records: dict[str, list[tuple[float, str]]], top: int = 15) -> list[str]:
    """Lines: the total, then the largest totals by test file and by compiled function."""
    by_file: collections.Counter = collections.Counter()
    by_function: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    for test, compiles in records.items():
        for seconds, name in compiles:
            by_file[test.split("::")[0]] += seconds
            function = _DIGEST.sub("", name)
            by_function[function] += seconds
            count[function] += 1
    total = sum(by_file.values())
    lines = [f"Numba CPU compiles: {total:.1f} s in {sum(count.values())} outermost compiles"]
    lines += ["by test file:"] + [f"  {s:8.1f} s  {f}" for f, s in by_file.most_common(top)]
    lines += ["by function (generated modules summed over their geometries):"]
    lines += [f"  {s:8.1f} s  {count[f]:4d} x  {f}" for f, s in by_function.most_common(top)]
    return lines


def pytest_terminal_summary(terminalreporter, config):
    if hasattr(config, "workerinput"):
        return
    records: dict[str, list] = collections.defaultdict(list)
    for path in sorted(glob.glob(_path("*"))):
        with open(path) as f:
            for test, compiles in json.load(f).items():
                records[test] += [tuple(c) for c in compiles]
    terminalreporter.section("compile report")
    for line in summary(records):
        terminalreporter.write_line(line)
