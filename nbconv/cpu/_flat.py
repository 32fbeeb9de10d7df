"""The depthwise weight gradient on the CPU with each plane kept flat: its pixels in the vector
lanes, whatever the width (mbv2_dw_7's 7 x 7 planes, effnet_dw5_14's 14 x 14).

``dW[o, 0, kh, kw] = sum over images and output pixels p of gy[n, o, p] * x_pad[n, c, p + tap]``
(``c = o // multiplier``). At stride 1 with the output as large as the input ('same' padding:
``oh == H``, ``ow == W``) tap ``(kh, kw)`` reads flat pixel ``p + (kh * dH - pt) * W + kw * dW - pl``
of the unpadded plane wherever it reads an input pixel; the pixels where it reads padding
instead (a row above or below, or a column that wraps to the next row) are known when the code is
generated. So a plane is ``ceil(H * W / lanes)`` vectors; each tap's term is one fused
multiply-add of a gradient vector with a vector of inputs read under the tap's mask
(``_simd.flat_plane_sums``): no transposes, no padded copy, every lane but the last vector's tail
used. The masked-off lanes are zeros that meet the gradient as the padding's zeros do (0 x inf
is NaN there, as in the reference).

A task is a block of ``BLOCK`` output channels over every image in order (an image's planes of
the block read one after the other). A channel's tap sums are kept per lane in the
input dtype over chunks of images (at most ``MAX_CHAIN`` terms per lane), each chunk then added
to float64 lane totals, whose lanes are added in pairs at the end: a fixed order, so results
are bit-identical run after run and whatever the thread count.
"""

from __future__ import annotations

import functools

import numpy as np

from .._version import __version__
from . import _generated, _scratch, _simd
from ._threads import thread_count
from ._valid import flat_tap_offsets

#: Most vectors of pixels per plane (the code is unrolled over them and the taps): 16 x 16 planes
#: of float32.
MAX_VECTORS = 16
#: Most taps: each tap's inputs are a vector load of their own (unaligned: two cache lines), which
#: the channels-last kernel shares between the taps of a kernel row. ``python
#: docs/padding_terms.py`` (batch 8, 2 threads, three runs), time here / there: 3x3 on 7x7
#: (mbv2_dw_7) 0.79-0.85, on 14x14 (576 channels) 0.84-0.88, float64 on 7x7 0.27-0.34; but 5x5 on
#: 14x14 (effnet_dw5_14) 0.53-1.29 from one process to the next, on 7x7 (1152 channels) 0.94-1.24.
MAX_TAPS = 9
#: Most terms one lane's sum in the input dtype takes before it is added to the float64 totals.
MAX_CHAIN = 64
#: Output channels per task: an image's planes of a block are read one after the other.
BLOCK = 16


