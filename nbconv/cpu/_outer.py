"""Grouped convolution on the CPU with the output channels in the vector lanes (outer products),
generated per geometry: for groups of a whole number of vectors of output channels (16 float32,
8 float64), such as resnext_g32_14's 16 -> 16.

``_grouped`` puts output *columns* in the lanes: a 14-wide output fills 14 of 16, and its stacked
images add two seam rows per 14 computed, so 23% of its multiply-adds are dropped. Here a lane is
an output channel of the group, so none is: a block of ``P`` output pixels of one row x ``V``
vectors of output channels keeps ``P x V`` vector sums in registers over the group's input channels
and taps, each term one multiply-add of a weight vector (loaded once per tap) with a broadcast
input value (:func:`nbconv.cpu._simd.outer_product_row`, written in LLVM IR: Numba's loops do not
give this code). The block is then transposed in registers and stored as output rows.

A task (image, group) packs the group's input planes once (``_packed``'s layout, by the generated
``_pack_plane``: padding, stride phases and input dilation are all in the tap offsets), then
computes its output rows in blocks of at most one vector of pixels. The weights come rearranged to
(groups, C_in/groups, kH * kW, C_out/groups) so a tap's output channels are one contiguous run.
"""

from __future__ import annotations

import functools

import numba
import numpy as np

from .._version import __version__
from . import _generated, _packed, _simd

#: Vector sums a block keeps in registers (of AVX-512's 32: a weight vector per channel vector
#: and a few broadcast values are live besides).
SUM_BUDGET = 28
#: Most packed input elements per thread (the group's planes of one image), as ``_grouped``.
MAX_SCRATCH_ELEMS = 1 << 18


def applies(spec) -> bool:
    """Output channels per group a whole number of vectors, at most ``_generated.MAX_TAPS`` taps,
    at least one image, the group's packed planes within ``MAX_SCRATCH_ELEMS``."""
    lanes = _simd.lanes(spec.dtype)
    taps = spec.kernel_size[0] * spec.kernel_size[1]
    if spec.batch == 0 or spec.out_per_group % lanes or taps > _generated.MAX_TAPS:
        return False
    return _packed.packed_geometry(spec, 1)[1] <= MAX_SCRATCH_ELEMS


