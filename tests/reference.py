"""Independent pure-NumPy reference: per-group split, plain correlation, concatenate.

This is exactly the equivalence the PyTorch docs state for ``groups``: the input channels and
the filters are split into ``groups`` blocks, each block is convolved densely, the results are
concatenated along channels. The dense correlation pads explicitly with ``np.pad`` and sums
``kh * kw`` shifted, strided slices contracted with ``np.tensordot``, in float64. It shares no
code with nbconv.
"""

from __future__ import annotations

import numpy as np


def _pads(padding, kernel_size, stride, dilation):
    """((top, bottom), (left, right)) from any accepted padding form (PyTorch's rules)."""
    if padding == "valid":
        return ((0, 0), (0, 0))
    if padding == "same":
        assert stride == (1, 1)
        out = []
        for k, d in zip(kernel_size, dilation):
            total = d * (k - 1)
            out.append((total // 2, total - total // 2))
        return tuple(out)
    if isinstance(padding, int):
        padding = (padding, padding)
    if not isinstance(padding[0], int):  # ((top, bottom), (left, right))
        return (tuple(padding[0]), tuple(padding[1]))
    return ((padding[0], padding[0]), (padding[1], padding[1]))


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def dense_correlation(x, w, stride, pads, dilation):
    """x (N, C, H, W), w (O, C, kH, kW) -> (N, O, OH, OW), float64, no groups."""
    x = np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0)) + tuple(pads))
    w = np.asarray(w, np.float64)
    n, _, hp, wp = x.shape
    o, _, kh, kw = w.shape
    (sh, sw), (dh, dw) = stride, dilation
    oh = (hp - dh * (kh - 1) - 1) // sh + 1
    ow = (wp - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, o, oh, ow))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out


