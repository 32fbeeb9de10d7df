"""conv1d, conv_transpose1d and grad.conv1d_* against a direct 1-D reference (NumPy, float64,
per group), against PyTorch where it is installed, on every backend; argument forms, views,
out=, array kinds and the error messages."""

from __future__ import annotations

import numpy as np
import pytest
from cases import BACKENDS, SIMULATOR, HostDLPack, to_backend, to_host
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import assert_within_bound

import nbconv


def _sides(padding, k, dilation):
    if padding == "valid":
        return 0, 0
    if padding == "same":
        total = dilation * (k - 1)
        return total // 2, total - total // 2
    if isinstance(padding, int):
        return padding, padding
    if isinstance(padding[0], int):
        return padding[0], padding[0]
    return tuple(padding[0])


def conv1d_reference(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """Direct 1-D grouped correlation in float64: output o reads input channels of group o // (C_out/g)."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    unbatched = x.ndim == 2
    x = x[None] if unbatched else x
    left, right = _sides(padding, w.shape[2], dilation)
    xp = np.pad(x, ((0, 0), (0, 0), (left, right)))
    c_out, cin_g, k = w.shape
    n_out = (xp.shape[2] - dilation * (k - 1) - 1) // stride + 1
    out = np.zeros((x.shape[0], c_out, n_out))
    for o in range(c_out):
        g = o // (c_out // groups)
        for j in range(k):
            taps = xp[:, g * cin_g:(g + 1) * cin_g, j * dilation: j * dilation + stride * (n_out - 1) + 1: stride]
            out[:, o] += np.einsum("ncx,c->nx", taps, w[o, :, j])
    if b is not None:
        out += np.asarray(b, np.float64)[None, :, None]
    return out[0] if unbatched else out


def conv1d_input_reference(size, w, gy, stride=1, padding=0, dilation=1, groups=1):
    """Scatter every grad_output element back along its taps, then crop the padding."""
    w, gy = np.asarray(w, np.float64), np.asarray(gy, np.float64)
    unbatched = len(size) == 2
    size, gy = ((1,) + tuple(size), gy[None]) if unbatched else (tuple(size), gy)
    c_out, cin_g, k = w.shape
    left, right = _sides(padding, k, dilation)
    gxp = np.zeros(size[:2] + (size[2] + left + right,))
    for o in range(c_out):
        g = o // (c_out // groups)
        for j in range(k):
            for x in range(gy.shape[2]):
                gxp[:, g * cin_g:(g + 1) * cin_g, x * stride + j * dilation] += gy[:, o, x, None] * w[o, :, j]
    gx = gxp[:, :, left:left + size[2]]
    return gx[0] if unbatched else gx


def conv1d_weight_reference(x, w_size, gy, stride=1, padding=0, dilation=1, groups=1):
    x, gy = np.asarray(x, np.float64), np.asarray(gy, np.float64)
    if x.ndim == 2:
        x, gy = x[None], gy[None]
    c_out, cin_g, k = w_size
    left, right = _sides(padding, k, dilation)
    xp = np.pad(x, ((0, 0), (0, 0), (left, right)))
    gw = np.zeros(w_size)
    for o in range(c_out):
        g = o // (c_out // groups)
        for j in range(k):
            for x_ in range(gy.shape[2]):
                gw[o, :, j] += (gy[:, o, x_, None] * xp[:, g * cin_g:(g + 1) * cin_g, x_ * stride + j * dilation]).sum(0)
    return gw


def conv_transpose1d_reference(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Scatter each input element times its group's weight taps, then crop ``padding``."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    unbatched = x.ndim == 2
    x = x[None] if unbatched else x
    c_in, cout_g, k = w.shape
    cin_g = c_in // groups
    left, right = _sides(padding, k, dilation)
    full = np.zeros((x.shape[0], cout_g * groups, (x.shape[2] - 1) * stride + dilation * (k - 1) + 1 + output_padding))
    for c in range(c_in):
        g = c // cin_g
        for j in range(k):
            for i in range(x.shape[2]):
                full[:, g * cout_g:(g + 1) * cout_g, i * stride + j * dilation] += x[:, c, i, None] * w[c, :, j]
    out = full[:, :, left:full.shape[2] - right]
    if b is not None:
        out = out + np.asarray(b, np.float64)[None, :, None]
    return out[0] if unbatched else out


def _abs(a):
    return None if a is None else np.abs(np.asarray(a, np.float64))


# (N, C_in, L, C_out, k, stride, padding, dilation, groups, bias)
CASES = [
    (2, 4, 11, 6, 3, 1, 1, 1, 2, True),
    (1, 4, 9, 8, 3, 2, 1, 1, 4, False),  # depthwise, multiplier 2, stride 2
    (2, 3, 10, 6, 4, 1, "same", 2, 3, True),  # even kernel, dilated 'same'
    (1, 2, 7, 4, 5, 1, "valid", 1, 1, True),
    (1, 6, 13, 6, 3, 3, ((2, 0),), 2, 6, False),  # one end padded only
    (2, 4, 8, 4, 1, 2, (0,), 1, 2, True),  # 1x1, PyTorch's 1-tuple forms
    (0, 4, 8, 4, 3, 1, 1, 1, 4, True),  # empty batch
    (None, 4, 9, 4, 3, 1, 1, 1, 2, True),  # unbatched (C, L)
]


def _arrays(case, dtype, seed=0):
    n, c_in, length, c_out, k, s, p, d, g, has_b = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((c_in, length) if n is None else (n, c_in, length)).astype(dtype)
    w = rng.standard_normal((c_out, c_in // g, k)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype) if has_b else None
    return x, w, b, dict(stride=s, padding=p, dilation=d, groups=g)


def _cases(backend):
    return CASES[:3] + CASES[-1:] if backend != "cpu" and SIMULATOR else CASES


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv1d_and_gradients(backend, dtype):
    for case in _cases(backend):
        x, w, b, args = _arrays(case, dtype)
        X, W, B = (to_backend(a, backend) for a in (x, w, b))
        y = to_host(nbconv.conv1d(X, W, B, **args))
        k_terms = w.shape[1] * w.shape[2] + 1
        assert_within_bound(y, conv1d_reference(x, w, b, **args), conv1d_reference(_abs(x), _abs(w), _abs(b), **args),
                            k_terms, dtype)
        gy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
        GY = to_backend(gy, backend)
        gx = to_host(nbconv.grad.conv1d_input(x.shape, W, GY, **args))
        assert_within_bound(gx, conv1d_input_reference(x.shape, w, gy, **args),
                            conv1d_input_reference(x.shape, _abs(w), _abs(gy), **args), k_terms * 4, dtype)
        gw = to_host(nbconv.grad.conv1d_weight(X, w.shape, GY, **args))
        assert_within_bound(gw, conv1d_weight_reference(x, w.shape, gy, **args),
                            conv1d_weight_reference(_abs(x), w.shape, _abs(gy), **args), gy.size + 1, dtype)
        gb = to_host(nbconv.grad.conv1d_bias(GY))
        np.testing.assert_allclose(gb, gy.astype(np.float64).sum(axis=(0, -1) if gy.ndim == 3 else -1),
                                   rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-4 if dtype == np.float32 else 1e-10)


TRANSPOSE_CASES = [
    # (N, C_in, L, C_out, k, stride, padding, output_padding, groups, dilation, bias)
    (2, 4, 6, 6, 3, 1, 1, 0, 2, 1, True),
    (1, 4, 5, 8, 3, 2, 1, 1, 4, 1, False),  # depthwise x2, stride 2, output_padding
    (1, 2, 4, 2, 3, 1, ((0, 3),), 0, 2, 2, True),  # asymmetric crop, dilated
    (None, 3, 5, 3, 2, 3, 0, 2, 3, 1, True),  # unbatched, output_padding 2 < stride 3
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_transpose1d(backend, dtype):
    rng = np.random.default_rng(0)
    for n, c_in, length, c_out, k, s, p, op, g, d, has_b in TRANSPOSE_CASES:
        x = rng.standard_normal((c_in, length) if n is None else (n, c_in, length)).astype(dtype)
        w = rng.standard_normal((c_in, c_out // g, k)).astype(dtype)
        b = rng.standard_normal(c_out).astype(dtype) if has_b else None
        args = dict(stride=s, padding=p, output_padding=op, groups=g, dilation=d)
        got = to_host(nbconv.conv_transpose1d(*(to_backend(a, backend) for a in (x, w, b)), **args))
        assert_within_bound(got, conv_transpose1d_reference(x, w, b, **args),
                            conv_transpose1d_reference(_abs(x), _abs(w), _abs(b), **args), c_in * k + 1, dtype)


@st.composite
def _problems(draw):
    groups, cin_g, cout_g = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    k, d = draw(st.integers(1, 5)), draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["int", "tuple", "sides", "same", "valid"]))
    s = 1 if kind == "same" else draw(st.integers(1, 3))
    p = {"int": draw(st.integers(0, 3)), "tuple": (draw(st.integers(0, 3)),),
         "sides": ((draw(st.integers(0, 3)), draw(st.integers(0, 3))),), "same": "same", "valid": "valid"}[kind]
    length = draw(st.integers(d * (k - 1) + 1, 24))
    n = draw(st.sampled_from([None, 0, 1, 2]))
    case = (n, groups * cin_g, length, groups * cout_g, k, s, p, d, groups, draw(st.booleans()))
    return case, draw(st.sampled_from([np.float32, np.float64])), draw(st.integers(0, 2**32 - 1))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_problems())
def test_conv1d_property(problem):
    case, dtype, seed = problem
    x, w, b, args = _arrays(case, dtype, seed)
    got = nbconv.conv1d(x, w, b, **args)
    assert_within_bound(got, conv1d_reference(x, w, b, **args), conv1d_reference(_abs(x), _abs(w), _abs(b), **args),
                        w.shape[1] * w.shape[2] + 1, dtype)


def test_views_out_and_no_mutation():
    rng = np.random.default_rng(2)
    base = rng.standard_normal((2, 6, 20))
    x = base[:, ::2, ::2]  # non-contiguous in both axes
    x.flags.writeable = False
    w = rng.standard_normal((6, 1, 3))
    before = x.copy()
    want = conv1d_reference(x, w, None, padding=1, groups=3)
    np.testing.assert_allclose(nbconv.conv1d(x, w, padding=1, groups=3), want, rtol=1e-12, atol=1e-12)
    out = np.full((2, 6, 10), np.nan)
    assert nbconv.conv1d(x, w, padding=1, groups=3, out=out) is out
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
    strided_out = np.full((2, 6, 20), np.nan)[:, :, ::2]
    nbconv.conv1d(x, w, padding=1, groups=3, out=strided_out)
    np.testing.assert_allclose(strided_out, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(x, before)


ERRORS = [
    (lambda: nbconv.conv1d(np.ones((1, 2, 3, 4)), np.ones((2, 1, 3))), ValueError,
     r"conv1d: input must be 2-D \(C_in, L\) or 3-D \(N, C_in, L\), got 4-D shape \(1, 2, 3, 4\)"),
    (lambda: nbconv.conv1d(np.ones((1, 4, 8)), np.ones((2, 1, 3, 3))), ValueError,
     r"conv1d: weight must be 3-D \(C_out, C_in/groups, k\), got 4-D"),
    (lambda: nbconv.conv1d(np.ones((1, 4, 8)), np.ones((2, 1, 3)), groups=2), ValueError,
     (r"conv1d: weight.shape\[1\] \* groups \(1 \* 2\) must equal in_channels \(4\); weight must have shape "
      r"\(C_out, C_in/groups, k\) = \(2, 2, 3\)")),
    (lambda: nbconv.conv1d(np.ones((1, 4, 8)), np.ones((6, 1, 3)), groups=4), ValueError,
     r"conv1d: out_channels .* is not divisible by groups \(4\)"),
    (lambda: nbconv.conv1d(np.ones((1, 1, 4)), np.ones((1, 1, 3)), dilation=2), ValueError,
     r"conv1d: dilated kernel length 5 is larger than the padded input length 4"),
    (lambda: nbconv.conv1d(np.ones((1, 1, 4)), np.ones((1, 1, 3)), stride=(1, 1)), ValueError,
     r"conv1d: stride must be an int or a sequence of one int, got \(1, 1\)"),
    (lambda: nbconv.conv1d(np.ones((1, 1, 4)), np.ones((1, 1, 3)), stride=0), ValueError, r"conv1d: stride must be >= 1"),
    (lambda: nbconv.conv1d(np.ones((1, 1, 4)), np.ones((1, 1, 3)), padding="full"), ValueError,
     r"conv1d: padding must be an int, \(int,\), \(\(left, right\),\), 'valid' or 'same', got 'full'"),
    (lambda: nbconv.conv1d(np.ones((1, 1, 4)), np.ones((1, 1, 3)), padding=((1, -1),)), ValueError,
     r"conv1d: padding must be >= 0"),
    (lambda: nbconv.conv1d(np.ones((1, 1, 4)), np.ones((1, 1, 3)), padding=1.5), TypeError, r"conv1d: padding must be an int"),
    (lambda: nbconv.conv1d(np.ones((1, 1, 4)), np.ones((1, 1, 3), np.float32)), TypeError, r"conv1d: "),
    (lambda: nbconv.conv1d(np.ones((1, 1, 4)), np.ones((1, 1, 3)), out=np.ones((1, 1, 3))), ValueError,
     r"conv1d: out has shape \(1, 1, 1, 3\)"),
    (lambda: nbconv.conv_transpose1d(np.ones((1, 2, 4)), np.ones((2, 1, 3)), stride=2, output_padding=2), ValueError,
     r"conv_transpose1d: output_padding must be >= 0 and smaller than stride or dilation"),
    (lambda: nbconv.grad.conv1d_input((1, 2, 4, 4), np.ones((2, 1, 3)), np.ones((1, 2, 2))), ValueError,
     r"conv1d_input: input_size must have 2 or 3 entries"),
    (lambda: nbconv.grad.conv1d_weight(np.ones((1, 2, 4)), (2, 2, 3), np.ones((1, 2, 3))), ValueError,
     r"conv1d_weight: grad_output has shape \(1, 2, 3\), expected \(1, 2, 2\) \(the conv1d output\)"),
    (lambda: nbconv.grad.conv1d_weight(np.ones((1, 2, 4)), (2, 1, 3), np.ones((1, 2, 2))), ValueError,
     r"conv1d_weight: weight_size.shape\[1\] \* groups \(1 \* 1\) must equal in_channels \(2\)"),
    (lambda: nbconv.grad.conv1d_input((2, 4), np.ones((2, 2, 3)), np.ones((2, 3))), ValueError,
     r"conv1d_input: grad_output has shape \(2, 3\), expected \(2, 2\)"),
    (lambda: nbconv.grad.conv1d_bias(np.ones((2, 3, 4, 5))), ValueError,
     r"conv1d_bias: grad_output must be 2-D \(C_out, L_out\) or 3-D \(N, C_out, L_out\)"),
]


@pytest.mark.parametrize("call, error, message", ERRORS, ids=[m[:40] for _, _, m in ERRORS])
def test_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel:UserWarning")
def test_same_as_pytorch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 6, 17))
    w = rng.standard_normal((12, 2, 4))
    b = rng.standard_normal(12)
    for args in (dict(stride=2, padding=1, dilation=2, groups=3), dict(padding="same", groups=3),
                 dict(stride=(3,), padding=(2,), dilation=(1,), groups=3)):
        y = nbconv.conv1d(x, w, b, **args)
        tx, tw = torch.from_numpy(x).requires_grad_(), torch.from_numpy(w).requires_grad_()
        ty = F.conv1d(tx, tw, torch.from_numpy(b), **args)
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
        gy = rng.standard_normal(y.shape)
        ty.backward(torch.from_numpy(gy))
        np.testing.assert_allclose(nbconv.grad.conv1d_input(x.shape, w, gy, **args), tx.grad.numpy(), rtol=1e-11, atol=1e-11)
        np.testing.assert_allclose(nbconv.grad.conv1d_weight(x, w.shape, gy, **args), tw.grad.numpy(), rtol=1e-11,
                                   atol=1e-11)
    wt = rng.standard_normal((6, 4, 3))
    for args in (dict(stride=2, padding=1, output_padding=1, groups=3, dilation=1),
                 dict(stride=1, padding=2, groups=6, dilation=2)):
        got = nbconv.conv_transpose1d(x, wt, None, **args)
        np.testing.assert_allclose(got, F.conv_transpose1d(torch.from_numpy(x), torch.from_numpy(wt), **args).numpy(),
                                   rtol=1e-12, atol=1e-12)
    tensor = nbconv.conv1d(torch.from_numpy(x), torch.from_numpy(w), groups=3)  # tensors in, a tensor out
    assert isinstance(tensor, torch.Tensor) and tuple(tensor.shape) == (2, 12, 14)


def test_kinds_in_kinds_out():
    """Torch tensors give tensors (``out=`` too), other DLPack arrays NumPy arrays: the same
    values as the NumPy path, for every 1-D op."""
    torch = pytest.importorskip("torch")
    x, w, b, args = _arrays(CASES[0], np.float64)
    gy = np.random.default_rng(1).standard_normal(nbconv.conv1d(x, w, b, **args).shape)
    wt = np.random.default_rng(2).standard_normal((6, 2, 3))
    x_shape, w_shape = x.shape, w.shape

    def ops(x, w, b, gy, wt):
        return [
            lambda out=None: nbconv.conv1d(x, w, b, **args, out=out),
            lambda out=None: nbconv.conv_transpose1d(gy, wt, None, padding=1, groups=3, out=out),
            lambda out=None: nbconv.grad.conv1d_input(x_shape, w, gy, **args, out=out),
            lambda out=None: nbconv.grad.conv1d_weight(x, w_shape, gy, **args, out=out),
            lambda out=None: nbconv.grad.conv1d_bias(gy, out=out),
        ]

    wants = [op() for op in ops(x, w, b, gy, wt)]
    tensors = ops(*(torch.from_numpy(a) for a in (x, w, b, gy, wt)))
    dlpacks = ops(*(HostDLPack(a) for a in (x, w, b, gy, wt)))
    for want, tensor_op, dlpack_op in zip(wants, tensors, dlpacks):
        got = tensor_op()
        assert isinstance(got, torch.Tensor)
        np.testing.assert_array_equal(got.numpy(), want)
        out = torch.full(tuple(got.shape), float("nan"), dtype=torch.float64)
        assert tensor_op(out=out) is out
        np.testing.assert_array_equal(out.numpy(), want)
        got = dlpack_op()
        assert type(got) is np.ndarray
        np.testing.assert_array_equal(got, want)
