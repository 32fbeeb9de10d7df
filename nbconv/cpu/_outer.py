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
import math

import numba
import numpy as np

from .._divisors import largest_divisor
from .._numba_options import njit_parallel, njit_serial
from .._version import __version__
from . import _generated, _packed, _scratch, _simd
from ._simd import transpose_tile, transpose_tile_of_groups
from ._target import target
from ._threads import thread_count
from ._valid import flat_tap_offsets, reads_padding, valid_intervals, valid_tap_regions

#: Vector sums a block keeps in registers (of AVX-512's 32: a weight vector per channel vector
#: and a few broadcast values are live besides).
SUM_BUDGET = 28
#: Most packed input elements per thread (the group's planes of one image), as ``_grouped``.
MAX_SCRATCH_ELEMS = 1 << 18


#: Output channels per group that share a vector with other groups' (``pack`` groups of
#: ``lanes / pack`` outputs each, their inputs interleaved): resnext's 4 -> 4 and 8 -> 8 float32
#: groups, 1.2-2.8x ``_grouped`` (which puts columns in the lanes); not 2 (dw_mult2: ``_rowblock``
#: is 1.45x this); ``python docs/outer.py``.
PACKED_OUT_PER_GROUP = (4, 8)
#: Most idle groups in the packed vectors of a layer whose group count is not a multiple of the
#: groups per vector, as a share of all: the last vector computes idle groups (zero weights, no
#: stores). RegNetY's 13 and 55 groups of 8 (1/14 and 1/56 idle): ``_grouped`` took 1.65x and
#: 2.24x this kernel's time at batch 8 on an Intel Xeon (``python docs/outer.py --shapes
#: regnety_g13_28,regnety_g55_7``).
MAX_IDLE_SHARE = 1 / 8


@functools.lru_cache(maxsize=1024)
def group_pack(spec) -> int:
    """Groups per vector of output channels: 1 when a group's outputs are whole vectors; for
    ``PACKED_OUT_PER_GROUP`` outputs per group, as many groups as fill a vector; 0 for none.
    At strides other than 1 only pairs: the packing's four input pixels per output
    are copied into the interleaved planes with vector shuffles, and pairs of groups then beat
    ``_grouped`` on an Intel Xeon (resnext_g32_s2, RegNetY's stride-2 layers), fours do not
    (``python docs/outer.py``; when the packing was element by element, not even pairs did). On
    AMD Zen 4 pairs at stride 2 took 1.2-2x ``_grouped``'s time with the packing's masked stores
    (round 36 of ``docs/performance.md``); the planes are now interleaved in one pass
    (``_simd.interleave_run``), 0.89x the time, not yet compared with ``_grouped`` there again
    (on Zen 3 this kernel then won at stride 2 too, where :func:`prefers` takes it). A group
    count that is not a multiple of the pack leaves idle groups in the last vector, at most
    ``MAX_IDLE_SHARE`` of them."""
    lanes = _simd.lanes(spec.dtype)
    cout_g = spec.out_per_group
    if cout_g % lanes == 0:
        return 1
    if cout_g in PACKED_OUT_PER_GROUP and lanes % cout_g == 0 and (spec.stride == (1, 1) or lanes == 2 * cout_g):
        pack = lanes // cout_g
        if idle_groups(spec.groups, pack) <= MAX_IDLE_SHARE * (spec.groups + idle_groups(spec.groups, pack)):
            return pack
    return 0


def applies(spec) -> bool:
    """Output channels per group a whole number of vectors (or a fraction, see
    :func:`group_pack`), at most ``_generated.MAX_TAPS`` taps, at least one image, the packed
    planes of a task within ``MAX_SCRATCH_ELEMS``."""
    taps = spec.kernel_size[0] * spec.kernel_size[1]
    pack = group_pack(spec)
    if spec.batch == 0 or not pack or taps > _generated.MAX_TAPS:
        return False
    return _packed.packed_geometry(spec, 1).scratch_elems * pack <= MAX_SCRATCH_ELEMS


#: Narrowest output row at which, on a target of 16 vector registers (AVX2), groups that share a
#: vector may go to ``_grouped`` at a stride (:func:`prefers`).
MIN_GROUPED_WIDTH = 14
#: At a stride, on AVX2, the most bytes of packed input planes per task (a pack of groups' planes
#: of one image) with which groups sharing a vector stay with this kernel (:func:`prefers`): half
#: of a Zen 3 core's 512 KiB of L2. RegNetY's 48 -> 48 g6 s2 on 112 x 112 inputs packs 833 KB.
MAX_STRIDED_PLANE_BYTES = 1 << 18


