"""Launchers of the CPU kernels: layout normalisation and the choice of algorithm per spec.

Kernels receive C-contiguous 4-D arrays of one dtype. Inputs in any other layout (Fortran
order, strided views) are copied once into C order here; read-only inputs are used as they are.
"""

from __future__ import annotations

import numba
import numpy as np

from .._numba_options import njit_parallel_unfused
from . import (
    _channels_last,
    _depthwise,
    _depthwise_lanes,
    _flat,
    _grouped,
    _im2col,
    _nonfinite,
    _outer,
    _pointwise,
    _rowblock,
    _scale,
    _stem,
    _wgrad,
    _winograd,
    _winograd_wgrad,
)
from ._packed import (
    SEGMENT_ELEMS,
    bias_grad,
    forward_packed,
    stack_bucket,
    stack_limit,
    weight_grad_packed,
)
from ._threads import thread_count


def _batched(a: np.ndarray, unbatched: bool) -> np.ndarray:
    return a[np.newaxis] if unbatched else a


def choose_oc_block(batch: int, groups: int, out_per_group: int, threads: int) -> int:
    """Output channels per parallel task.

    A task packs its group's input planes once, so whole groups are best; a group is sliced
    only as far as needed to give every thread at least 4 tasks.
    """
    slices = -(-4 * threads // max(1, batch * groups))  # ceil
    return max(1, -(-out_per_group // min(slices, out_per_group)))


def choose_stack(spec) -> int:
    """Images per forward task: enough small images stacked to fill a segment
    (``SEGMENT_ELEMS``) with one vector loop, but never so many that fewer than 4 tasks per
    thread remain."""
    if spec.batch == 0:
        return 1
    stack = stack_limit(spec, SEGMENT_ELEMS)
    threads = thread_count()
    while stack > 1 and -(-spec.batch // stack) * spec.groups < 4 * threads:
        stack -= 1
    return stack_bucket(stack)


def choose_weight_stack(spec) -> int:
    """Images per pack in the weight gradient: images are summed inside a task, so stacking
    them costs no parallelism, only scratch (bounded by ``STACK_SCRATCH_ELEMS``). Every tap's dot
    product reads one input channel's planes, all phases of them at a stride: those are kept
    about L1-sized (resnext_g32_s2 at batch 8: stacks of 2 took 2.4 ms, of 8 3.0 ms, caches
    flushed before each call). Not bounded by the batch: a smaller batch is one short stack, in
    the same generated module (``_wgrad``'s source holds the stack, not the batch)."""
    if spec.batch == 0:
        return 1
    return stack_bucket(stack_limit(spec, 4 * SEGMENT_ELEMS, phases=True, bound_by_batch=False))


def flipped_transposed_weight(weight: np.ndarray, groups: int) -> np.ndarray:
    """conv_transpose2d's (C_in, C_out/groups, kH, kW) weight as the (C_out, C_in/groups, kH, kW)
    weight of the equivalent convolution: per group, channels swapped and taps flipped."""
    c_in, cout_g, kh, kw = weight.shape
    w = weight.reshape(groups, c_in // groups, cout_g, kh, kw).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
    return np.ascontiguousarray(w).reshape(groups * cout_g, c_in // groups, kh, kw)


#: Fewest multiply-adds for which a kernel generated for the geometry is used: each new geometry
#: costs seconds of compilation (first calls of 1.7-3.7 s with a cold cache on the standard shapes,
#: 0.3 s from the disk cache: ``nbconv bench --shapes NAME`` prints both), which a small
#: call does not earn back; those take the packed kernels, compiled once for all geometries.
MIN_GENERATED_MACS = 1 << 18


#: Fewest multiply-adds for the depthwise kernels compiled once per kernel size, stride and
#: dilation (``_depthwise_lanes``, ``_depthwise``): their compile is paid once per kind, not per
#: geometry, and they beat the packed kernel at every size measured (2-core Zen 5, float32:
#: ShuffleNetV2's 232-channel 3x3 layers at batch 2, 2 x 10^5 multiply-adds, 151 -> 26 us at
#: stride 2 and 58 -> 19 us at stride 1; 2 x 10^4: 24 -> 16 us). Below this, tiny calls (and the
#: small cases of most tests) keep the packed kernel rather than compile a kind for themselves.
MIN_KIND_MACS = 1 << 16


def _macs(spec) -> int:
    (oh, ow), (kh, kw) = spec.out_size, spec.kernel_size
    return spec.batch * spec.out_channels * oh * ow * spec.in_per_group * kh * kw


def worth_generating(spec) -> bool:
    """Whether the call is big enough for the per-geometry kernels (``_rowblock``, ``_grouped``,
    ``_wgrad``)."""
    return _macs(spec) >= MIN_GENERATED_MACS


def worth_compiling_kind(spec) -> bool:
    """Whether the call is big enough for the depthwise kernels compiled once per kind."""
    return _macs(spec) >= MIN_KIND_MACS


#: Fewest terms per output (input channels per group x taps) for the kernels generated per
#: geometry (``_outer``, ``_grouped``) where a group has two or more input channels: below, a stem such as MobileNetV2's 3 -> 32 3x3 at stride
#: 2 on 224 x 224 (27 terms) takes the packed kernel, compiled once for all geometries. On a
#: 2-core Zen 3, batch 2 / 8: packed 1.44 / 3.93 ms, ``_grouped`` 0.82 / 5.58 ms (4.5 s to
#: compile per geometry and batch), ``_outer`` 1.88 / 9.86 ms (8.4 s), PyTorch 4.35 / 18.4 ms.
MIN_GENERATED_TERMS = 32


def takes_padding_mode(spec) -> bool:
    """Whether a kernel computes the forward of ``spec`` with its ``padding_mode`` in the
    padding (``_depthwise_lanes`` fills its per-thread padded plane by the mode: no padded copy
    of the input, no second pass over the frame)."""
    return spec.op == "conv2d" and _depthwise_lanes.applies(spec)


def forward_kernel(spec) -> str:
    """The name of the kernel that computes the forward of ``spec`` (a pure function of the spec
    and the thread-independent constants of the kernel modules: which kernel runs, and so the
    order of each sum, never depends on the thread count). ``"winograd"`` falls back to the
    direct kernel :func:`direct_forward_kernel` names when its result is not finite."""
    if spec.padding_mode != "zeros":
        if not takes_padding_mode(spec):
            raise ValueError(f"{spec.op}: no CPU kernel takes padding_mode={spec.padding_mode!r} for this layer")
        return "depthwise_lanes"
    if worth_generating(spec) and _winograd.applies(spec):
        return "winograd"
    return direct_forward_kernel(spec)


def direct_forward_kernel(spec) -> str:
    """The kernel that computes ``spec`` term by term (not by Winograd's transforms)."""
    if _scale.applies(spec):
        # one term per output (a depthwise 1x1): a multiply-add a pixel, no packing, one compile
        return "scale"
    if _pointwise.applies(spec):
        # every size a run-time value: one compile for every 1x1 layer (2-3x ``_outer`` on AVX2)
        return "pointwise"
    if _stem.applies(spec):
        # a few input channels (stems): input rows split into column phases once per task, the
        # terms read from them where they lie (``_im2col`` copies a column per term)
        return "stem"
    if _im2col.applies(spec) and spec.groups == 1:
        # dense layers (stems, ConvNeXt's 2x2 downsampling): a copy and the pointwise kernel, both
        # compiled once, nothing per geometry; 2.3-4.7x ``_outer`` and the packed kernel on
        # ConvNeXt-T's downsampling layers (``nbconv bench --network convnext_tiny``)
        return "im2col"
    if not worth_compiling_kind(spec):
        return "packed"
    if _depthwise_lanes.applies(spec) and _depthwise_lanes.prefers(spec):
        # channels in the lanes: no masked load, no idle lane on small planes; sizes at run time
        return "depthwise_lanes"
    if _depthwise.applies(spec):
        # sizes at run time: one compile per kernel size, stride and dilation, where ``_rowblock``
        # and ``_channels_last`` compile per geometry (0.76-1.2x them on the depthwise shapes of
        # ``python docs/generic_kernels.py``, faster than PyTorch on all: ``docs/performance.md``)
        return "depthwise"
    if not worth_generating(spec):
        return "packed"
    if 1 < spec.in_per_group and spec.in_per_group * spec.kernel_size[0] * spec.kernel_size[1] < MIN_GENERATED_TERMS:
        return "packed"
    if _outer.applies(spec) and (_outer.prefers(spec) or not _grouped.applies(spec)):
        # output channels in the lanes: faster than every kernel below wherever it applies
        # (1.3-2.4x on 3x3 groups of 16-64 channels: ``docs/performance.md``), but for some
        # strided groups sharing a vector on wide rows with AVX2 (``_outer.prefers``)
        return "outer"
    if _rowblock.applies(spec):  # depthwise with an input dilation: strided transposed convolutions
        return "rowblock"
    if _grouped.applies(spec):
        return "grouped"
    return "packed"


def _packed_forward(x, w, b, dest, spec) -> None:
    stack = choose_stack(spec)
    oc_block = choose_oc_block(-(-spec.batch // stack), spec.groups, spec.out_per_group, thread_count())
    forward_packed(x, w, b, dest, spec, oc_block, stack)


#: Each name :func:`forward_kernel` gives, and how it computes ``(x, w, b, dest, spec)`` (looked up
#: at the call, so a kernel module's function may be replaced, as tests do).
FORWARDS = {
    "winograd": lambda *a: _winograd.winograd_forward(*a),
    "pointwise": lambda *a: _pointwise.pointwise_forward(*a),
    "im2col": lambda *a: _im2col.im2col_forward(*a),
    "stem": lambda *a: _stem.stem_forward(*a),
    "scale": lambda *a: _scale.scale_forward(*a),
    "depthwise": lambda *a: _depthwise.depthwise_forward(*a),
    "depthwise_lanes": lambda *a: _depthwise_lanes.depthwise_forward(*a),
    "outer": lambda *a: _outer.outer_forward(*a),
    "rowblock": lambda *a: _rowblock.depthwise_forward(*a),
    "grouped": lambda x, w, b, dest, spec: _grouped.grouped_forward(x, w, b, dest, spec, choose_stack(spec)),
    "packed": _packed_forward,
}


def _run_forward(kernel: str, x, w, b, dest, spec) -> None:
    FORWARDS[kernel](x, w, b, dest, spec)


def _contiguous_target(out: np.ndarray, unbatched: bool, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(the caller's output as 4-D, a C-contiguous array the kernel may write)."""
    target = _batched(out, unbatched)
    return target, (target if target.flags.c_contiguous else np.empty(target.shape, dtype))


def _convolution_weight(weight: np.ndarray, spec) -> np.ndarray:
    """The (C_out, C_in/groups, kH, kW) weight of the convolution ``spec`` computes, C-contiguous."""
    return flipped_transposed_weight(weight, spec.groups) if spec.transposed_weight else np.ascontiguousarray(weight)


def conv2d_forward(spec, input: np.ndarray, weight: np.ndarray, bias, out: np.ndarray) -> np.ndarray:
    """Compute the convolution of ``spec`` into ``out`` (NumPy arrays that passed validation):
    ``conv2d``, or ``conv_transpose2d`` / ``grad.conv2d_input`` (``spec.transposed_weight``)."""
    x = np.ascontiguousarray(_batched(input, spec.unbatched))
    b = np.zeros(spec.out_channels, spec.dtype) if bias is None else np.ascontiguousarray(bias)
    target, dest = _contiguous_target(out, spec.unbatched, spec.dtype)
    kernel = forward_kernel(spec)
    if kernel == "outer" and spec.transposed_weight:
        # the kernel packs the weight anyway: flipped and transposed in that pass, not copied first
        _outer.outer_forward(x, np.ascontiguousarray(weight), b, dest, spec, None, True)
    else:
        if kernel == "winograd":
            # the transposed convolution's weight as it is: the kernel's weight transform flips it
            _run_forward(kernel, x, np.ascontiguousarray(weight), b, dest, spec)
            # A tile's transform mixes its pixels (and could overflow where the direct sums do not):
            # a non-finite result is computed again by the direct kernels, whose non-finite outputs
            # are exactly those the sums make. (The check: one parallel pass, no temporary.)
            if _nonfinite.all_finite(dest):
                kernel = None
            else:
                w = _convolution_weight(weight, spec)
                kernel = None if _explain_nonfinite_forward(x, w, b, dest, spec) else direct_forward_kernel(spec)
        if kernel is not None:
            _run_forward(kernel, x, _convolution_weight(weight, spec), b, dest, spec)
    if dest is not target:
        target[...] = dest
    return out


def _explain_nonfinite_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, dest: np.ndarray, spec) -> bool:
    """Makes ``dest``, a Winograd result with non-finite values, exact where the input has many
    non-finite pixels (a diverged step): each result with a non-finite term takes the kind
    ``_nonfinite`` finds (its finite results are the Winograd ones). False (``dest`` to be
    computed again by a direct kernel) where that does not apply (infinities with a non-finite
    weight or bias) or a non-finite result has no non-finite term (an overflow in a tile's
    transform)."""
    kinds = _nonfinite.classify(x)
    if kinds.nonfinite <= DENSE_FIXUP_FRACTION * x.size:
        return False  # a few pixels: their tiles' other outputs need the direct sums anyway
    if kinds.infinite and not (_nonfinite.all_finite(w) and _nonfinite.all_finite(b)):
        return False
    return _nonfinite.apply_kinds(dest, _nonfinite.forward_kinds(kinds, w, spec)) == 0


def conv2d_weight(spec, input: np.ndarray, grad_output: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The weight gradient of ``spec`` into ``out`` (C_out, C_in/groups, kH, kW)."""
    x = np.ascontiguousarray(_batched(input, spec.unbatched))
    gy = np.ascontiguousarray(_batched(grad_output, spec.unbatched))
    dest = out if out.flags.c_contiguous else np.empty(out.shape, spec.dtype)
    narrow = worth_generating(spec) and spec.out_size[1] < _rowblock.MIN_OUT_WIDTH
    if worth_generating(spec) and _winograd_wgrad.applies(spec):
        _winograd_wgrad.winograd_weight_grad(x, gy, dest, spec)
        # a tile's transforms mix its values (and could overflow where the direct sums do not): a
        # non-finite result is computed again by the direct kernels below
        if not _nonfinite.all_finite(dest):
            _exact_nonfinite_weight_grad(spec, x, gy, dest, direct=False)
    elif narrow and _flat.applies_weight_grad(spec):
        # the padding's zeros are the masked lanes: the reference's terms, 0 x inf included
        _flat.flat_weight_grad(x, gy, dest, spec)
    elif narrow and _channels_last.applies_weight_grad(spec):
        # the padding's zeros meet the gradient values as in the reference: no non-finite
        # handling needed
        _channels_last.depthwise_weight_grad(x, gy, dest, spec)
    else:
        _packed_layout_weight_grad(spec, x, gy, dest)
    if dest is not out:
        out[...] = dest
    return out


def _packed_layout_weight_grad(spec, x: np.ndarray, gy: np.ndarray, dest: np.ndarray) -> None:
    """The weight gradient by the kernels on ``_packed``'s layout (``_wgrad``, else the packed one)."""
    # Their dot products also pair input pixels with the zeros of dropped columns and seam rows:
    # 0 * inf would make NaN where the true sum is finite. A non-finite term makes its sum
    # non-finite (inf and NaN are sticky), so a finite result read no non-finite pixel and is
    # exact; only otherwise is the input scanned (a pass over it: 0.9 ms of resnext_g32_s2's
    # 4.1 ms at batch 8, so not done up front).
    _weight_grad_kernel(spec, x, gy, dest)
    if not _nonfinite.all_finite(dest):
        _exact_nonfinite_weight_grad(spec, x, gy, dest, direct=True)


def _exact_nonfinite_weight_grad(spec, x: np.ndarray, gy: np.ndarray, dest: np.ndarray, direct: bool) -> None:
    """Makes ``dest`` exact, a weight gradient with non-finite sums from the kernels on
    ``_packed``'s layout (``direct``) or from Winograd's (whose tiles mix their values)."""
    kinds = _nonfinite.classify(x)
    if not kinds.nonfinite:  # the sums overflowed, or the gradient holds inf / NaN: the direct sums are exact
        if not direct:
            _weight_grad_kernel(spec, x, gy, dest)
        return
    if kinds.nonfinite > DENSE_FIXUP_FRACTION * x.size and (not kinds.infinite or _nonfinite.all_finite(gy)):
        # many non-finite pixels (a diverged step): the kinds of the sums with a non-finite term
        # decide them (a NaN pixel's terms are NaN whatever the gradient); the finite sums of the
        # fast kernel stay
        result_kinds = _nonfinite.weight_grad_kinds(kinds, gy, spec)
        if _nonfinite.apply_kinds(dest, result_kinds) == 0:
            return
        # some sums are non-finite without a non-finite term (zeros of dropped columns met an
        # inf, or an overflow): the finite terms' exact sums, then the kinds again
        _weight_grad_kernel(spec, np.where(kinds.kinds != 0, np.zeros((), x.dtype), x), gy, dest)
        _nonfinite.apply_kinds(dest, result_kinds)
        return
    # a few non-finite pixels: zeroed for the kernel, their own terms added exactly
    _weight_grad_kernel(spec, np.where(kinds.kinds != 0, np.zeros((), x.dtype), x), gy, dest)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf is NaN here as in the sums
        _add_pixel_terms(dest, np.argwhere(kinds.kinds), x, gy, spec)


#: Above this share of non-finite input pixels, the kinds of the results (``_nonfinite``) decide
#: them, rather than a direct kernel (forward) or terms added pixel by pixel (weight gradient):
#: an all-NaN or all-inf input (a diverged step) then costs a pass over it, not another
#: convolution.
DENSE_FIXUP_FRACTION = 0.02


def _weight_grad_kernel(spec, x: np.ndarray, gy: np.ndarray, dest: np.ndarray) -> None:
    if worth_generating(spec) and _outer.applies_weight_grad(spec):
        # output channels in the lanes: 1.0-2.0x ``_wgrad`` where it applies (docs/performance.md)
        _outer.outer_weight_grad(x, gy, dest, spec)
    elif worth_generating(spec) and _wgrad.applies(spec):
        _wgrad.weight_grad(x, gy, dest, spec, choose_weight_stack(spec))
    else:
        oc_block = choose_oc_block(1, spec.groups, spec.out_per_group, thread_count())
        # blocks of whole quads: which channels go four at a time (and so the order of each sum)
        # must not depend on the thread count
        oc_block = min(spec.out_per_group, -(-oc_block // 4) * 4)
        weight_grad_packed(x, gy, dest, spec, oc_block, choose_weight_stack(spec))


def _add_pixel_terms(dw: np.ndarray, pixels: np.ndarray, x: np.ndarray, gy: np.ndarray, spec) -> None:
    """dw[o, c, kh, kw] += gy[n, o, oy, ox] * x[n, ci, iy, ix] for the listed input pixels
    (n, ci, iy, ix) and every (tap, output position) that reads them (a forward spec), each sum
    in the pixels' order."""
    by_group = pixels[np.argsort(pixels[:, 1] // spec.in_per_group, kind="stable")]
    starts = np.searchsorted(by_group[:, 1] // spec.in_per_group, np.arange(spec.groups + 1))
    (sh, sw), (dh, dwl), (kh_n, kw_n), (oh, ow) = spec.stride, spec.dilation, spec.kernel_size, spec.out_size
    pixel_terms(dw, by_group, starts, x, gy, spec.padding[0], spec.padding[2], sh, sw, dh, dwl, kh_n, kw_n, oh, ow)


@njit_parallel_unfused
def pixel_terms(dw, pixels, starts, x, gy, pt, pl, sh, sw, dh, dwl, kh_n, kw_n, oh, ow):
    """One task per output channel, over its group's pixels (``starts[g]:starts[g + 1]``)."""
    cout_g = dw.shape[0] // (starts.shape[0] - 1)
    cin_g = dw.shape[1]
    for o in numba.prange(dw.shape[0]):
        g = o // cout_g
        for p in range(starts[g], starts[g + 1]):
            n, ci, iy, ix = pixels[p, 0], pixels[p, 1], pixels[p, 2], pixels[p, 3]
            v = x[n, ci, iy, ix]
            c = ci - g * cin_g
            for kh in range(kh_n):
                ty = iy + pt - kh * dh
                if ty < 0 or ty % sh != 0 or ty // sh >= oh:
                    continue
                for kw in range(kw_n):
                    tx = ix + pl - kw * dwl
                    if tx < 0 or tx % sw != 0 or tx // sw >= ow:
                        continue
                    dw[o, c, kh, kw] += gy[n, o, ty // sh, tx // sw] * v


def conv2d_bias(spec, grad_output: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The bias gradient (sum over N, H, W per channel) into ``out`` (C,)."""
    gy = np.ascontiguousarray(_batched(grad_output, spec.unbatched))
    dest = out if out.flags.c_contiguous else np.empty(out.shape, spec.dtype)
    bias_grad(gy, dest)
    if dest is not out:
        out[...] = dest
    return out
