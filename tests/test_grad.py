"""Gradients (grad.conv2d_input / conv2d_weight / conv2d_bias) and conv_transpose2d, on every
backend, against the independent references in reference.py; adjoint identities, finite
differences, determinism, layouts, out= and the error messages."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from cases import BACKENDS, CASES, SIMULATOR, Case, backend_dtype_params, random_arrays, to_backend, to_host
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import (
    assert_within_bound,
    conv2d_input_reference,
    conv2d_reference,
    conv2d_weight_reference,
    conv_transpose2d_reference,
)

import nbconv

# a few cases under the simulator (slow), all of them on the CPU and on a real GPU
SIM_CASES = [CASES[i] for i in (1, 3, 6, 10)]
GRAD_CASES = CASES + [
    Case(1, 4, (9, 8), 4, (3, 3), 1, 2, 1, 4),  # padding > dilation*(k-1)/2: cropped transposed output
    Case(2, 6, (7, 7), 6, (5, 5), 2, 3, 1, 6),  # padding > dilation*(k-1) - ...: negative equivalent pad
]


def _cases(backend):
    return SIM_CASES if backend != "cpu" and SIMULATOR else GRAD_CASES


def _problem(case, dtype, seed=0):
    x, w, _ = random_arrays(case, dtype, seed)
    y_shape = conv2d_reference(x[:, :, :, :], w, None, **case.conv_args()).shape
    gy = np.random.default_rng(seed + 1).standard_normal(y_shape).astype(dtype)
    return x, w, gy


def _abs(a):
    return np.abs(np.asarray(a, np.float64))


def _check_input_grad(case, backend, dtype):
    x, w, gy = _problem(case, dtype)
    got = to_host(nbconv.grad.conv2d_input(x.shape, to_backend(w, backend), to_backend(gy, backend), **case.conv_args()))
    ref = conv2d_input_reference(x.shape, w, gy, **case.conv_args())
    bound = conv2d_input_reference(x.shape, _abs(w), _abs(gy), **case.conv_args())
    assert_within_bound(got, ref, bound, case.c_out // case.groups * case.k[0] * case.k[1], dtype)


def _check_weight_grad(case, backend, dtype):
    x, w, gy = _problem(case, dtype)
    got = to_host(nbconv.grad.conv2d_weight(to_backend(x, backend), w.shape, to_backend(gy, backend), **case.conv_args()))
    ref = conv2d_weight_reference(x, w.shape, gy, **case.conv_args())
    bound = conv2d_weight_reference(_abs(x), w.shape, _abs(gy), **case.conv_args())
    assert_within_bound(got, ref, bound, gy.shape[0] * gy.shape[2] * gy.shape[3], dtype)


def _backend_cases(split_dtypes: bool = False):
    """(backend, dtype, case): float32/float64 everywhere, float16 on CUDA (accumulated in float32).
    ``split_dtypes``: under the simulator, float64 and float32 take every other case (the kernels
    are the same code for both; 9-19 s a case)."""
    out = []
    for p in backend_dtype_params():
        backend, dtype = p.values
        cases = _cases(backend)
        if dtype == np.float16 and SIMULATOR:
            cases = cases[2:3]  # the simulator is slow: one case (3x2 kernel, stride (2, 1), groups 3)
        elif split_dtypes and SIMULATOR and backend != "cpu":
            cases = cases[int(dtype == np.float32)::2]
        for case in cases:
            out.append(pytest.param(backend, dtype, case, marks=p.marks, id=f"{p.id}-{case}"))
    return out


@pytest.mark.parametrize("backend, dtype, case", _backend_cases())
def test_input_grad(backend, dtype, case):
    _check_input_grad(case, backend, dtype)


@pytest.mark.parametrize("backend, dtype, case", _backend_cases(split_dtypes=True))
def test_weight_grad(backend, dtype, case):
    _check_weight_grad(case, backend, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bias_grad(backend, dtype):
    gy = np.random.default_rng(0).standard_normal((3, 5, 4, 7)).astype(dtype)
    got = to_host(nbconv.grad.conv2d_bias(to_backend(gy, backend)))
    assert_within_bound(got, gy.astype(np.float64).sum((0, 2, 3)), _abs(gy).sum((0, 2, 3)), 84, dtype)


TRANSPOSE_CASES = [
    # (N, C_in, H, W, C_out, k, stride, padding, output_padding, groups, dilation, bias)
    (2, 4, 5, 6, 6, (3, 3), 1, 1, 0, 2, 1, True),
    (1, 4, 4, 5, 8, (3, 3), 2, 1, 1, 4, 1, False),  # depthwise, multiplier 2, stride 2
    (1, 3, 5, 4, 6, (3, 2), (2, 3), (0, 1), (1, 2), 3, (1, 1), True),
    (1, 2, 4, 4, 2, (3, 3), 1, 3, 0, 2, 2, False),  # padding > dilation*(k-1)/2
    (1, 6, 3, 3, 6, (5, 5), 2, 4, 1, 6, 1, True),  # cropping (negative equivalent padding)
    (1, 2, 5, 5, 4, (2, 2), 1, "same", 0, 1, 1, True),
    (1, 2, 4, 5, 2, (1, 1), 3, "valid", 2, 2, 1, False),
    (1, 2, 3, 3, 4, (3, 3), 1, 0, 1, 2, 2, False),  # output_padding < dilation, >= stride
    (1, 4, 4, 5, 4, (3, 3), 2, ((0, 2), (1, 0)), 1, 4, 1, True),  # asymmetric padding, stride 2
]


def _transpose_cases(backend):
    return TRANSPOSE_CASES[:3] if backend != "cpu" and SIMULATOR else TRANSPOSE_CASES


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_transpose2d(backend, dtype):
    rng = np.random.default_rng(0)
    for n, c_in, h, wd, c_out, k, s, p, op, g, d, has_b in _transpose_cases(backend):
        x = rng.standard_normal((n, c_in, h, wd)).astype(dtype)
        w = rng.standard_normal((c_in, c_out // g) + k).astype(dtype)
        b = rng.standard_normal(c_out).astype(dtype) if has_b else None
        args = dict(stride=s, padding=p, output_padding=op, groups=g, dilation=d)
        got = to_host(nbconv.conv_transpose2d(to_backend(x, backend), to_backend(w, backend), to_backend(b, backend), **args))
        ref = conv_transpose2d_reference(x, w, b, **args)
        bound = conv_transpose2d_reference(_abs(x), _abs(w), None if b is None else _abs(b), **args)
        assert_within_bound(got, ref, bound, c_in // g * k[0] * k[1] + 1, dtype)


@pytest.mark.parametrize("case", GRAD_CASES, ids=str)
def test_adjoint_identity(case):
    """<conv2d(x, w), g> == <x, conv2d_input(g, w)> == <w, conv2d_weight(x, g)> (float64)."""
    x, w, gy = _problem(case, np.float64)
    y = nbconv.conv2d(x, w, None, **case.conv_args())
    gx = nbconv.grad.conv2d_input(x.shape, w, gy, **case.conv_args())
    gw = nbconv.grad.conv2d_weight(x, w.shape, gy, **case.conv_args())
    lhs = np.vdot(y, gy)
    scale = np.vdot(np.abs(y), np.abs(gy)) + 1.0
    assert abs(lhs - np.vdot(x, gx)) <= 1e-12 * scale
    assert abs(lhs - np.vdot(w, gw)) <= 1e-12 * scale


@pytest.mark.parametrize("case", GRAD_CASES[:6], ids=str)
def test_transpose_equals_input_grad(case):
    """conv_transpose2d(g, w) with the output_padding that gives x's size == conv2d_input."""
    x, w, gy = _problem(case, np.float64)
    gx = nbconv.grad.conv2d_input(x.shape, w, gy, **case.conv_args())
    a = case.conv_args()
    s = (a["stride"],) * 2 if isinstance(a["stride"], int) else a["stride"]
    kt = [nbconv.conv_transpose2d(gy, w, None, a["stride"], a["padding"], (oh, ow), a["groups"], a["dilation"])
          for oh in range(s[0]) for ow in range(s[1])]
    match = [t for t in kt if t.shape == x.shape]
    assert len(match) == 1
    np.testing.assert_array_equal(match[0], gx)


