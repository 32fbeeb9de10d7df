"""tests/compile_report.py, the plugin that says where the suite's time goes to compiling."""

from __future__ import annotations

import os
import subprocess
import sys

_TEST = '''
import numba


def test_compiles_one_function():
    @numba.njit(cache=False)
    def twice(a):
        return helper(a) * 2

    assert twice(3) == 8


@numba.njit(cache=False)
def helper(a):
    return a + 1
'''


def test_report_counts_each_outermost_compile_once(tmp_path):
    (tmp_path / "test_tiny.py").write_text(_TEST)
    env = dict(os.environ, NBCONV_COMPILE_REPORT=str(tmp_path),
               PYTHONPATH=os.pathsep.join(filter(None, [os.path.dirname(__file__), os.environ.get("PYTHONPATH")])))
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "compile_report", "-p", "no:cacheprovider",
                          str(tmp_path / "test_tiny.py")], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "compile report" in out and "in 1 outermost compiles" in out, out  # helper compiled inside twice
    assert "test_tiny.py" in out and "test_compiles_one_function.<locals>.twice" in out, out
    assert (tmp_path / "compile-report-main.json").exists()


def test_summary_sums_generated_modules_over_their_geometries():
    import compile_report

    lines = compile_report.summary({
        "tests/test_a.py::t1": [(2.0, "nbconv_grouped_0123456789abcdef0123.forward")],
        "tests/test_a.py::t2": [(3.0, "nbconv_grouped_fedcba9876543210fedc.forward"), (1.0, "nbconv.cpu._im2col.f")],
    })
    assert lines[0] == "Numba CPU compiles: 6.0 s in 3 outermost compiles"
    assert "       6.0 s  tests/test_a.py" in lines
    assert "       5.0 s     2 x  nbconv_grouped.forward" in lines