def _vectors(spec) -> int:
    """Vectors of pixels per input plane."""
    return -(-spec.in_size[0] * spec.in_size[1] // _simd.lanes(spec.dtype))


def applies_weight_grad(spec) -> bool:
    """Depthwise (one input channel per group, any multiplier), stride 1, output planes the size
    of the input planes, within ``MAX_VECTORS`` and ``MAX_TAPS``."""
    return (spec.batch > 0 and spec.in_per_group == 1 and spec.stride == (1, 1) and spec.lhs_dilation == (1, 1)
            and spec.out_size == spec.in_size and _vectors(spec) <= MAX_VECTORS
            and spec.kernel_size[0] * spec.kernel_size[1] <= MAX_TAPS)


def tap_masks(spec) -> tuple[tuple[int, ...], tuple[tuple[bool, ...], ...]]:
    """(flat offset of each tap, for each tap and output pixel whether it reads an input pixel)."""
    (h, w), (kh_n, kw_n), (dh, dw) = spec.in_size, spec.kernel_size, spec.dilation
    pt, pl = spec.padding[0], spec.padding[2]
    valid = tuple(tuple(0 <= y + kh * dh - pt < h and 0 <= x + kw * dw - pl < w for y in range(h) for x in range(w))
                  for kh in range(kh_n) for kw in range(kw_n))
    return flat_tap_offsets(spec), valid


def images_per_chunk(spec) -> int:
    """Images whose sums are kept in the input dtype before the float64 totals take them."""
    return max(1, MAX_CHAIN // _vectors(spec))


_DRIVER = '''

@njit_parallel
def weight_grad(x, gy, dw, acc_all, tot_all):
    """dw ({c_out}, 1, kH, kW) = the weight gradient of x (N, {c_in}, {h}, {w}) and gy (N, {c_out},
    {h}, {w}): a task per block of {block} output channels, over the images in order (each image's
    planes of the block one after the other); float64 totals."""
    n_img = x.shape[0]
    x_flat, g_flat, dw_flat = x.reshape(-1), gy.reshape(-1), dw.reshape(-1)
    for task in numba.prange({n_blocks}):
        tid = numba.get_thread_id()
        acc = acc_all[tid]
        tot = tot_all[tid]
        o0 = task * {block}
        o1 = min(o0 + {block}, {c_out})
        tot[:] = 0.0
        for n0 in range(0, n_img, {chunk}):
            acc[:] = 0.0
            for n in range(n0, min(n0 + {chunk}, n_img)):
                for o in range(o0, o1):
                    _sums(g_flat, (n * {c_out} + o) * {plane}, x_flat, (n * {c_in} + o // {mult}) * {plane}, acc,
                          (o - o0) * {taps_lanes})
            for i in range((o1 - o0) * {taps_lanes}):
                tot[i] += acc[i]
        for o in range(o0, o1):
            for t in range({taps}):
                b = ((o - o0) * {taps} + t) * {lanes}
                dw_flat[o * {taps} + t] = {lane_tree}
'''


def weight_grad_source(spec) -> str:
    """The generated module for the forward ``spec``."""
    offsets, valid = tap_masks(spec)
    (h, w), lanes = spec.in_size, _simd.lanes(spec.dtype)
    what = (f"depthwise weight gradient on flat planes, {h}x{w}, kernel {spec.kernel_size}, dilation {spec.dilation}, "
            f"padding {spec.padding}, {lanes} pixels per vector")
    return (_generated.HEADER.format(generator=__name__, version=__version__, what=what)
            + "from nbconv.cpu._simd import flat_plane_sums\n\n"
            + f"_sums = flat_plane_sums({h * w}, {offsets}, {valid})\n"
            + _DRIVER.format(c_in=spec.in_channels, c_out=spec.out_channels, h=h, w=w, plane=h * w,
                             mult=spec.out_per_group, chunk=images_per_chunk(spec), taps=len(offsets),
                             block=BLOCK, n_blocks=-(-spec.out_channels // BLOCK),
                             lanes=lanes, taps_lanes=len(offsets) * lanes, lane_tree=_pairwise_sum("tot", "b", lanes)))


def _pairwise_sum(array: str, base: str, count: int) -> str:
    """``array[base + 0] + ... + array[base + count - 1]`` added in pairs, then pairs of pairs
    (a fixed order of ``log2(count)`` steps, not a chain of ``count``)."""
    terms = [f"{array}[{base} + {i}]" for i in range(count)]
    while len(terms) > 1:
        terms = [f"({a} + {b})" for a, b in zip(terms[::2], terms[1::2])] + (terms[-1:] if len(terms) % 2 else [])
    return terms[0]


@functools.lru_cache(maxsize=128)
def _module(spec):
    return _generated.load(weight_grad_source(spec), "nbconv_flat_wgrad")


def flat_weight_grad(x: np.ndarray, gy: np.ndarray, dw: np.ndarray, spec) -> None:
    """``dw`` (C_out, 1, kH, kW) = the weight gradient of the depthwise convolution ``spec``
    (C-contiguous arrays; where :func:`applies_weight_grad`)."""
    threads = thread_count()
    n = BLOCK * spec.kernel_size[0] * spec.kernel_size[1] * _simd.lanes(spec.dtype)
    acc, tot = _scratch.reused(("flat_wgrad", n, x.dtype.str, threads),
                               lambda: (np.empty((threads, n), x.dtype), np.empty((threads, n), np.float64)))
    _module(spec).weight_grad(x, gy, dw, acc, tot)