def test_finite_differences():
    """The gradients of L = sum(conv2d(x, w, b) * g) match central differences (float64)."""
    case = Case(1, 4, (5, 6), 4, (3, 2), (2, 1), 1, (1, 2), 2)
    rng = np.random.default_rng(3)
    x, w, _ = random_arrays(case, np.float64)
    b = rng.standard_normal(case.c_out)
    g = rng.standard_normal(nbconv.conv2d(x, w, b, **case.conv_args()).shape)

    def loss(x_, w_, b_):
        return float(np.sum(nbconv.conv2d(x_, w_, b_, **case.conv_args()) * g))

    grads = {
        "x": nbconv.grad.conv2d_input(x.shape, w, g, **case.conv_args()),
        "w": nbconv.grad.conv2d_weight(x, w.shape, g, **case.conv_args()),
        "b": nbconv.grad.conv2d_bias(g),
    }
    h = 1e-6
    for name, arr in (("x", x), ("w", w), ("b", b)):
        for idx in list(np.ndindex(arr.shape))[:: max(1, arr.size // 25)]:
            args = {"x": x.copy(), "w": w.copy(), "b": b.copy()}
            args[name][idx] += h
            up = loss(args["x"], args["w"], args["b"])
            args[name][idx] -= 2 * h
            down = loss(args["x"], args["w"], args["b"])
            assert abs((up - down) / (2 * h) - grads[name][idx]) < 1e-6, (name, idx)


@pytest.mark.parametrize("backend", BACKENDS)
def test_weight_grad_deterministic(backend):
    """Bit-identical run after run (and, on the CPU, whatever the number of threads)."""
    case = CASES[1] if SIMULATOR and backend != "cpu" else Case(4, 8, (20, 20), 16, (3, 3), 1, 1, 1, 2)
    x, w, gy = _problem(case, np.float32)
    X, GY = to_backend(x, backend), to_backend(gy, backend)
    runs = 2 if SIMULATOR and backend != "cpu" else 3  # the simulator takes ~15 s a run
    weight_runs = [to_host(nbconv.grad.conv2d_weight(X, w.shape, GY, **case.conv_args())) for _ in range(runs)]
    bias_runs = [to_host(nbconv.grad.conv2d_bias(GY)) for _ in range(2)]
    if backend == "cpu" and numba.config.NUMBA_NUM_THREADS > 1:
        old = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            weight_runs.append(nbconv.grad.conv2d_weight(x, w.shape, gy, **case.conv_args()))
        finally:
            numba.set_num_threads(old)
    for r in weight_runs[1:]:
        np.testing.assert_array_equal(r, weight_runs[0])
    np.testing.assert_array_equal(bias_runs[1], bias_runs[0])


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 2), cin_g=st.integers(1, 3), cout_g=st.integers(1, 3), groups=st.integers(1, 3),
    h=st.integers(1, 9), w=st.integers(1, 9), kh=st.integers(1, 4), kw=st.integers(1, 4),
    s=st.tuples(st.integers(1, 3), st.integers(1, 3)), d=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    p=st.tuples(st.integers(0, 3), st.integers(0, 3)), dtype=st.sampled_from([np.float32, np.float64]),
)
def test_grads_hypothesis_cpu(n, cin_g, cout_g, groups, h, w, kh, kw, s, d, p, dtype):
    from hypothesis import assume

    assume((h + 2 * p[0]) >= d[0] * (kh - 1) + 1 and (w + 2 * p[1]) >= d[1] * (kw - 1) + 1)
    case = Case(n, cin_g * groups, (h, w), cout_g * groups, (kh, kw), s, p, d, groups)
    if n == 0:
        x, wt, gy = _problem(case._replace(n=1), dtype)
        x, gy = x[:0], gy[:0]
        assert nbconv.grad.conv2d_input(x.shape, wt, gy, **case.conv_args()).shape == x.shape
        gw = nbconv.grad.conv2d_weight(x, wt.shape, gy, **case.conv_args())
        assert gw.shape == wt.shape and not gw.any()
        return
    _check_input_grad(case, "cpu", dtype)
    _check_weight_grad(case, "cpu", dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_layouts_read_only_out_and_no_mutation(backend):
    case = SIM_CASES[-1] if backend != "cpu" and SIMULATOR else CASES[1]  # the simulator's cheapest
    x, w, gy = _problem(case, np.float64)
    xf = np.asfortranarray(x)
    gyf = np.repeat(gy, 2, axis=3)[..., ::2]  # a strided, non-contiguous view equal to gy
    assert not gyf.flags.c_contiguous
    for a in (xf, w, gyf):
        a.setflags(write=False)
    keep = [a.copy() for a in (xf, w, gyf)]
    gw_out = to_backend(np.empty(w.shape), backend)
    gx = to_host(nbconv.grad.conv2d_input(x.shape, to_backend(w, backend), to_backend(gyf, backend), **case.conv_args()))
    nbconv.grad.conv2d_weight(to_backend(xf, backend), w.shape, to_backend(gyf, backend), **case.conv_args(), out=gw_out)
    np.testing.assert_allclose(gx, conv2d_input_reference(x.shape, w, gy, **case.conv_args()), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(to_host(gw_out), conv2d_weight_reference(x, w.shape, gy, **case.conv_args()), rtol=1e-12, atol=1e-12)
    for a, k in zip((xf, w, gyf), keep):
        np.testing.assert_array_equal(a, k)


def test_unbatched_and_strided_out_cpu():
    case = CASES[3]
    x, w, gy = _problem(case, np.float64)
    gx = nbconv.grad.conv2d_input(x.shape[1:], w, gy[0], **case.conv_args())
    np.testing.assert_allclose(gx, conv2d_input_reference(x.shape, w, gy, **case.conv_args())[0], atol=1e-12)
    big = np.zeros((w.shape[0] * 2,) + w.shape[1:])
    nbconv.grad.conv2d_weight(x[:1][0], w.shape, gy[:1][0], **case.conv_args(), out=big[::2])
    np.testing.assert_allclose(big[::2], conv2d_weight_reference(x[:1], w.shape, gy[:1], **case.conv_args()), atol=1e-12)
    assert not big[1::2].any()
    gb = np.zeros(2 * case.c_out)
    nbconv.grad.conv2d_bias(gy, out=gb[1::2])
    np.testing.assert_allclose(gb[1::2], gy.sum((0, 2, 3)), rtol=1e-12)


ERRORS = [  # x (1, 4, 8, 8), w (4, 2, 3, 3) for groups=2, g (1, 4, 6, 6)
    (lambda x, w, g: nbconv.grad.conv2d_input((4, 8, 8), w, g, groups=2), ValueError,
     "conv2d_input: grad_output has shape (1, 4, 6, 6), expected (4, 6, 6)"),
    (lambda x, w, g: nbconv.grad.conv2d_input("abc", w, g), TypeError, "conv2d_input: input_size must be a sequence"),
    (lambda x, w, g: nbconv.grad.conv2d_input((1, 4, 6, 6, 1), w, g), ValueError,
     "conv2d_input: input_size must have 3 or 4 entries"),
    (lambda x, w, g: nbconv.grad.conv2d_input((1, 4, 8, 8), w, g[0], groups=2), ValueError,
     "conv2d_input: grad_output has shape (4, 6, 6), expected (1, 4, 6, 6)"),
    (lambda x, w, g: nbconv.grad.conv2d_input((1, 4, 8, 8), w, g.astype(np.float32), groups=2), TypeError,
     "conv2d_input: grad_output dtype (float32) and weight dtype (float64) must be the same"),
    (lambda x, w, g: nbconv.grad.conv2d_input((1, 5, 8, 8), w, g, groups=2), ValueError,
     "conv2d_input: in_channels (5) is not divisible by groups (2)"),
    (lambda x, w, g: nbconv.grad.conv2d_input((1, 4, 8, 8), w, [g], groups=2), TypeError,
     "conv2d_input: grad_output must be a numpy.ndarray"),
    (lambda x, w, g: nbconv.grad.conv2d_weight(x, (4, 4, 3), g), ValueError, "conv2d_weight: weight_size must have 4 entries"),
    (lambda x, w, g: nbconv.grad.conv2d_weight(x, (4, 2, 3.0, 3), g, groups=2), TypeError,
     "conv2d_weight: weight_size must be an int"),
    (lambda x, w, g: nbconv.grad.conv2d_weight(x, (4, 4, 3, 3), g, groups=2), ValueError,
     "conv2d_weight: weight_size.shape[1] * groups (4 * 2 = 8) must equal in_channels (4)"),
    (lambda x, w, g: nbconv.grad.conv2d_weight(x, (4, 2, 3, 3), g, stride=2, padding=1, groups=2), ValueError,
     "conv2d_weight: grad_output has shape (1, 4, 6, 6), expected (1, 4, 4, 4)"),
    (lambda x, w, g: nbconv.grad.conv2d_weight(x, (4, 2, 3, 3), None, groups=2), TypeError,
     "conv2d_weight: grad_output must be a numpy.ndarray"),
    (lambda x, w, g: nbconv.grad.conv2d_weight(x.astype(np.float16), (4, 2, 3, 3), g.astype(np.float16), groups=2),
     TypeError, "conv2d_weight: input dtype float16 is supported on the CUDA backend only"),
    (lambda x, w, g: nbconv.grad.conv2d_bias(g[0, 0, 0]), ValueError, "conv2d_bias: grad_output must be 3-D"),
    (lambda x, w, g: nbconv.grad.conv2d_bias(g, out=np.empty(3)), ValueError,
     "conv2d_bias: out has shape (3,), expected (4,)"),
    (lambda x, w, g: nbconv.conv_transpose2d(g, w[:3]), ValueError,
     "conv_transpose2d: weight.shape[0] (3) must equal in_channels (4)"),
    (lambda x, w, g: nbconv.conv_transpose2d(g, w, stride=2, output_padding=2), ValueError,
     "conv_transpose2d: output_padding must be >= 0 and smaller than stride or dilation"),
    (lambda x, w, g: nbconv.conv_transpose2d(g, w, padding=9), ValueError, "conv_transpose2d: the output size"),
    (lambda x, w, g: nbconv.conv_transpose2d(g, w, np.zeros(3)), ValueError,
     "conv_transpose2d: bias must have shape (out_channels,) = (2,)"),
    (lambda x, w, g: nbconv.conv_transpose2d(g, w, groups=3), ValueError,
     "conv_transpose2d: in_channels (4) is not divisible by groups (3)"),
    (lambda x, w, g: nbconv.conv_transpose2d(g, w, stride=2, padding="same"), ValueError,
     "conv_transpose2d: padding='same' is not supported for strided convolutions"),
    (lambda x, w, g: nbconv.conv_transpose2d(g, w, out=np.empty((1, 4, 6, 6))), ValueError,
     "conv_transpose2d: out has shape (1, 4, 6, 6), expected (1, 2, 8, 8)"),
    (lambda x, w, g: nbconv.conv_transpose2d(g, w, out=g), ValueError, "conv_transpose2d: out has shape"),
]


@pytest.mark.parametrize("call, exc, message", ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_errors(call, exc, message):
    x = np.zeros((1, 4, 8, 8))
    w = np.zeros((4, 2, 3, 3))
    g = np.zeros((1, 4, 6, 6))
    with pytest.raises(exc) as info:
        call(x, w, g)
    assert message in str(info.value), str(info.value)
