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


def module_source(spec) -> str:
    """The generated module for ``spec``."""
    geo, _, _ = _packed.packed_geometry(spec, 1)
    sh, sw, hc, wc = geo[0], geo[1], geo[6], geo[7]
    taps = tuple(int(t) for t in _packed.packed_tables(spec, 1)[2].ravel())
    (oh, ow), cin_g, cout_g = spec.out_size, spec.in_per_group, spec.out_per_group
    lanes = _simd.lanes(spec.dtype)
    pixels, n_vec = choose_block(spec)
    chan = sh * sw * hc * wc
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
    fmt = dict(c_in=spec.in_channels, c_out=spec.out_channels, groups=spec.groups, cin_g=cin_g, cout_g=cout_g,
               oh=oh, ow=ow, n_taps=len(taps), in_plane=spec.in_size[0] * spec.in_size[1], chan=chan,
               n_vblocks=cout_g // (n_vec * lanes), block_channels=n_vec * lanes, w_group=cin_g * len(taps) * cout_g)
    return "\n".join(lines) + "\n" + _DRIVER.format(rows=rows, **fmt)


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