def choose_block(spec) -> tuple[int, int]:
    """(pixels, channel vectors) per block: the output row in as few blocks of at most one vector
    of pixels as it goes, and as many channel vectors as ``SUM_BUDGET`` then leaves."""
    lanes = _simd.lanes(spec.dtype)
    ow = spec.out_size[1]
    pixels = -(-ow // -(-ow // lanes))
    vectors = spec.out_per_group // lanes
    per_block = max(1, min(vectors, SUM_BUDGET // pixels))
    while vectors % per_block:
        per_block -= 1
    return pixels, per_block


def packed_weight(weight: np.ndarray, groups: int) -> np.ndarray:
    """(C_out, C_in/groups, kH, kW) as (groups, C_in/groups, kH * kW, C_out/groups), flat."""
    c_out, cin_g, kh, kw = weight.shape
    w = weight.reshape(groups, c_out // groups, cin_g, kh * kw).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(w).reshape(-1)


_DRIVER = '''

@njit_parallel
def forward(x, wv, b, out, scratch):
    """out (N, {c_out}, {oh}, {ow}) = x (N, {c_in}, H, W) convolved in {groups} groups with the
    weights ``wv`` ({groups}, {cin_g}, {n_taps}, {cout_g}), + b: tasks of (image, group)."""
    n_img = x.shape[0]
    x_flat, out_flat = x.reshape(-1), out.reshape(-1)
    for task in numba.prange(n_img * {groups}):
        xs = scratch[numba.get_thread_id()]
        g = task % {groups}
        n = task // {groups}
        for ci in range({cin_g}):
            _pack_plane(x_flat, (n * {c_in} + g * {cin_g} + ci) * {in_plane}, xs, ci * {chan})
        for vb in range({n_vblocks}):
            c0 = g * {cout_g} + vb * {block_channels}
            w0 = g * {w_group} + vb * {block_channels}
            for oy in range({oh}):
                o0 = ((n * {c_out} + c0) * {oh} + oy) * {ow}
{rows}
'''


def _packed_layout(spec) -> tuple[tuple[int, ...], int, int]:
    """(tap offsets, row pitch, elements per input channel) of one image's packed planes."""
    geo, _, _ = _packed.packed_geometry(spec, 1)
    sh, sw, hc, wc = geo[0], geo[1], geo[6], geo[7]
    return tuple(int(t) for t in _packed.packed_tables(spec, 1)[2].ravel()), wc, sh * sw * hc * wc


def _sizes(spec, taps) -> dict:
    """The sizes both generated drivers format in."""
    return dict(c_in=spec.in_channels, c_out=spec.out_channels, groups=spec.groups, cin_g=spec.in_per_group,
                cout_g=spec.out_per_group, oh=spec.out_size[0], ow=spec.out_size[1], n_taps=len(taps),
                in_plane=spec.in_size[0] * spec.in_size[1])


def module_source(spec) -> str:
    """The generated module for ``spec``."""
    taps, wc, chan = _packed_layout(spec)
    (oh, ow), cin_g, cout_g = spec.out_size, spec.in_per_group, spec.out_per_group
    lanes = _simd.lanes(spec.dtype)
    pixels, n_vec = choose_block(spec)
    blocks = [(p0, min(pixels, ow - p0)) for p0 in range(0, ow, pixels)]
    widths = sorted({w for _, w in blocks})
    what = (f"grouped conv, output channels in lanes, {cin_g} -> {cout_g} channels per group, taps {taps}, "
            f"packed pitch {wc}, blocks of {pixels} pixels x {n_vec} channel vectors")
    lines = [_generated.HEADER.format(generator=__name__, version=__version__, what=what),
             "from nbconv.cpu._simd import outer_product_row", "", _generated.pack_source(spec, 1)]
    lines += [f"_row{w} = outer_product_row({cin_g}, {chan}, {taps}, {w}, {n_vec}, {len(taps) * cout_g}, "
              f"{cout_g}, {oh * ow})" for w in widths]
    rows = "\n".join(f"                _row{w}(xs, oy * {wc} + {p0}, wv, w0, b, c0, out_flat, o0 + {p0})"
                     for p0, w in blocks)
    return "\n".join(lines) + "\n" + _DRIVER.format(
        rows=rows, chan=chan, n_vblocks=cout_g // (n_vec * lanes), block_channels=n_vec * lanes,
        w_group=cin_g * len(taps) * cout_g, **_sizes(spec, taps))


@functools.lru_cache(maxsize=128)
def _module(spec):
    return _generated.load(module_source(spec), "nbconv_outer")


def outer_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, out: np.ndarray, spec) -> None:
    """``out`` = the convolution of ``spec`` (C-contiguous arrays, ``w`` in
    (C_out, C_in/groups, kH, kW); any stride, dilation or input dilation of the packed layout)."""
    threads = numba.get_num_threads()
    _, scratch_elems, _ = _packed.packed_geometry(spec, 1)
    scratch = np.zeros((threads, scratch_elems), x.dtype)
    _module(spec).forward(x, packed_weight(w, spec.groups), b, out, scratch)


# --- the weight gradient -------------------------------------------------------------------


def applies_weight_grad(spec) -> bool:
    """As :func:`applies`, with every tap of one channel vector's sums in registers
    (``SUM_BUDGET`` taps at most: 5x5 kernels, not 7x7), and two or more input channels per
    group: with one (a channel multiplier), the channels-last copy of the gradient is as much
    work as the sums, and ``_wgrad`` was faster (``python docs/outer.py``: dw_mult16_28)."""
    taps = spec.kernel_size[0] * spec.kernel_size[1]
    return applies(spec) and taps <= SUM_BUDGET and spec.in_per_group > 1


def _largest_divisor(n: int, limit: int) -> int:
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


def weight_grad_block(spec) -> tuple[int, int]:
    """(input channels, output channel vectors) per block of sums: every tap of both, within
    ``SUM_BUDGET`` sums, each a divisor of its count (no remainder blocks)."""
    taps = spec.kernel_size[0] * spec.kernel_size[1]
    n_vec = _largest_divisor(spec.out_per_group // _simd.lanes(spec.dtype), SUM_BUDGET // taps)
    return _largest_divisor(spec.in_per_group, SUM_BUDGET // (taps * n_vec)), n_vec


def weight_grad_slices(spec, threads: int) -> int:
    """Slices of a group's input channels (each a task over all images): 1 unless there are too
    few groups to give every thread 4 tasks."""
    blocks = spec.in_per_group // weight_grad_block(spec)[0]
    return max(1, min(blocks, -(-4 * threads // spec.groups)))


def _gather_grad_source(spec) -> list[str]:
    """``gt[(oy * Wc + ox) * C_out/groups + o] = gy_flat[s0 + o * OH * OW + oy * OW + ox]``: one
    image's output gradient of a group, channels last, in the packed input's pitch (the columns
    past the output width are never written: zeros). Tiles of one vector of channels x one vector
    of consecutive pixels are transposed in registers (``_simd.transpose_tile``) into ``tl``, whose
    rows then go to their pixels; the pixels past the last whole tile go one by one."""
    lanes = _simd.lanes(spec.dtype)
    (oh, ow), cout_g = spec.out_size, spec.out_per_group
    wc = _packed_layout(spec)[1]
    ohw = oh * ow
    whole = ohw // lanes * lanes
    return ["", "", "@njit_serial", "def _gather_grad(gy_flat, s0, gt, tl):",
            f"    for ob in range({cout_g // lanes}):",
            f"        src = s0 + ob * {lanes * ohw}",
            f"        for p0 in range(0, {whole}, {lanes}):",
            f"            transpose_tile(gy_flat, src + p0, {ohw}, tl, 0, {lanes})",
            f"            for p in range({lanes}):",
            f"                oy, ox = divmod(p0 + p, {ow})",
            f"                d = (oy * {wc} + ox) * {cout_g} + ob * {lanes}",
            f"                for o in range({lanes}):",
            f"                    gt[_U(d + o)] = tl[p * {lanes} + o]",
            f"        for pix in range({whole}, {ohw}):",
            f"            oy, ox = divmod(pix, {ow})",
            f"            d = (oy * {wc} + ox) * {cout_g} + ob * {lanes}",
            f"            for o in range({lanes}):",
            f"                gt[_U(d + o)] = gy_flat[_U(src + o * {ohw} + pix)]"]


_WGRAD_DRIVER = '''

@njit_parallel
def weight_grad(x, gy, dw, scratch, g_buf, t_buf, tiles, cps):
    """dw ({c_out}, {cin_g}, kH, kW) = the weight gradient of x (N, {c_in}, H, W) and gy
    (N, {c_out}, {oh}, {ow}) in {groups} groups: tasks of (group, slice of ``cps`` of its input
    channels), each over all images in order; float64 totals."""
    n_img = x.shape[0]
    x_flat, gy_flat, dw_flat = x.reshape(-1), gy.reshape(-1), dw.reshape(-1)
    slices = ({cin_g} + cps - 1) // cps
    for task in numba.prange({groups} * slices):
        tid = numba.get_thread_id()
        xs = scratch[tid]
        gt = g_buf[tid]
        tot = t_buf[tid]
        tl = tiles[tid]
        g = task // slices
        c_lo = (task % slices) * cps
        c_hi = min(c_lo + cps, {cin_g})
        tot[:] = 0.0
        for n in range(n_img):
            for c in range(c_lo, c_hi):
                _pack_plane(x_flat, (n * {c_in} + g * {cin_g} + c) * {in_plane}, xs, (c - c_lo) * {chan})
            _gather_grad(gy_flat, (n * {c_out} + g * {cout_g}) * {ohw}, gt, tl)
            for c in range(c_lo, c_hi, {n_c}):
                for vb in range({n_vblocks}):
                    _sums(gt, vb * {block_channels}, xs, (c - c_lo) * {chan}, {n_q}, tot,
                          (c - c_lo) * {tot_c} + vb * {block_channels})
        for c in range(c_lo, c_hi):
            for t in range({n_taps}):
                for o in range({cout_g}):
                    total = tot[(c - c_lo) * {tot_c} + t * {cout_g} + o]
                    dw_flat[((g * {cout_g} + o) * {cin_g} + c) * {n_taps} + t] = total
'''


def weight_grad_source(spec) -> str:
    """The generated weight-gradient module for ``spec`` (a forward spec)."""
    taps, wc, chan = _packed_layout(spec)
    (oh, ow), cin_g, cout_g = spec.out_size, spec.in_per_group, spec.out_per_group
    lanes = _simd.lanes(spec.dtype)
    n_c, n_vec = weight_grad_block(spec)
    what = (f"grouped conv weight gradient, output channels in lanes, {cin_g} -> {cout_g} channels per group, "
            f"taps {taps}, packed pitch {wc}, blocks of {n_c} input channels x {n_vec} channel vectors")
    lines = [_generated.HEADER.format(generator=__name__, version=__version__, what=what),
             "from nbconv.cpu._simd import outer_product_sums, transpose_tile", "", _generated.pack_source(spec, 1)]
    lines += _gather_grad_source(spec)
    lines += ["", f"_sums = outer_product_sums({n_c}, {chan}, {taps}, {n_vec}, {cout_g}, {len(taps) * cout_g})"]
    return "\n".join(lines) + "\n" + _WGRAD_DRIVER.format(
        ohw=oh * ow, chan=chan, n_c=n_c, n_vblocks=cout_g // (n_vec * lanes), block_channels=n_vec * lanes,
        n_q=(oh - 1) * wc + ow, tot_c=len(taps) * cout_g, **_sizes(spec, taps))


@functools.lru_cache(maxsize=128)
def _weight_grad_module(spec):
    return _generated.load(weight_grad_source(spec), "nbconv_outer_wgrad")


def outer_weight_grad(x: np.ndarray, gy: np.ndarray, dw: np.ndarray, spec, slices: int | None = None) -> None:
    """``dw`` = the weight gradient of the convolution ``spec`` (C-contiguous arrays; ``x`` with
    finite values: the sums also pair pixels with the zeros past the output width), each group's
    input channels in ``slices`` tasks (default :func:`weight_grad_slices`). Every weight is
    summed by one task, over the images in order: bit-identical whatever the thread count."""
    threads = numba.get_num_threads()
    slices = weight_grad_slices(spec, threads) if slices is None else slices
    n_c = weight_grad_block(spec)[0]
    cps = -(-(-(-spec.in_per_group // slices)) // n_c) * n_c
    geo, scratch_elems, _ = _packed.packed_geometry(spec, 1)
    lanes = _simd.lanes(spec.dtype)
    taps = spec.kernel_size[0] * spec.kernel_size[1]
    scratch = np.zeros((threads, scratch_elems), x.dtype)
    g_buf = np.zeros((threads, spec.out_size[0] * geo[7] * spec.out_per_group), x.dtype)
    t_buf = np.empty((threads, cps * taps * spec.out_per_group), np.float64)
    tiles = np.empty((threads, lanes * lanes), x.dtype)
    _weight_grad_module(spec).weight_grad(x, gy, dw, scratch, g_buf, t_buf, tiles, cps)