def prefers(spec) -> bool:
    """Whether this kernel is the one to take where it :func:`applies`: everywhere on a target of
    32 vector registers (AVX-512: pairs of groups 1.3x ``_grouped`` and more on an Intel Xeon,
    round 17 of ``docs/performance.md``), and for a transposed convolution's input dilation (its
    zeros skipped: ``_grouped`` 2.2-2.5x the time).

    On 16 (AVX2), groups that share a vector (:func:`group_pack` > 1: 4 or 8 float32 outputs per
    group) at stride 1, and at a stride where no group of the last vector is idle and a task's
    packed planes take at most ``MAX_STRIDED_PLANE_BYTES``; else, on output rows of
    ``MIN_GROUPED_WIDTH`` and more, ``_grouped`` (columns in the lanes, a block's weights in
    registers). Measured on a 2-core AMD Zen 3 with the packing in one pass
    (``_simd.interleave_run``), batch 8 and 2 (``python docs/outer.py --batch 8|2``, round 37 of
    ``docs/performance.md``): ``_grouped`` took 1.14-1.55x this kernel's time on every packed
    shape at stride 1 (ResNeXt-50's fours on 56 x 56, RegNetY's g13 and g26), 1.11-1.24x on
    resnext_g32_s2, 0.80-0.98x on RegNetY's 104 -> 104 g13 s2 (an idle group) and 0.71-1.15x on
    its 48 -> 48 g6 s2 on 112 x 112 inputs (833 KB of packed planes a task). Before the one-pass
    packing (masked stores, slow on AMD's cores) ``_grouped`` had won on all rows of 14 and more.
    Whole vectors per group (16 outputs) keep this kernel: 1.17-1.50x ``_grouped`` there."""
    if target().vector_registers >= 32 or spec.lhs_dilation != (1, 1):
        return True
    pack = group_pack(spec)
    if pack <= 1 or spec.out_size[1] < MIN_GROUPED_WIDTH or spec.stride == (1, 1):
        return True
    planes = _packed.packed_geometry(spec, 1).scratch_elems * pack * spec.dtype.itemsize
    return idle_groups(spec.groups, pack) == 0 and planes <= MAX_STRIDED_PLANE_BYTES


