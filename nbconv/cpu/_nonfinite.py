"""Where non-finite inputs put infinities and NaNs in a convolution's sums, found without the sums.

A sum that has a non-finite term is decided by its non-finite terms alone: NaN if one of them is
NaN, or if both +inf and -inf occur; otherwise that infinity (the finite terms cannot change it).
With finite weights (forward) or a finite output gradient (weight gradient), a term
``x * v`` is non-finite exactly where ``x`` is, and which kind it is depends only on the kind of
``x`` (NaN, +inf, -inf) and on the sign of ``v`` (positive, negative, zero: ``0 * inf`` is NaN).

So the kinds of a convolution's results follow from two small tables instead of its sums:

- the input's kind per pixel (:func:`classify`: one byte, ``FINITE``, ``NAN``, ``POS_INF``,
  ``NEG_INF``);
- the other operand's sign per output channel, as bit masks over a group's output channels
  (:func:`sign_masks`: bit ``o`` of word ``o // 64`` set where output channel ``o`` of the group
  has a positive / negative / zero value).

A term's kind for all output channels of a group is then three OR-ed words, and a NaN input pixel
makes every output channel of its group NaN at once. Both kernels stop a sum as soon as every
output channel of the group is decided NaN (a NaN pixel, or both signs met), which is at once for
an all-NaN input and after a few terms for an all-inf one with weights of both signs: a diverged
step costs a pass over the input, not a second convolution.

The launcher uses these where a fast kernel (Winograd, or the packed kernels, whose dropped
columns pair input pixels with zeros) gave non-finite results for an input with many non-finite
pixels: results with a non-finite term take the kind found here, finite results of the fast
kernel are kept, and only where a result is non-finite without a non-finite term (an overflow, or
a Winograd tile's mixing) is a direct kernel run again.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from .._numba_options import njit_parallel, njit_serial

#: Kinds of a value (:func:`classify`), and of a result (:func:`forward_kinds`,
#: :func:`weight_grad_kinds`): 0 is finite (a result with no non-finite term).
FINITE, NAN, POS_INF, NEG_INF = 0, 1, 2, 3
#: Rows of :func:`sign_masks`' masks: output channels whose value is > 0, < 0, == 0.
_POS, _NEG, _ZERO = 0, 1, 2
#: Most bytes the output gradient's masks may take at once (they are built per chunk of images).
MASK_BYTES = 1 << 23
_RESULT_VALUES = (0.0, np.nan, np.inf, -np.inf)


@njit_parallel
def _classify(values, kinds):
    """``kinds[i]`` = the kind of ``values[i]``; returns (how many are not finite, how many are
    infinite). Without branches, so that LLVM vectorises the loop (with them: 3 ms instead of
    2.3 on 38.5 MB of float32, 2 threads of an Intel Xeon, one-off)."""
    nonfinite = 0
    infinite = 0
    for i in numba.prange(values.size):
        v = values[i]
        k = np.uint8(v != v) + np.uint8(2) * np.uint8(v == np.inf) + np.uint8(3) * np.uint8(v == -np.inf)
        kinds[i] = k
        nonfinite += k != 0
        infinite += k > 1
    return nonfinite, infinite


class Kinds(NamedTuple):
    """The kinds of an array's elements (``uint8``, its shape), how many are not finite, and how
    many of those are infinite (the rest are NaN)."""

    kinds: np.ndarray
    nonfinite: int
    infinite: int


def classify(a: np.ndarray) -> Kinds:
    """The kind of every element of ``a`` (see :class:`Kinds`)."""
    flat = np.ascontiguousarray(a).reshape(-1)
    kinds = np.empty(flat.size, np.uint8)
    nonfinite, infinite = _classify(flat, kinds) if flat.size else (0, 0)
    return Kinds(kinds.reshape(a.shape), int(nonfinite), int(infinite))


@njit_parallel
def _all_finite(values):
    bad = 0
    for i in numba.prange(values.size):
        bad += not np.isfinite(values[i])
    return bad == 0


def all_finite(a: np.ndarray) -> bool:
    """Whether every element of C-contiguous ``a`` is finite (one parallel pass, no temporary)."""
    return bool(_all_finite(a.reshape(-1))) if a.size else True


@njit_parallel
def _sign_masks(values, groups, masks):
    """``values`` (N, C, P), finite: masks[n, g, p, s, o // 64] has bit ``o % 64`` set where
    channel ``o`` of group ``g`` has sign ``s`` (``_POS``, ``_NEG``, ``_ZERO``) at ``p``."""
    n_img, channels, n_pos = values.shape
    per_group = channels // groups
    for task in numba.prange(n_img * groups):
        n, g = task // groups, task % groups
        if per_group == 1:  # depthwise: one sign per value, a loop LLVM vectorises
            for p in range(n_pos):
                v = values[n, g, p]
                masks[n, g, p, _POS, 0] = v > 0
                masks[n, g, p, _NEG, 0] = v < 0
                masks[n, g, p, _ZERO, 0] = v == 0
            continue
        for j in range(masks.shape[4]):
            for p in range(n_pos):
                pos = neg = zero = np.uint64(0)
                for o in range(64 * j, min(64 * j + 64, per_group)):
                    # no branches: the signs of a gradient are random
                    shift = np.uint64(o & 63)
                    v = values[n, g * per_group + o, p]
                    pos |= np.uint64(v > 0) << shift
                    neg |= np.uint64(v < 0) << shift
                    zero |= np.uint64(v == 0) << shift
                masks[n, g, p, _POS, j] = pos
                masks[n, g, p, _NEG, j] = neg
                masks[n, g, p, _ZERO, j] = zero


def sign_masks(values: np.ndarray, groups: int) -> np.ndarray:
    """The sign masks (N, groups, P, 3, words) of finite ``values`` (N, C, P) (see the module):
    bytes where a group has at most 8 channels (a depthwise layer's masks are then smaller than
    its values), else 64-bit words."""
    per_group = values.shape[1] // groups
    dtype = np.uint8 if per_group <= 8 else np.uint64
    masks = np.empty((values.shape[0], groups, values.shape[2], 3, -(-per_group // 64)), dtype)
    if masks.size:
        _sign_masks(np.ascontiguousarray(values), groups, masks)
    return masks


@njit_serial
def _add_term(acc, masks, kind):
    """acc (3, words) of NaN / +inf / -inf bits |= the kinds of ``x * v`` for an input of ``kind``
    (+inf or -inf) and the sign masks ``masks`` (3, words) of ``v``."""
    hi, lo = (_POS, _NEG) if kind == POS_INF else (_NEG, _POS)
    for j in range(acc.shape[1]):
        acc[0, j] |= masks[_ZERO, j]
        acc[1, j] |= masks[hi, j]
        acc[2, j] |= masks[lo, j]


@njit_serial
def _all_nan(acc, channels):
    """Whether every one of ``channels`` output channels is decided NaN (a NaN term, or both
    infinities)."""
    for j in range(acc.shape[1]):
        bits = min(64, channels - 64 * j)
        full = np.uint64(0xFFFFFFFFFFFFFFFF) if bits == 64 else (np.uint64(1) << np.uint64(bits)) - np.uint64(1)
        if (acc[0, j] | (acc[1, j] & acc[2, j])) & full != full:
            return False
    return True


@njit_serial
def _result_kind(acc, o, nan_all):
    if nan_all:
        return NAN
    j, bit = o >> 6, np.uint64(1) << np.uint64(o & 63)
    pos, neg = (acc[1, j] & bit) != 0, (acc[2, j] & bit) != 0
    if (acc[0, j] & bit) != 0 or (pos and neg):
        return NAN
    return POS_INF if pos else (NEG_INF if neg else FINITE)


@njit_parallel
def _forward_kinds(xk, wm, out, sh, sw, dh, dwl, pt, pl, lh, lw, kh_n, kw_n):
    """out[n, o, oy, ox] = the kind of forward result (n, o, oy, ox): input kinds ``xk``
    (N, C_in, H, W), the weight's sign masks ``wm`` (groups, C_in/groups * kH * kW, 3, words),
    strides, dilations, near paddings and input dilations of the convolution."""
    n_img, c_in, h, w = xk.shape
    groups, words = wm.shape[0], wm.shape[3]
    c_out, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    cin_g, cout_g = c_in // groups, c_out // groups
    for task in numba.prange(n_img * groups * oh):
        n, g, oy = task // (groups * oh), task // oh % groups, task % oh
        acc = np.empty((3, words), np.uint64)
        for ox in range(ow):
            acc[:] = 0
            nan_all = False
            for c in range(cin_g):
                ci = g * cin_g + c
                for kh in range(kh_n):
                    yd = oy * sh + kh * dh - pt
                    if yd < 0 or yd % lh != 0 or yd // lh >= h:
                        continue
                    for kw in range(kw_n):
                        xd = ox * sw + kw * dwl - pl
                        if xd < 0 or xd % lw != 0 or xd // lw >= w:
                            continue
                        kind = xk[n, ci, yd // lh, xd // lw]
                        if kind == FINITE:
                            continue
                        if kind == NAN:
                            nan_all = True
                            break
                        _add_term(acc, wm[g, (c * kh_n + kh) * kw_n + kw], kind)
                    if nan_all:
                        break
                if nan_all or _all_nan(acc, cout_g):
                    nan_all = True
                    break
            for o in range(cout_g):
                out[n, g * cout_g + o, oy, ox] = _result_kind(acc, o, nan_all)


def forward_kinds(x_kinds: Kinds, w: np.ndarray, spec) -> np.ndarray:
    """The kind (``uint8``, (N, C_out, H_out, W_out)) of every result of the forward convolution
    ``spec`` of an input whose kinds are ``x_kinds``, with the finite weight ``w`` (C_out,
    C_in/groups, kH, kW)."""
    wm = sign_masks(w.reshape(1, w.shape[0], -1), spec.groups)[0]
    out = np.empty(spec.conv_output_shape, np.uint8)
    if out.size:
        (sh, sw), (dh, dwl), (kh_n, kw_n), (lh, lw) = spec.stride, spec.dilation, spec.kernel_size, spec.lhs_dilation
        _forward_kinds(x_kinds.kinds, wm, out, sh, sw, dh, dwl, spec.padding[0], spec.padding[2], lh, lw, kh_n, kw_n)
    return out


@njit_parallel
def _weight_grad_kinds(xk, gm, n0, acc, state, cout_g, sh, sw, dh, dwl, pt, pl, kh_n, kw_n, ow):
    """Adds images ``n0 ..`` (``gm``: their output gradient's sign masks, (images, groups,
    H_out * W_out, 3, words)) to the kinds ``acc`` (groups * C_in/groups * kH * kW, 3, words) of the
    weight gradient's sums (``cout_g`` output channels per group); ``state[t]`` is 1 once every
    output channel of tap ``t`` is NaN."""
    n_chunk, groups, n_pos = gm.shape[0], gm.shape[1], gm.shape[2]
    h, w = xk.shape[2], xk.shape[3]
    cin_g = xk.shape[1] // groups
    taps = kh_n * kw_n
    oh = n_pos // ow
    for t in numba.prange(acc.shape[0]):
        if state[t]:
            continue
        g, c, kh, kw = t // (cin_g * taps), t // taps % cin_g, t // kw_n % kh_n, t % kw_n
        ci = g * cin_g + c
        a = acc[t]
        done = False
        for m in range(n_chunk):
            for oy in range(oh):
                iy = oy * sh + kh * dh - pt
                if iy < 0 or iy >= h:
                    continue
                for ox in range(ow):
                    ix = ox * sw + kw * dwl - pl
                    if ix < 0 or ix >= w:
                        continue
                    kind = xk[n0 + m, ci, iy, ix]
                    if kind == FINITE:
                        continue
                    if kind == NAN:
                        done = True
                        break
                    _add_term(a, gm[m, g, oy * ow + ox], kind)
                if done or _all_nan(a, cout_g):
                    done = True
                    break
            if done:
                break
        if done:
            state[t] = 1


@njit_parallel
def _weight_grad_result(acc, state, out, groups):
    """out (C_out, C_in/groups, kH, kW) = the kinds found in ``acc`` and ``state``."""
    c_out, cin_g, kh_n, kw_n = out.shape
    cout_g = c_out // groups
    taps = kh_n * kw_n
    for t in numba.prange(acc.shape[0]):
        g, c, kh, kw = t // (cin_g * taps), t // taps % cin_g, t // kw_n % kh_n, t % kw_n
        for o in range(cout_g):
            out[g * cout_g + o, c, kh, kw] = _result_kind(acc[t], o, state[t] != 0)


def weight_grad_kinds(x_kinds: Kinds, gy: np.ndarray, spec, mask_bytes: int = MASK_BYTES) -> np.ndarray:
    """The kind (``uint8``, (C_out, C_in/groups, kH, kW)) of every sum of the weight gradient
    ``spec`` for an input of kinds ``x_kinds`` and the output gradient ``gy``, which must be
    finite where the input has infinities. The gradient's sign masks are built for 1, 1, 2, 4, ...
    images at a time (at most ``mask_bytes``), and only while a sum is undecided: none where the
    input's non-finite pixels are all NaN (every term they make is NaN)."""
    n_img, groups, (oh, ow) = spec.batch, spec.groups, spec.out_size
    words = -(-spec.out_per_group // 64)
    acc = np.zeros((spec.in_channels * spec.kernel_size[0] * spec.kernel_size[1], 3, words), np.uint64)
    state = np.zeros(acc.shape[0], np.uint8)
    (sh, sw), (dh, dwl), (kh_n, kw_n) = spec.stride, spec.dilation, spec.kernel_size
    gy3 = gy.reshape(n_img, spec.out_channels, oh * ow)
    per_image = groups * oh * ow * 3 * words * (1 if spec.out_per_group <= 8 else 8)
    n0, chunk = 0, 1
    while n0 < n_img and not state.all():
        if x_kinds.infinite:
            gm = sign_masks(gy3[n0:n0 + chunk], groups)
        else:  # never read
            gm = np.zeros((min(chunk, n_img - n0), groups, oh * ow, 3, words), np.uint8)
        _weight_grad_kinds(x_kinds.kinds, gm, n0, acc, state, spec.out_per_group, sh, sw, dh, dwl, spec.padding[0],
                           spec.padding[2], kh_n, kw_n, ow)
        n0 += gm.shape[0]
        if n0 > 1:
            chunk = max(1, min(2 * chunk, mask_bytes // max(1, per_image)))
    out = np.empty((spec.out_channels, spec.in_per_group) + spec.kernel_size, np.uint8)
    _weight_grad_result(acc, state, out, groups)
    return out


@njit_parallel
def _apply(dest, kinds, values):
    """dest[i] = values[kinds[i]] where the kind is not finite; returns how many results are
    non-finite without a non-finite term (they need the exact sums)."""
    unexplained = 0
    for i in numba.prange(dest.size):
        k = kinds[i]
        if k != FINITE:
            dest[i] = values[k]
        elif not np.isfinite(dest[i]):
            unexplained += 1
    return unexplained


def apply_kinds(dest: np.ndarray, kinds: np.ndarray) -> int:
    """Writes NaN / +inf / -inf into C-contiguous ``dest`` where ``kinds`` says so; returns how many
    non-finite results ``kinds`` does not explain."""
    if not dest.size:
        return 0
    return int(_apply(dest.reshape(-1), kinds.reshape(-1), np.array(_RESULT_VALUES, dest.dtype)))