def conv2d_reference(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Grouped conv2d in float64 by splitting into ``groups`` dense correlations."""
    x = np.asarray(x)
    unbatched = x.ndim == 3
    if unbatched:
        x = x[None]
    stride, dilation = _pair(stride), _pair(dilation)
    w = np.asarray(w)
    pads = _pads(padding, w.shape[2:], stride, dilation)
    xs = np.split(x, groups, axis=1)
    ws = np.split(w, groups, axis=0)
    out = np.concatenate([dense_correlation(xg, wg, stride, pads, dilation) for xg, wg in zip(xs, ws)], axis=1)
    if bias is not None:
        out += np.asarray(bias, np.float64)[None, :, None, None]
    return out[0] if unbatched else out


def assert_conv_close(got, x, w, bias=None, **conv_args):
    """Assert ``got`` equals the reference within the floating-point error bound of the sum.

    Each output is a sum of K = C_in/groups * kH * kW products (+ bias). Summed in precision
    ``eps_acc`` and rounded to the output dtype, its error is at most
    ``(eps_out + K * eps_acc) * sum|terms|``; ``sum|terms|`` is the reference run on ``|x|``,
    ``|w|``, ``|bias|``. A dropped or misplaced tap is off by a whole term and fails.
    """
    got = np.asarray(got)
    assert got.dtype == np.asarray(x).dtype, (got.dtype, np.asarray(x).dtype)
    ref = conv2d_reference(x, w, bias, **conv_args)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    absb = None if bias is None else np.abs(np.asarray(bias, np.float64))
    bound = conv2d_reference(np.abs(np.asarray(x, np.float64)), np.abs(np.asarray(w, np.float64)), absb, **conv_args)
    k = int(np.prod(np.shape(w)[1:])) + 1
    eps_out = float(np.finfo(got.dtype).eps)
    eps_acc = float(np.finfo(np.float64 if got.dtype == np.float64 else np.float32).eps)
    tol = (eps_out + k * eps_acc) * bound + np.finfo(got.dtype).tiny
    err = np.abs(got.astype(np.float64) - ref)
    bad = err > tol
    assert not bad.any(), (
        f"{int(bad.sum())} of {bad.size} outputs differ; worst |got - ref| = {err.max():.3g} "
        f"at {np.unravel_index(np.argmax(err - tol), err.shape)}"
    )


def _split_pads(padding, kernel_size, stride, dilation):
    return _pads(padding, tuple(kernel_size), _pair(stride), _pair(dilation))


def conv2d_input_reference(input_shape, w, gy, stride=1, padding=0, dilation=1, groups=1):
    """Gradient of conv2d w.r.t. its input, by scattering each tap's slice back (float64)."""
    unbatched = len(input_shape) == 3
    n, c, h, wd = (1,) + tuple(input_shape) if unbatched else tuple(input_shape)
    gy = np.asarray(gy, np.float64)[None] if unbatched else np.asarray(gy, np.float64)
    w = np.asarray(w, np.float64)
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    (pt, pb), (pl, pr) = _split_pads(padding, w.shape[2:], (sh, sw), (dh, dw))
    oh, ow = gy.shape[2:]
    xpad = np.zeros((n, c, h + pt + pb, wd + pl + pr))
    cin_g, cout_g = c // groups, w.shape[0] // groups
    for g in range(groups):
        wg = w[g * cout_g : (g + 1) * cout_g]
        gg = gy[:, g * cout_g : (g + 1) * cout_g]
        for i in range(w.shape[2]):
            for j in range(w.shape[3]):
                xpad[:, g * cin_g : (g + 1) * cin_g, i * dh : i * dh + sh * (oh - 1) + 1 : sh,
                     j * dw : j * dw + sw * (ow - 1) + 1 : sw] += np.einsum("nohw,oc->nchw", gg, wg[:, :, i, j])
    gx = xpad[:, :, pt : pt + h, pl : pl + wd]
    return gx[0] if unbatched else gx


def conv2d_weight_reference(x, weight_shape, gy, stride=1, padding=0, dilation=1, groups=1):
    """Gradient of conv2d w.r.t. its weight: per group, each tap's input slice against gy."""
    x = np.asarray(x, np.float64)
    gy = np.asarray(gy, np.float64)
    if x.ndim == 3:
        x, gy = x[None], gy[None]
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    pads = _split_pads(padding, weight_shape[2:], (sh, sw), (dh, dw))
    x = np.pad(x, ((0, 0), (0, 0)) + tuple(pads))
    o, cin_g, kh, kw = weight_shape
    cout_g = o // groups
    oh, ow = gy.shape[2:]
    gw = np.zeros(weight_shape)
    for g in range(groups):
        xg = x[:, g * cin_g : (g + 1) * cin_g]
        gg = gy[:, g * cout_g : (g + 1) * cout_g]
        for i in range(kh):
            for j in range(kw):
                patch = xg[:, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw]
                gw[g * cout_g : (g + 1) * cout_g, :, i, j] = np.einsum("nchw,nohw->oc", patch, gg)
    return gw


def conv_transpose2d_reference(x, w, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Transposed conv: every input pixel scatters its taps into a full-size output, which is
    then cropped by ``padding`` (float64, per group)."""
    x = np.asarray(x, np.float64)
    unbatched = x.ndim == 3
    if unbatched:
        x = x[None]
    w = np.asarray(w, np.float64)
    (sh, sw), (dh, dw), (oph, opw) = _pair(stride), _pair(dilation), _pair(output_padding)
    (pt, pb), (pl, pr) = _split_pads(padding, w.shape[2:], (sh, sw), (dh, dw))
    n, c_in, h, wd = x.shape
    cin_g, cout_g, kh, kw = w.shape[0] // groups, w.shape[1], w.shape[2], w.shape[3]
    full = np.zeros((n, cout_g * groups, (h - 1) * sh + dh * (kh - 1) + 1 + oph, (wd - 1) * sw + dw * (kw - 1) + 1 + opw))
    for g in range(groups):
        xg = x[:, g * cin_g : (g + 1) * cin_g]
        wg = w[g * cin_g : (g + 1) * cin_g]
        for i in range(kh):
            for j in range(kw):
                full[:, g * cout_g : (g + 1) * cout_g, i * dh : i * dh + sh * (h - 1) + 1 : sh,
                     j * dw : j * dw + sw * (wd - 1) + 1 : sw] += np.einsum("nchw,co->nohw", xg, wg[:, :, i, j])
    out = full[:, :, pt : full.shape[2] - pb, pl : full.shape[3] - pr]
    if bias is not None:
        out = out + np.asarray(bias, np.float64)[None, :, None, None]
    return out[0] if unbatched else out


def assert_within_bound(got, ref, bound, k, dtype):
    """|got - ref| <= (eps_out + k * eps_acc) * bound, where ``bound`` is the reference run on
    absolute values (the sum of |terms|) and ``k`` the number of terms of each sum."""
    got = np.asarray(got)
    assert got.dtype == np.dtype(dtype), (got.dtype, dtype)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    eps_out = float(np.finfo(got.dtype).eps)
    eps_acc = float(np.finfo(np.float64 if got.dtype == np.float64 else np.float32).eps)
    tol = (eps_out + k * eps_acc) * bound + np.finfo(got.dtype).tiny
    err = np.abs(got.astype(np.float64) - ref)
    bad = err > tol
    assert not bad.any(), f"{int(bad.sum())} of {bad.size} differ; worst |got - ref| = {err.max():.3g}"
