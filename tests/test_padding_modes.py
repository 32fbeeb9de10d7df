"""padding_mode 'reflect' / 'replicate' / 'circular' on conv2d, its gradients, conv1d and the layer:
against NumPy's np.pad + the zero-padding reference, against PyTorch, by adjoint identities; the
frame of slabs; the memory it saves; the errors."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from cases import SIMULATOR
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import conv2d_reference

import nbconv
from nbconv import _padding_modes
from nbconv._spec import conv2d_spec

MODES = ["reflect", "replicate", "circular"]
NP_MODE = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _sides(padding, k, dilation):
    """((top, bottom), (left, right)) of any padding form."""
    if padding == "same":
        return tuple((d * (kk - 1) // 2, d * (kk - 1) - d * (kk - 1) // 2) for kk, d in zip(k, dilation))
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    if isinstance(padding[0], int):
        return ((padding[0], padding[0]), (padding[1], padding[1]))
    return tuple(tuple(p) for p in padding)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def padded_reference(x, w, b, mode, stride=1, padding=0, dilation=1, groups=1):
    """np.pad with the mode, then the zero-padding reference with no padding."""
    pads = _sides(padding, w.shape[2:], _pair(dilation))
    lead = ((0, 0),) * (x.ndim - 2)
    xp = np.pad(np.asarray(x, np.float64), lead + pads, mode=NP_MODE[mode])
    return conv2d_reference(xp, w, b, stride=stride, padding=0, dilation=dilation, groups=groups)


# (N, C_in, H, W, C_out, k, stride, padding, dilation, groups)
CASES = [
    (2, 4, 9, 8, 8, (3, 3), 1, 1, 1, 2),
    (1, 4, 10, 11, 8, (3, 3), 2, 2, 1, 4),  # depthwise x2, stride 2
    (2, 2, 7, 9, 4, (3, 5), (2, 1), (1, 2), (2, 1), 1),
    (1, 4, 5, 5, 4, (5, 5), 1, "same", 1, 2),  # the frame is the whole output
    (1, 3, 12, 6, 6, (4, 2), 3, ((2, 0), (0, 1)), 2, 3),  # asymmetric, even kernel
    (None, 2, 6, 7, 2, (3, 3), 1, ((1, 2), (2, 1)), 1, 2),  # unbatched
    (0, 2, 6, 6, 2, (3, 3), 1, 1, 1, 1),  # empty batch
    (1, 1, 1, 1, 1, (1, 1), 1, 0, 1, 1),  # no padding at all
]


def _problem(case, dtype, seed=0):
    n, c_in, h, w_, c_out, k, s, p, d, g = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(((c_in, h, w_) if n is None else (n, c_in, h, w_))).astype(dtype)
    w = rng.standard_normal((c_out, c_in // g) + k).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype)
    return x, w, b, dict(stride=s, padding=p, dilation=d, groups=g)


def _circular_fits(x, args, w):
    (pt, pb), (pl, pr) = _sides(args["padding"], w.shape[2:], _pair(args["dilation"]))
    return max(pt, pb) <= x.shape[-2] and max(pl, pr) <= x.shape[-1]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_matches_np_pad(mode, dtype):
    for case in CASES:
        x, w, b, args = _problem(case, dtype)
        if mode == "reflect" and case[7] == "same" or not _circular_fits(x, args, w):
            continue  # reflect needs padding < size (checked in test_errors)
        got = nbconv.conv2d(x, w, b, **args, padding_mode=mode)
        want = padded_reference(x, w, b, mode, **args)
        assert got.shape == want.shape and got.dtype == dtype
        tol = 1e-4 if dtype == np.float32 else 1e-11
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("mode", MODES)
def test_gradients_match_pytorch(mode):
    torch = pytest.importorskip("torch")
    for case in CASES:
        x, w, b, args = _problem(case, np.float64)
        if not isinstance(args["padding"], int) or case[0] is None:
            continue  # PyTorch's layer takes one padding per axis, both sides
        if mode == "reflect" and args["padding"] >= min(x.shape[-2:]):
            continue
        m = torch.nn.Conv2d(x.shape[1], w.shape[0], w.shape[2:], padding_mode=mode, **args).double()
        m.weight.data, m.bias.data = torch.from_numpy(w), torch.from_numpy(b)
        tx = torch.from_numpy(x).requires_grad_()
        ty = m(tx)
        gy = np.random.default_rng(1).standard_normal(tuple(ty.shape))
        ty.backward(torch.from_numpy(gy))
        np.testing.assert_allclose(nbconv.conv2d(x, w, b, **args, padding_mode=mode), ty.detach().numpy(),
                                   rtol=1e-11, atol=1e-11)
        gx = nbconv.grad.conv2d_input(x.shape, w, gy, **args, padding_mode=mode)
        np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-10, atol=1e-10)
        gw = nbconv.grad.conv2d_weight(x, w.shape, gy, **args, padding_mode=mode)
        np.testing.assert_allclose(gw, m.weight.grad.numpy(), rtol=1e-10, atol=1e-10)


#: (kernel, stride, dilation) kinds the computing property test draws from: each kind is one compile
#: of the kernel that takes the padding modes, so a few that between them show every size, stride
#: and dilation value; the frame test below, which compiles nothing, draws every kind
KERNEL_KINDS = [((1, 1), (1, 1), (1, 1)), ((3, 3), (1, 1), (1, 1)), ((3, 2), (2, 1), (1, 2)),
                ((2, 4), (3, 2), (2, 1)), ((4, 1), (1, 3), (2, 2))]


@st.composite
def _padded_problems(draw, kinds=None):
    mode = draw(st.sampled_from(MODES))
    groups, cin_g, cout_g = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    if kinds is None:
        (kh, kw), (dh, dw) = (draw(st.integers(1, 4)), draw(st.integers(1, 4))), \
            (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    else:
        (kh, kw), stride, (dh, dw) = draw(st.sampled_from(kinds))
    h = draw(st.integers(dh * (kh - 1) + 1, 12))
    w = draw(st.integers(dw * (kw - 1) + 1, 12))
    limit_h, limit_w = (h - 1, w - 1) if mode == "reflect" else (h, w) if mode == "circular" else (4, 4)
    pads = ((draw(st.integers(0, min(3, limit_h))), draw(st.integers(0, min(3, limit_h)))),
            (draw(st.integers(0, min(3, limit_w))), draw(st.integers(0, min(3, limit_w)))))
    case = (draw(st.integers(1, 2)), groups * cin_g, h, w, groups * cout_g, (kh, kw),
            stride, pads, (dh, dw), groups)
    return mode, case, draw(st.sampled_from([np.float32, np.float64])), draw(st.integers(0, 2**32 - 1))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_padded_problems(KERNEL_KINDS))
def test_property_forward_and_adjoints(problem):
    """Forward equals np.pad + the reference; the gradients are the adjoints of the forward:
    <conv(x; w), gy> == <x, conv2d_input(gy)> == <w, conv2d_weight(x, gy)> (no bias)."""
    mode, case, dtype, seed = problem
    x, w, _, args = _problem(case, np.float64, seed)
    y = nbconv.conv2d(x, w, None, **args, padding_mode=mode)
    np.testing.assert_allclose(y, padded_reference(x, w, None, mode, **args), rtol=1e-11, atol=1e-11)
    gy = np.random.default_rng(seed + 1).standard_normal(y.shape)
    gx = nbconv.grad.conv2d_input(x.shape, w, gy, **args, padding_mode=mode)
    gw = nbconv.grad.conv2d_weight(x, w.shape, gy, **args, padding_mode=mode)
    scale = np.abs(y).sum() * np.abs(gy).max() + 1
    assert abs(np.vdot(y, gy) - np.vdot(x, gx)) < 1e-11 * scale
    assert abs(np.vdot(y, gy) - np.vdot(w, gw)) < 1e-11 * scale
    x32, w32, _, _ = _problem(case, dtype, seed)
    got = nbconv.conv2d(x32, w32, None, **args, padding_mode=mode)
    want = padded_reference(x32, w32, None, mode, **args)
    np.testing.assert_allclose(got, want, rtol=1e-4 if dtype == np.float32 else 1e-11,
                               atol=1e-4 if dtype == np.float32 else 1e-11)


@settings(max_examples=60, deadline=None)
@given(_padded_problems())
def test_slabs_are_the_frame(problem):
    """The slabs are disjoint and hold exactly the outputs whose windows read padding; each slab's
    rows and columns copy the input entries the mode says, its real run is the unpadded part."""
    mode, case, _, _ = problem
    x, w, _, args = _problem(case, np.float64)
    spec = conv2d_spec(x, w, None, **args)
    (h, wd), (kh, kw), (sh, sw), (dh, dw) = spec.in_size, spec.kernel_size, spec.stride, spec.dilation
    pt, _, pl, _ = spec.padding
    ho, wo = spec.out_size
    reads_pad = np.zeros((ho, wo), bool)
    for i in range(ho):
        for j in range(wo):
            rows = [i * sh + a * dh - pt for a in range(kh)]
            cols = [j * sw + c * dw - pl for c in range(kw)]
            reads_pad[i, j] = min(rows) < 0 or max(rows) >= h or min(cols) < 0 or max(cols) >= wd
    covered = np.zeros((ho, wo), int)
    for slab in _padding_modes.slabs(spec, mode):
        covered[slab.out_rows, slab.out_cols] += 1
        first = slab.out_rows.start * sh - pt
        for r, src in enumerate(slab.rows):
            q = first + r
            assert src == _padding_modes.source_index(q, h, mode)
            assert (0 <= q < h) == (slab.real_rows.start <= r < slab.real_rows.stop)
    np.testing.assert_array_equal(covered, reads_pad.astype(int))


def _extra_bytes(call):
    call()  # compile and keep the scratch outside the measure
    tracemalloc.start()
    y = call()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak - y.nbytes


def test_extra_memory_is_a_frame_not_a_padded_copy():
    """Peak memory of a reflect-padded grouped conv2d, beyond its output: a fraction of the
    padded copy PyTorch's layer makes (the slabs are a few rows or columns of the input)."""
    x = np.random.default_rng(0).standard_normal((4, 32, 64, 64)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((32, 2, 3, 3)).astype(np.float32)
    extra = _extra_bytes(lambda: nbconv.conv2d(x, w, None, padding=1, groups=16, padding_mode="reflect"))
    padded_copy = 4 * 32 * 66 * 66 * 4
    assert extra < 0.2 * padded_copy, (extra, padded_copy)  # 12% when measured (2-core Zen 3, NumPy 2.4)


#: depthwise layers without a multiplier, which the CPU computes with the mode in the kernel:
#: (N, C, H, W, k, stride, padding, dilation); padding up to the size - 1 (reflect's limit)
IN_KERNEL = [
    (2, 11, 9, 8, (3, 3), 1, 1, 1),  # a partial block of channels
    (1, 3, 7, 7, (7, 7), 1, 3, 1),  # the padding as wide as the kernel's reach
    (2, 4, 6, 13, (5, 3), (2, 1), ((5, 1), (0, 12)), (1, 2)),  # padding up to size - 1, one side
    (1, 2, 4, 3, (2, 2), 3, ((1, 3), (2, 2)), 1),  # even kernel, stride 3
    (None, 5, 5, 6, (3, 3), 1, "same", 2),  # unbatched, dilated 'same'
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_depthwise_modes_in_the_kernel(mode, dtype):
    """The CPU's depthwise kernel fills its padded plane by the mode: it takes these layers
    (no slabs), and they match np.pad + the reference."""
    from nbconv.cpu import _launch

    for n, c, h, w_, k, s, p, d in IN_KERNEL:
        x, w, b, args = _problem((n, c, h, w_, c, k, s, p, d, c), dtype)
        if not _circular_fits(x, args, w):
            continue
        spec = conv2d_spec(x, w, b, **args)
        assert _launch.takes_padding_mode(spec)
        got = nbconv.conv2d(x, w, b, **args, padding_mode=mode)
        tol = 1e-4 if dtype == np.float32 else 1e-11
        np.testing.assert_allclose(got, padded_reference(x, w, b, mode, **args), rtol=tol, atol=tol)


def test_depthwise_modes_need_no_memory_beyond_the_scratch():
    """A reflect-padded depthwise conv2d allocates nothing beyond its output once its per-thread
    scratch is kept (the padding is filled there, a block of channels at a time)."""
    x = np.random.default_rng(0).standard_normal((4, 32, 64, 64)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((32, 1, 3, 3)).astype(np.float32)
    extra = _extra_bytes(lambda: nbconv.conv2d(x, w, None, padding=1, groups=32, padding_mode="reflect"))
    assert extra < 64 * 1024, extra  # a padded copy: 2.1 MiB; measured: 0 (a few KiB of Python objects)


def test_zeros_and_a_mode_keep_separate_scratch():
    """A zero-padded call after a reflect-padded one of the same layer reads zeros in its
    padding (the mode's call writes its padding in its own scratch)."""
    x, w, b, args = _problem((2, 8, 7, 7, 8, (5, 5), 1, 2, 1, 8), np.float64)
    for mode in ("reflect", "zeros", "circular", "zeros"):
        got = nbconv.conv2d(x, w, b, **args, padding_mode=mode)
        want = conv2d_reference(x, w, b, **args) if mode == "zeros" else padded_reference(x, w, b, mode, **args)
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)


def test_views_out_kinds_and_no_mutation():
    torch = pytest.importorskip("torch")
    x, w, b, args = _problem(CASES[0], np.float64)
    base = np.zeros((2, 4, 18, 16))
    base[:, :, ::2, ::2] = x
    view = base[:, :, ::2, ::2]
    view.flags.writeable = False
    want = padded_reference(x, w, b, "reflect", **args)
    np.testing.assert_allclose(nbconv.conv2d(view, w, b, **args, padding_mode="reflect"), want, rtol=1e-11, atol=1e-11)
    out = np.full(want.shape, np.nan)
    assert nbconv.conv2d(x, w, b, **args, padding_mode="reflect", out=out) is out
    np.testing.assert_allclose(out, want, rtol=1e-11, atol=1e-11)
    np.testing.assert_array_equal(view, x)
    got = nbconv.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), **args, padding_mode="reflect")
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-11, atol=1e-11)


