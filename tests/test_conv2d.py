"""conv2d against the independent per-group NumPy reference, on every backend."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nbconv
from cases import BACKENDS, CASES, SIMULATOR, Case, backend_dtype_params, random_arrays, to_backend, to_host
from reference import assert_conv_close

def run(backend, x, w, b, **kw):
    got = nbconv.conv2d(to_backend(x, backend), to_backend(w, backend), to_backend(b, backend), **kw)
    return to_host(got)


@pytest.mark.parametrize("backend, dtype", backend_dtype_params())
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_reference(backend, dtype, case):
    x, w, b = random_arrays(case, dtype)
    got = run(backend, x, w, b, **case.conv_args())
    assert_conv_close(got, x, w, b, **case.conv_args())


@pytest.mark.parametrize("backend", BACKENDS)
def test_worked_example_channel_order(backend):
    """Input channels (100, 200, 300), C_out=6, groups=3, 1x1 weights 0..5."""
    x = np.array([100.0, 200.0, 300.0]).reshape(1, 3, 1, 1)
    w = np.arange(6.0).reshape(6, 1, 1, 1)
    got = run(backend, x, w, None, groups=3)
    np.testing.assert_array_equal(got.ravel(), [0, 100, 400, 600, 1200, 1500])


@pytest.mark.parametrize("backend", BACKENDS)
def test_output_channel_belongs_to_group(backend):
    """Output o sees only the input channels of group o // (C_out/groups): perturb one group."""
    case = Case(1, 6, (5, 5), 9, (3, 3), 1, 1, 1, 3)
    x, w, b = random_arrays(case, np.float64)
    before = run(backend, x, w, b, **case.conv_args())
    x2 = x.copy()
    x2[:, 2:4] += 1.0  # input channels of group 1
    after = run(backend, x2, w, b, **case.conv_args())
    changed = np.abs(after - before).reshape(9, -1).max(axis=1) > 0
    np.testing.assert_array_equal(changed, [False] * 3 + [True] * 3 + [False] * 3)


@st.composite
def conv_problems(draw, max_hw):
    groups = draw(st.integers(1, 4))
    cin_g = draw(st.integers(1, 3))
    cout_g = draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dil = draw(st.sampled_from([1, 2, (1, 2), (2, 1)]))
    pad_kind = draw(st.sampled_from(["int", "pair", "same", "valid", "sides"]))
    stride = 1 if pad_kind == "same" else draw(st.sampled_from([1, 2, 3, (1, 2), (2, 1)]))
    padding = {
        "int": draw(st.integers(0, 2)),
        "pair": (draw(st.integers(0, 2)), draw(st.integers(0, 2))),
        "same": "same",
        "valid": "valid",
        "sides": tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(2)),  # ((t, b), (l, r))
    }[pad_kind]
    d = (dil, dil) if isinstance(dil, int) else dil
    min_h, min_w = d[0] * (kh - 1) + 1, d[1] * (kw - 1) + 1  # fits even without padding
    h = draw(st.integers(min_h, max(min_h, max_hw)))
    w = draw(st.integers(min_w, max(min_w, max_hw)))
    case = Case(
        n=draw(st.integers(1, 2)),
        c_in=groups * cin_g,
        hw=(h, w),
        c_out=groups * cout_g,
        k=(kh, kw),
        stride=stride,
        padding=padding,
        dilation=dil,
        groups=groups,
        bias=draw(st.booleans()),
    )
    return case, draw(st.sampled_from([np.float32, np.float64])), draw(st.integers(0, 2**32 - 1))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_problems(max_hw=20))
def test_cpu_property(problem):
    case, dtype, seed = problem
    x, w, b = random_arrays(case, dtype, seed)
    assert_conv_close(run("cpu", x, w, b, **case.conv_args()), x, w, b, **case.conv_args())


@pytest.mark.cuda
@settings(max_examples=12 if SIMULATOR else 200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_problems(max_hw=9 if SIMULATOR else 40))
def test_cuda_property(problem):
    case, dtype, seed = problem
    x, w, b = random_arrays(case, dtype, seed)
    assert_conv_close(run("cuda", x, w, b, **case.conv_args()), x, w, b, **case.conv_args())


@pytest.mark.cuda
@pytest.mark.skipif(SIMULATOR, reason="full-size shapes are too slow for the simulator")
@pytest.mark.parametrize("backend", ["cuda", "cupy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=lambda d: np.dtype(d).name)
def test_standard_shapes_full_size(backend, dtype):
    """Every standard benchmark shape at batch 2, on a real GPU."""
    from nbconv._shapes import STANDARD_SHAPES

    from cases import CUPY

    if backend == "cupy" and not CUPY:
        pytest.skip("needs CuPy")
    rng = np.random.default_rng(1)
    for shape in STANDARD_SHAPES:
        x = rng.standard_normal(shape.input_shape(2)).astype(dtype)
        w = rng.standard_normal(shape.weight_shape()).astype(dtype)
        b = rng.standard_normal(shape.c_out).astype(dtype)
        got = run(backend, x, w, b, **shape.conv_args())
        assert_conv_close(got, x, w, b, **shape.conv_args())


def test_standard_shapes_cpu():
    """Every standard benchmark shape at batch 1 on the CPU (the kernel paths the bench takes)."""
    from nbconv._shapes import STANDARD_SHAPES, EXTRA_SHAPES

    rng = np.random.default_rng(2)
    for shape in STANDARD_SHAPES + EXTRA_SHAPES:
        x = rng.standard_normal(shape.input_shape(1)).astype(np.float32)
        w = rng.standard_normal(shape.weight_shape()).astype(np.float32)
        b = rng.standard_normal(shape.c_out).astype(np.float32)
        assert_conv_close(run("cpu", x, w, b, **shape.conv_args()), x, w, b, **shape.conv_args())