def block_sums() -> int:
    """Sums (of ``_simd.lanes`` elements each) a forward block keeps in registers on the compile
    target: ``SUM_BUDGET`` with AVX-512's 32 registers of 512 bits; on AVX2's 16 of 256 bits, where
    each sum takes two, 6 (12 registers, 4 left for the weights and broadcasts). The blocks sized
    for AVX-512 spilled there: resnext_g32_14 ran at 0.51x PyTorch on a 2-core Zen 3."""
    t = target()
    return max(1, min(SUM_BUDGET, (t.vector_registers - 4) * t.vector_bits // (8 * _simd.VECTOR_BYTES)))


def choose_block(spec) -> tuple[int, int]:
    """(pixels, channel vectors) per block: the output row in as few blocks of at most one vector
    of pixels (and at most :func:`block_sums`) as it goes, and as many channel vectors as the
    sums then leave."""
    lanes = _simd.lanes(spec.dtype)
    budget = block_sums()
    ow = spec.out_size[1]
    pixels = -(-ow // -(-ow // min(lanes, budget)))
    vectors = max(1, spec.out_per_group * group_pack(spec) // lanes)
    per_block = max(1, min(vectors, budget // pixels))
    while vectors % per_block:
        per_block -= 1
    return pixels, per_block


def packed_weight(weight: np.ndarray, groups: int, pack: int = 1, out: np.ndarray | None = None) -> np.ndarray:
    """(C_out, C_in/groups, kH, kW) as (ceil(groups / pack), C_in/groups, kH * kW, C_out/groups,
    pack), flat (into ``out`` if given): a tap's output channels of ``pack`` groups are one
    contiguous run, lane ``o * pack + j`` group ``j``'s channel ``o``; the :func:`idle_groups`
    groups past the last have zero weights. Compiled (:func:`_interleave_weights`): in a one-off
    timing on an Intel Xeon (script not kept), NumPy's strided copy took 0.16 ms of resnext's
    1024-channel 3x3 g32 layer (0.46 ms at batch 2), the tiles 0.04."""
    c_out, cin_g, kh, kw = weight.shape
    cout_g = c_out // groups
    if out is None:
        out = np.empty(-(-groups // pack) * pack * cout_g * cin_g * kh * kw, weight.dtype)
    _interleave_weights(np.ascontiguousarray(weight).reshape(-1), groups, cout_g, cin_g * kh * kw, pack,
                        _simd.lanes(weight.dtype), out)
    return out


def packed_finite_weight(weight: np.ndarray, groups: int, pack: int, out: np.ndarray,
                         transposed: bool = False) -> bool:
    """:func:`packed_weight` into ``out`` (``weight`` C-contiguous), a pack of groups per parallel
    task, and whether every weight is finite, read in the same pass (on an Intel Xeon, 2 threads,
    one-off: resnext's 1024-channel g32 layer, 1.2 MB of weights, took 113 us serially plus 34 for
    a separate finiteness pass, at batch 2 a third of its call). ``transposed``: ``weight`` is a
    transposed convolution's (C_in, C_out/groups, kH, kW), packed as the weight of the equivalent
    convolution (``_launch.flipped_transposed_weight``: per group, channels swapped and taps
    flipped) without that copy first (:func:`_interleave_transposed_finite`)."""
    if transposed:
        c_in, cout_g, kh, kw = weight.shape
        return bool(_interleave_transposed_finite(weight.reshape(-1), groups, cout_g, c_in // groups, kh * kw, pack,
                                                  out))
    c_out, cin_g, kh, kw = weight.shape
    return bool(_interleave_weights_finite(weight.reshape(-1), groups, c_out // groups, cin_g * kh * kw, pack,
                                           _simd.lanes(weight.dtype), out))


@njit_parallel
def _interleave_transposed_finite(w, groups, cout_g, cin_g, taps, pack, out):
    """:func:`_interleave_weights_finite` of the convolution weight equivalent to the transposed
    convolution weight ``w`` ((groups x cin_g, cout_g, taps), flat): lane ``o * pack + j`` of tap
    ``t`` of input channel ``c`` in pack ``gp`` is ``w[g * cin_g + c, o, taps - 1 - t]``, ``g = gp *
    pack + j`` (zero for the idle groups), each output row written in order. A pack per task;
    whether every weight is finite."""
    k_n = cin_g * taps
    per_group = cin_g * cout_g * taps
    bad = 0
    for gp in numba.prange((groups + pack - 1) // pack):
        for j in range(pack):
            g = gp * pack + j
            for c in range(cin_g):
                for t in range(taps):
                    dst = (gp * k_n + c * taps + t) * cout_g * pack + j
                    src = (g * cin_g + c) * cout_g * taps + taps - 1 - t
                    if g < groups:
                        for o in range(cout_g):
                            out[dst + o * pack] = w[src + o * taps]
                    else:
                        for o in range(cout_g):
                            out[dst + o * pack] = 0
        bad += _nonfinite_count(w[gp * pack * per_group:min(groups, gp * pack + pack) * per_group])
    return bad == 0


_tile_pairs, _tile_fours = transpose_tile_of_groups(2), transpose_tile_of_groups(4)


@njit_serial
def _whole_tile_packs(groups, cout_g, k_n, pack, lanes):
    """The packs of groups whose weights :func:`_interleave_pack` moves by register tiles: where a
    row holds a tile and the groups fill whole vectors (as :func:`group_pack` packs them), every
    pack but one with idle groups."""
    tiles = k_n >= lanes and (cout_g * pack == lanes or (pack == 1 and cout_g % lanes == 0))
    return groups // pack if tiles else 0


@njit_serial
def _interleave_pack(w, gp, tiled, groups, cout_g, k_n, pack, lanes, out):
    """Pack ``gp``'s part of :func:`packed_weight`: each vector of groups' (lanes, k_n) rows
    transposed by tiles of lanes x lanes in registers (the last tile of a row moved back to end at
    its end; the rows of packed groups taken interleaved) where ``tiled``, element by element
    otherwise (zeros for idle groups)."""
    if tiled:
        for o0 in range(0, cout_g * pack, lanes):
            s0 = (gp * pack * cout_g + o0) * k_n
            d0 = gp * pack * cout_g * k_n + o0
            for k0 in range(0, k_n, lanes):
                k = min(k0, k_n - lanes)
                if pack == 1:
                    transpose_tile(w, s0 + k, k_n, out, d0 + k * cout_g, cout_g)
                elif pack == 2:
                    _tile_pairs(w, s0 + k, k_n, out, d0 + k * cout_g * 2, cout_g * 2)
                else:
                    _tile_fours(w, s0 + k, k_n, out, d0 + k * cout_g * 4, cout_g * 4)
        return
    for j in range(pack):
        g = gp * pack + j
        for o in range(cout_g):
            for k in range(k_n):
                out[(gp * k_n + k) * cout_g * pack + o * pack + j] = w[(g * cout_g + o) * k_n + k] if g < groups else 0


@njit_serial
def _interleave_weights(w, groups, cout_g, k_n, pack, lanes, out):
    """:func:`packed_weight` of ``w`` (groups x cout_g rows of ``k_n`` = C_in/groups x taps) into
    ``out``, pack after pack (:func:`_interleave_pack`)."""
    full = _whole_tile_packs(groups, cout_g, k_n, pack, lanes)
    for gp in range((groups + pack - 1) // pack):
        _interleave_pack(w, gp, gp < full, groups, cout_g, k_n, pack, lanes, out)


@njit_parallel
def _interleave_weights_finite(w, groups, cout_g, k_n, pack, lanes, out):
    """:func:`_interleave_weights` a pack per task, each then counting its groups' non-finite
    weights while they are in cache; whether there is none."""
    full = _whole_tile_packs(groups, cout_g, k_n, pack, lanes)
    bad = 0
    for gp in numba.prange((groups + pack - 1) // pack):
        _interleave_pack(w, gp, gp < full, groups, cout_g, k_n, pack, lanes, out)
        bad += _nonfinite_count(w[gp * pack * cout_g * k_n:min(groups, gp * pack + pack) * cout_g * k_n])
    return bad == 0


@njit_serial
def _nonfinite_count(a):
    """The non-finite elements of ``a``: a loop over the whole array, which LLVM vectorises (over
    ``range(start, stop)`` of a larger one the index may be negative to Numba, and it did not)."""
    bad = 0
    for i in range(a.size):
        bad += not np.isfinite(a[i])
    return bad


def packed_bias(bias: np.ndarray, groups: int, pack: int, out: np.ndarray | None = None) -> np.ndarray:
    """The bias in the lane order of :func:`packed_weight` (zeros for the idle groups), into
    ``out`` if given."""
    if out is None:
        out = np.empty(-(-groups // pack) * pack * (bias.size // groups), bias.dtype)
    _interleave_weights(np.ascontiguousarray(bias), groups, bias.size // groups, 1, pack, _simd.lanes(bias.dtype), out)
    return out


def idle_groups(groups: int, pack: int) -> int:
    """Groups the last packed vector computes and drops: ``groups`` rounded up to a multiple of
    ``pack``, less ``groups``."""
    return -groups % pack


def tap_phases(spec) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """(for each output row phase, the kernel rows; for each column phase, the kernel columns)
    that read input pixels, not the zeros an input dilation puts between them (a transposed
    convolution's stride): output row ``oy`` is in phase ``oy % len(rows)``. Without input
    dilation, one phase of every row and column."""
    (sh, sw), (dh, dw), (lh, lw) = spec.stride, spec.dilation, spec.lhs_dilation
    (kh_n, kw_n), pt, pl = spec.kernel_size, spec.padding[0], spec.padding[2]

    def phases(s, d, lhs, pad, k_n):
        period = lhs // math.gcd(s, lhs)
        return [tuple(k for k in range(k_n) if (o * s + k * d - pad) % lhs == 0) for o in range(period)]

    return phases(sh, dh, lh, pt, kh_n), phases(sw, dw, lw, pl, kw_n)


_DRIVER = '''

@njit_parallel
def forward(x, wv, b, out, scratch):
    """out (N, {c_out}, {oh}, {ow}) = x (N, {c_in}, H, W) convolved in {groups} groups with the
    weights ``wv`` ({n_packs}, {cin_g}, {n_taps}, {cout_g} x {pack}), + b (in the weights' lane
    order): tasks of (image, {pack} group(s))."""
    n_img = x.shape[0]
    x_flat, out_flat = x.reshape(-1), out.reshape(-1)
    for task in numba.prange(n_img * {n_packs}):
        xs = scratch[numba.get_thread_id()]
        n = task % n_img
        gp = task // n_img
        {pack_planes}
        for vb in range({n_vblocks}):
            c0 = gp * {pack_channels} + vb * {block_channels}
            w0 = gp * {w_group} + vb * {block_channels}
            {rows}
'''


def _packed_layout(spec) -> tuple[tuple[int, ...], int, int]:
    """(tap offsets, row pitch, elements per input channel) of one image's packed planes."""
    geo = _packed.packed_geometry(spec, 1).geometry
    return tuple(int(t) for t in _packed.packed_tables(spec, 1)[2].ravel()), geo.wc, geo.channel_elems


def _sizes(spec, taps) -> dict:
    """The sizes both generated drivers format in."""
    return dict(c_in=spec.in_channels, c_out=spec.out_channels, groups=spec.groups, cin_g=spec.in_per_group,
                cout_g=spec.out_per_group, oh=spec.out_size[0], ow=spec.out_size[1], n_taps=len(taps),
                in_plane=spec.in_size[0] * spec.in_size[1])


def _row_lines(spec, blocks, wc: int, pack: int) -> tuple[list[str], list[str]]:
    """(the definitions of the row intrinsics, the driver's calls for one output row ``oy``):
    one intrinsic per block width and tap phase (with idle groups, each call says how many of
    the pack's groups are stored: ``live``)."""
    idle = idle_groups(spec.groups, pack) > 0
    taps, _, chan = _packed_layout(spec)
    kw_n = spec.kernel_size[1]
    row_phases, col_phases = tap_phases(spec)
    _, n_vec = choose_block(spec)
    lanes = _simd.lanes(spec.dtype)
    cout_g = spec.out_per_group
    lane_channels = tuple((c % pack) * cout_g + c // pack for c in range(n_vec * lanes)) if pack > 1 else None
    defs, calls = {}, []
    for r, kh_set in enumerate(row_phases):
        branch = []
        for p0, width in blocks:
            phase = p0 % len(col_phases)
            past = overwritten(spec, p0, width)
            name = f"_row{width}" if len(row_phases) == len(col_phases) == 1 else f"_row{width}_{r}_{phase}"
            name += f"_past{past}" if past else ""
            if name not in defs:
                pixel_taps = None if name == f"_row{width}" else tuple(
                    tuple(kh * kw_n + kw for kh in kh_set for kw in col_phases[(phase + p) % len(col_phases)])
                    for p in range(width))
                defs[name] = (f"{name} = outer_product_row({spec.in_per_group}, {chan * pack}, {taps}, {width}, "
                              f"{n_vec}, {len(taps) * cout_g * pack}, {cout_g * pack}, {spec.out_size[0] * spec.out_size[1]}, "
                              f"pack={pack}, pixel_taps={pixel_taps}, lane_channels={lane_channels}, overwritten={past}"
                              f"{', live_groups=True' if idle else ''})")
            branch.append(f"{name}(xs, (oy * {wc} + {p0}) * {pack}, wv, w0, b, c0, "
                          f"out_flat, o0 + {p0}{', live' if idle else ''})")
        if len(row_phases) == 1:
            calls += branch
        else:
            calls.append(("if" if r == 0 else "elif" if r < len(row_phases) - 1 else "else:")
                         + (f" oy % {len(row_phases)} == {r}:" if r < len(row_phases) - 1 else ""))
            calls += _generated.nested(branch)
    loop = [f"for oy in range({spec.out_size[0]}):",
            f"    o0 = ((n * {spec.out_channels} + c0) * {spec.out_size[0]} + oy) * {spec.out_size[1]}"]
    return list(defs.values()), loop + _generated.nested(calls)


def direct_applies(spec) -> bool:
    """Whether the forward can read its input where it lies, each output pixel summing only the
    taps that read input pixels (:func:`valid_tap_regions`): one group per vector, no input
    dilation. It leaves out the padding's terms, zeros while the weights are finite."""
    return group_pack(spec) == 1 and valid_tap_regions(spec) is not None


def overwritten(spec, p0: int, width: int) -> int:
    """Elements of an output row past the block of ``width`` pixels from ``p0`` that the row's
    later blocks store again (``outer_product_row``'s ``overwritten``: its whole-vector stores may
    write there first), at most a vector's; 0 where the target's vectors are ``_simd``'s
    (AVX-512), whose masked stores cost no more than plain ones."""
    if target().vector_bits >= 8 * _simd.VECTOR_BYTES:
        return 0
    return min(spec.out_size[1] - p0 - width, _simd.lanes(spec.dtype))


def _direct_row_lines(spec, blocks) -> tuple[list[str], list[str]]:
    """As :func:`_row_lines` reading the input where it lies: a loop per band of output rows
    that read the same kernel rows, and one intrinsic per (block, band) tap pattern, each pixel
    summing the taps that read input pixels (negative offsets reach back into the plane)."""
    (sh, sw), (dh, dw), (h, w) = spec.stride, spec.dilation, spec.in_size
    (kh_n, kw_n), pt, pl = spec.kernel_size, spec.padding[0], spec.padding[2]
    (oh, ow), cout_g = spec.out_size, spec.out_per_group
    taps = flat_tap_offsets(spec)
    rows = valid_intervals(oh, h, sh, dh, pt, kh_n)
    col_taps = [kws for c0, c1, kws in valid_intervals(ow, w, sw, dw, pl, kw_n) for _ in range(c0, c1)]
    _, n_vec = choose_block(spec)
    defs, lines = {}, []  # (width, pixel taps) -> (name, definition)
    for r0, r1, khs in rows:
        lines += [f"for oy in range({r0}, {r1}):",
                  f"    o0 = ((n * {spec.out_channels} + c0) * {oh} + oy) * {ow}",
                  f"    xr = xb + oy * {sh * w}"]
        for p0, width in blocks:
            pixel_taps = tuple(tuple(kh * kw_n + kw for kh in khs for kw in col_taps[p0 + p]) for p in range(width))
            past = overwritten(spec, p0, width)
            key = (width, pixel_taps, past)
            if key not in defs:
                name = f"_row{len(defs)}"
                defs[key] = (name, f"{name} = outer_product_row({spec.in_per_group}, {h * w}, {taps}, {width}, "
                                   f"{n_vec}, {len(taps) * cout_g}, {cout_g}, {oh * ow}, pixel_taps={pixel_taps}, "
                                   f"x_pixel_step={sw}, overwritten={past})")
            name = defs[key][0]
            lines.append(f"    {name}(x_flat, xr + {p0 * sw}, wv, w0, b, c0, out_flat, o0 + {p0})")
    return [definition for _, definition in defs.values()], lines


def module_source(spec, direct: bool = False) -> str:
    """The generated module for ``spec``; ``direct`` (where :func:`direct_applies`): reading the
    input where it lies, without the padding's terms."""
    taps, wc, chan = _packed_layout(spec)
    ow, cin_g, cout_g = spec.out_size[1], spec.in_per_group, spec.out_per_group
    in_plane = spec.in_size[0] * spec.in_size[1]
    lanes = _simd.lanes(spec.dtype)
    pack = group_pack(spec)
    pixels, n_vec = choose_block(spec)
    blocks = [(p0, min(pixels, ow - p0)) for p0 in range(0, ow, pixels)]
    layout = "the input where it lies, the padding's terms left out" if direct else f"packed planes (pitch {wc}), taps {taps}"
    what = (f"grouped conv, output channels in lanes, {cin_g} -> {cout_g} channels per group, {pack} group(s) per "
            f"vector, blocks of {pixels} pixels x {n_vec} channel vectors, reading {layout}")
    lines = [_generated.HEADER.format(generator=__name__, version=__version__, what=what),
             "from nbconv.cpu._simd import outer_product_row", "", "" if direct else _generated.pack_source(spec, 1, pack)]
    if direct:
        defs, calls = _direct_row_lines(spec, blocks)
        pack_planes = [f"xb = (n * {spec.in_channels} + gp * {cin_g}) * {in_plane}"]
    else:
        defs, calls = _row_lines(spec, blocks, wc, pack)
        if pack == 1:
            per_channel = [f"_pack_plane(x_flat, (n * {spec.in_channels} + gp * {cin_g} + ci) * {in_plane}, xs, ci * {chan})"]
        else:
            pack_one = (f"_pack_plane(x_flat, (n * {spec.in_channels} + (gp * {pack} + j) * {cin_g} + ci) * "
                        f"{in_plane}, xs, ci * {chan}, j)")
            pack_all = (f"_pack_planes(x_flat, (n * {spec.in_channels} + gp * {pack * cin_g} + ci) * {in_plane}, "
                        f"{cin_g * in_plane}, xs, ci * {chan})")
            if idle_groups(spec.groups, pack):  # an idle group's planes are zeros
                per_channel = [f"if live == {pack}:", f"    {pack_all}", "else:",
                               f"    for j in range({pack}):", "        if j < live:", f"            {pack_one}",
                               "        else:", f"            for e in range({chan}):",
                               f"                xs[_U((ci * {chan} + e) * {pack} + j)] = 0"]
            else:
                per_channel = [pack_all]
        pack_planes = [f"live = min({pack}, {spec.groups} - gp * {pack})", f"for ci in range({cin_g}):",
                       *_generated.nested(per_channel)]
    return "\n".join(lines + defs) + "\n" + _generated.fill(
        _DRIVER, rows=calls, pack_planes=pack_planes, n_packs=-(-spec.groups // pack), pack=pack,
        pack_channels=pack * cout_g, n_vblocks=max(1, cout_g // (n_vec * lanes)), block_channels=n_vec * lanes,
        w_group=cin_g * len(taps) * cout_g * pack, **_sizes(spec, taps))


@functools.lru_cache(maxsize=128)
def _module(spec, direct: bool = False):
    return _generated.load(module_source(spec, direct), "nbconv_outer")


def outer_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, out: np.ndarray, spec, direct: bool | None = None,
                  transposed_weight: bool = False) -> None:
    """``out`` = the convolution of ``spec`` (C-contiguous arrays, ``w`` in
    (C_out, C_in/groups, kH, kW), or with ``transposed_weight`` a transposed convolution's
    unflipped (C_in, C_out/groups, kH, kW), packed flipped here; any stride, dilation or input
    dilation of the packed layout).

    Where :func:`direct_applies` and the weights are finite (or ``direct``, tests), the input is
    read where it lies and the padding's terms (zeros) are left out: 9% of resnext_g32_14's, and
    no packing. A non-finite weight takes the packed planes, whose zeros make 0 x inf = NaN as
    the reference does."""
    pack = group_pack(spec)
    lanes_of_groups = -(-spec.groups // pack) * pack * spec.out_per_group
    # an output channel's weights: its group's input channels x taps (not ``w[0].size``, which for
    # a transposed convolution's weight is its outputs per group x taps: fewer where a group has
    # more inputs than outputs)
    per_output = spec.in_per_group * spec.kernel_size[0] * spec.kernel_size[1]
    # the interleaved weights and bias: rewritten every call, their buffers kept (no page faults)
    wv, bias = _scratch.reused(("outer weights", spec.groups, pack, per_output, lanes_of_groups, w.dtype.str),
                               lambda: (np.empty(lanes_of_groups * per_output, w.dtype),
                                        np.empty(lanes_of_groups, w.dtype)))
    finite = packed_finite_weight(w, spec.groups, pack, wv, transposed_weight)
    if direct is None:
        direct = finite and direct_applies(spec)
    bias = packed_bias(b, spec.groups, pack, bias) if pack > 1 else b
    threads = thread_count()
    if direct:
        _module(spec, True).forward(x, wv, bias, out, np.empty((threads, 0), x.dtype))
        return
    _, scratch_elems, _ = _packed.packed_geometry(spec, 1)
    scratch, = _scratch.reused(("outer", spec, threads), lambda: (np.zeros((threads, scratch_elems * pack), x.dtype),))
    _module(spec).forward(x, wv, bias, out, scratch)


# --- the weight gradient -------------------------------------------------------------------


def applies_weight_grad(spec) -> bool:
    """As :func:`applies` for whole vectors of outputs per group (no packed groups), with every
    tap of one channel vector's sums in registers (:func:`block_sums` taps at most: 5x5 kernels,
    not 7x7, with AVX-512; 1x1 only with AVX2, where a 3x3 kernel's 9 sums take 18 of the 16
    registers and spill: on a 2-core Zen 3, ``_wgrad`` took 0.64-0.96x this kernel's time on
    grouped 3x3 and 5x5 layers, 1.06x on dw_mult16_28: ``python docs/wgrad_budget.py``). One
    input channel per group (a channel multiplier of 16) too since the
    gradient is gathered dense (``python docs/outer.py``: dw_mult16_28 0.14 ms against
    ``_wgrad``'s 0.21 with AVX-512)."""
    taps = spec.kernel_size[0] * spec.kernel_size[1]
    return applies(spec) and group_pack(spec) == 1 and taps <= block_sums()


def weight_grad_block(spec) -> tuple[int, int]:
    """(input channels, output channel vectors) per block of sums: every tap of both, within
    :func:`block_sums` sums (one of each where even one tap's do not fit), each a divisor of its
    count (no remainder blocks); as many output vectors as fit, then input channels, with
    AVX-512's 32 registers, input channels first with AVX2's 16."""
    taps = spec.kernel_size[0] * spec.kernel_size[1]
    budget = block_sums()
    vectors = spec.out_per_group // _simd.lanes(spec.dtype)
    if target().vector_registers < 32:
        # Input channels first: each gradient vector, read from the image's channels-last
        # gradient (a plane of all the group's outputs: L2, not L1), serves one sum per input
        # channel of the block. With AVX2's 6 sums, pw_g4_28 (64 -> 64, 1x1) took 2.16 ms at
        # batch 8 in blocks of 4 channels x 1 vector, 2.80 in 1 x 4 (2-core Zen 3).
        n_c = largest_divisor(spec.in_per_group, budget // taps)
        return n_c, largest_divisor(vectors, budget // (taps * n_c))
    n_vec = largest_divisor(vectors, budget // taps)
    return largest_divisor(spec.in_per_group, budget // (taps * n_vec)), n_vec


def weight_grad_slices(spec, threads: int) -> int:
    """Slices of a group's input channels (each a task over all images): 1 unless there are too
    few groups to give every thread 4 tasks."""
    blocks = spec.in_per_group // weight_grad_block(spec)[0]
    return max(1, min(blocks, -(-4 * threads // spec.groups)))


def _gather_grad_source(spec) -> list[str]:
    """``gt[(oy * OW + ox) * C_out/groups + o] = gy_flat[s0 + o * OH * OW + oy * OW + ox]``: one
    image's output gradient of a group, channels last, pixels dense. Tiles of one vector of
    channels x one vector of consecutive pixels are transposed in registers
    (``_simd.transpose_tile``) straight into ``gt``; the last tile is moved back to end at the last
    pixel (its overlap is written twice, with the same values); a plane smaller than a tile goes
    pixel by pixel."""
    lanes = _simd.lanes(spec.dtype)
    (oh, ow), cout_g = spec.out_size, spec.out_per_group
    ohw = oh * ow
    lines = ["", "", "@njit_serial", "def _gather_grad(gy_flat, s0, gt):",
             f"    for ob in range({cout_g // lanes}):",
             f"        src = s0 + ob * {lanes * ohw}"]
    if ohw >= lanes:
        lines += [f"        for p0 in range(0, {ohw - lanes}, {lanes}):",
                  f"            transpose_tile(gy_flat, src + p0, {ohw}, gt, p0 * {cout_g} + ob * {lanes}, {cout_g})",
                  f"        transpose_tile(gy_flat, src + {ohw - lanes}, {ohw}, gt, {(ohw - lanes) * cout_g} + ob * {lanes}, "
                  f"{cout_g})"]
    else:
        lines += [f"        for pix in range({ohw}):",
                  f"            for o in range({lanes}):",
                  f"                gt[_U(pix * {cout_g} + ob * {lanes} + o)] = gy_flat[_U(src + o * {ohw} + pix)]"]
    return lines


_WGRAD_DRIVER = '''

@njit_parallel
def weight_grad(x, gy, dw, scratch, g_buf, t_buf, cps):
    """dw ({c_out}, {cin_g}, kH, kW) = the weight gradient of x (N, {c_in}, H, W) and gy
    (N, {c_out}, {oh}, {ow}) in {groups} groups: tasks of (group, slice of ``cps`` of its input
    channels), each over all images in order; float64 totals."""
    n_img = x.shape[0]
    x_flat, gy_flat, dw_flat = x.reshape(-1), gy.reshape(-1), dw.reshape(-1)
    slices = ({cin_g} + cps - 1) // cps
    nonfinite = 0
    for task in numba.prange({groups} * slices):
        tid = numba.get_thread_id()
        xs = scratch[tid]
        gt = g_buf[tid]
        tot = t_buf[tid]
        g = task // slices
        c_lo = (task % slices) * cps
        c_hi = min(c_lo + cps, {cin_g})
        tot[:] = 0.0
        for n in range(n_img):
{pack}            _gather_grad(gy_flat, (n * {c_out} + g * {cout_g}) * {ohw}, gt)
            for c in range(c_lo, c_hi, {n_c}):
                for vb in range({n_vblocks}):
                    _sums(gt, vb * {block_channels}, {x_at}, {oh}, tot, (c - c_lo) * {tot_c} + vb * {block_channels})
        for c in range(c_lo, c_hi):
            for t in range({n_taps}):
                for o in range({cout_g}):
                    total = tot[(c - c_lo) * {tot_c} + t * {cout_g} + o]
                    dw_flat[((g * {cout_g} + o) * {cin_g} + c) * {n_taps} + t] = total
                    nonfinite += not math.isfinite(total)
    return nonfinite
'''


def weight_grad_source(spec, direct: bool = True) -> str:
    """The generated weight-gradient module for ``spec`` (a forward spec). ``direct`` (where
    :func:`valid_tap_regions` allows): the sums leave out the padding's terms and read the input
    where it lies; else each image's planes are packed (``_packed``'s layout, zeros around them)
    and every term is summed."""
    regions = valid_tap_regions(spec) if direct else None
    (oh, ow), (h, w), cin_g, cout_g = spec.out_size, spec.in_size, spec.in_per_group, spec.out_per_group
    lanes = _simd.lanes(spec.dtype)
    n_c, n_vec = weight_grad_block(spec)
    if regions is None:
        taps, wc, chan = _packed_layout(spec)
        layout = f"packed planes (pitch {wc}), taps {taps}"
        sums = f"{n_c}, {chan}, {taps}, {n_vec}, {cout_g}, {len(taps) * cout_g}, {ow}, {wc}"
        pack = (f"            for c in range(c_lo, c_hi):\n"
                f"                _pack_plane(x_flat, (n * {spec.in_channels} + g * {cin_g} + c) * {h * w}, xs, (c - c_lo) * {chan})\n")
        x_at = f"xs, (c - c_lo) * {chan}"
    else:
        sh, sw = spec.stride
        taps = flat_tap_offsets(spec)
        layout = f"the input where it lies, taps {taps}, the padding's terms left out: regions {regions}"
        sums = f"{n_c}, {h * w}, {taps}, {n_vec}, {cout_g}, {len(taps) * cout_g}, {ow}, {sh * w}, {regions}, {sw}"
        pack, x_at = "", f"x_flat, (n * {spec.in_channels} + g * {cin_g} + c) * {h * w}"
    what = (f"grouped conv weight gradient, output channels in lanes, {cin_g} -> {cout_g} channels per group, "
            f"blocks of {n_c} input channels x {n_vec} channel vectors, reading {layout}")
    lines = [_generated.HEADER.format(generator=__name__, version=__version__, what=what), "import math",
             "from nbconv.cpu._simd import outer_product_sums, transpose_tile", "",
             _generated.pack_source(spec, 1) if regions is None else ""]
    lines += _gather_grad_source(spec)
    lines += ["", f"_sums = outer_product_sums({sums})"]
    return "\n".join(lines) + "\n" + _WGRAD_DRIVER.format(
        ohw=oh * ow, n_c=n_c, n_vblocks=cout_g // (n_vec * lanes), block_channels=n_vec * lanes,
        tot_c=len(taps) * cout_g, pack=pack, x_at=x_at, **_sizes(spec, taps))


@functools.lru_cache(maxsize=128)
def _weight_grad_module(spec, direct: bool = True):
    return _generated.load(weight_grad_source(spec, direct), "nbconv_outer_wgrad")


def outer_weight_grad(x: np.ndarray, gy: np.ndarray, dw: np.ndarray, spec, slices: int | None = None,
                      direct: bool = True) -> None:
    """``dw`` = the weight gradient of the convolution ``spec`` (C-contiguous arrays; the sums
    are the true terms and the padding's zeros times gradient values), each group's input
    channels in ``slices`` tasks (default :func:`weight_grad_slices`). Every weight is summed by
    one task, over the images in order: bit-identical whatever the thread count.

    The padding's terms are first left out (:func:`valid_tap_regions`): with a finite gradient
    they are zeros, and dropping them changes no sum. A non-finite gradient value meets an input
    pixel too (``valid_tap_regions`` makes sure of it), so it leaves a non-finite total; only then
    are the sums computed again with the padding's terms (0 x inf is NaN there, as in the
    reference). ``direct=False`` (tests) takes that second way only."""
    threads = thread_count()
    slices = weight_grad_slices(spec, threads) if slices is None else slices
    n_c = weight_grad_block(spec)[0]
    cps = _generated.channels_per_slice(spec.in_per_group, slices, n_c)
    taps = spec.kernel_size[0] * spec.kernel_size[1]
    g_buf = np.empty((threads, spec.out_size[0] * spec.out_size[1] * spec.out_per_group), x.dtype)
    t_buf = np.empty((threads, cps * taps * spec.out_per_group), np.float64)
    regions = valid_tap_regions(spec) if direct else None
    if regions is not None:
        nonfinite = _weight_grad_module(spec, True).weight_grad(x, gy, dw, np.empty((threads, 0), x.dtype), g_buf, t_buf, cps)
        if not nonfinite or not reads_padding(regions, taps):
            return
    _, scratch_elems, _ = _packed.packed_geometry(spec, 1)
    scratch, = _scratch.reused(("outer_wgrad", spec, threads), lambda: (np.zeros((threads, scratch_elems), x.dtype),))
    _weight_grad_module(spec, False).weight_grad(x, gy, dw, scratch, g_buf, t_buf, cps)