def test_conv1d_modes_match_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((2, 4, 13)), rng.standard_normal((8, 2, 3)), rng.standard_normal(8)
    for mode in MODES:
        m = torch.nn.Conv1d(4, 8, 3, 2, 2, 1, 2, True, mode).double()
        m.weight.data, m.bias.data = torch.from_numpy(w), torch.from_numpy(b)
        tx = torch.from_numpy(x).requires_grad_()
        ty = m(tx)
        gy = rng.standard_normal(tuple(ty.shape))
        ty.backward(torch.from_numpy(gy))
        args = dict(stride=2, padding=2, groups=2, padding_mode=mode)
        np.testing.assert_allclose(nbconv.conv1d(x, w, b, **args), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(nbconv.grad.conv1d_input(x.shape, w, gy, **args), tx.grad.numpy(), rtol=1e-11,
                                   atol=1e-11)
        np.testing.assert_allclose(nbconv.grad.conv1d_weight(x, w.shape, gy, **args), m.weight.grad.numpy(),
                                   rtol=1e-11, atol=1e-11)


ERRORS = [
    (lambda: nbconv.conv2d(np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3)), padding=4, padding_mode="reflect"),
     ValueError, r"conv2d: padding_mode='reflect' needs padding < input size along H, got padding \(4, 4\) for size 4"),
    (lambda: nbconv.conv2d(np.ones((1, 1, 4, 3)), np.ones((1, 1, 3, 3)), padding=(1, 4), padding_mode="circular"),
     ValueError, r"conv2d: padding_mode='circular' needs padding <= input size along W"),
    (lambda: nbconv.conv2d(np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3)), padding_mode="symmetric"), ValueError,
     r"conv2d: padding_mode must be one of 'zeros', 'reflect', 'replicate', 'circular', got 'symmetric'"),
    (lambda: nbconv.grad.conv2d_input((1, 1, 3, 3), np.ones((1, 1, 3, 3)), np.ones((1, 1, 7, 7)), padding=3,
                                      padding_mode="reflect"), ValueError, r"conv2d_input: padding_mode='reflect'"),
    (lambda: nbconv.grad.conv2d_weight(np.ones((1, 1, 3, 3)), (1, 1, 3, 3), np.ones((1, 1, 3, 3)), padding=1,
                                       padding_mode=None), ValueError, r"conv2d_weight: padding_mode must be one of"),
    (lambda: nbconv.conv1d(np.ones((1, 1, 3)), np.ones((1, 1, 3)), padding=3, padding_mode="reflect"), ValueError,
     r"conv1d: padding_mode='reflect' needs padding < input size along W"),
]


@pytest.mark.parametrize("call, error, message", ERRORS, ids=[m[:45] for _, _, m in ERRORS])
def test_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.cuda
def test_numba_device_arrays_are_refused_clearly():
    from numba import cuda

    x, w = cuda.to_device(np.ones((1, 1, 4, 4))), cuda.to_device(np.ones((1, 1, 3, 3)))
    with pytest.raises(TypeError, match="padding_mode other than 'zeros' takes NumPy, CuPy or torch arrays, got a "
                                        "Numba CUDA device array"):
        nbconv.conv2d(x, w, padding=1, padding_mode="reflect")


def test_cupy_arrays_on_a_gpu():
    cupy = pytest.importorskip("cupy")
    if SIMULATOR or cupy.cuda.runtime.getDeviceCount() < 1:
        pytest.skip("needs CuPy and a GPU")
    x, w, b, args = _problem(CASES[2], np.float64)
    for mode in MODES:
        got = nbconv.conv2d(cupy.asarray(x), cupy.asarray(w), cupy.asarray(b), **args, padding_mode=mode)
        np.testing.assert_allclose(cupy.asnumpy(got), padded_reference(x, w, b, mode, **args), rtol=1e-11,
                                   atol=1e-11)
