"""Grouped convolution on the CPU, register-blocked over output channels and output rows,
generated per geometry: two or more input channels per group, and the depthwise layers with a
channel multiplier whose outputs are too narrow for ``_rowblock`` (under 16 columns; without a
multiplier those go to ``_channels_last``).

A task (stack of images, group, slice of the group's output channels) packs the group's input
planes once (``_packed``'s layout, by the generated ``_pack_plane``), then computes blocks of
``OB`` output channels x ``R`` output rows (:func:`choose_block`): for each input channel one
vector loop over the row (``PW`` columns, a whole number of vectors) loads each packed input vector
once and feeds it to every output channel of the block and every output row whose kernel row reads
it (a 3x3 pass over 2 channels x 5 rows: 90 multiply-adds for 21 input loads). The block's sums
stay in a small per-thread accumulator (``OB x R x PW``) across the input channels and are copied
to the output at the end (columns past the output width are computed and dropped).

As in ``_rowblock``, every tap offset, pitch and trip count is a compile-time constant of the
generated source, so LLVM sees one group of loads and one of stores (no run-time overlap checks per
call) and unrolls the taps. The sum of an output is: bias, then the input channels in order, each
channel's taps in the order of their packed addresses (kernel order for stride 1), each
multiply-add fused: a fixed order.
"""

from __future__ import annotations

import functools

import numpy as np

from .._version import __version__
from . import _generated, _packed, _scratch
from ._threads import thread_count

#: Vector registers a block may keep busy: its sums (output channels x rows) and its weights
#: (output channels x taps), with a few of the 32 (AVX-512) left for the input loads. Past
#: that LLVM spills the weights as whole vectors and every use becomes a 64-byte reload
#: (``python docs/grouped_blocks.py``: alexnet_g2's 5x5 in blocks of 4 channels x 4 rows took
#: 18.0 ms, in blocks of 1 x 3 13.6 ms).
REGISTER_BUDGET = 28
#: Largest blocks considered.
MAX_OUT_BLOCK, MAX_ROW_BLOCK = 4, 8
#: Columns per vector loop are rounded up to this (a whole number of 16-float vectors).
LANES = 16
#: Most packed input elements per thread (the group's planes): 1 MiB of float32, L2-sized; the
#: accumulator of a block (4 output planes) is bounded alike.
MAX_SCRATCH_ELEMS = 1 << 18


def applies(spec) -> bool:
    """A kernel of more than one tap (a 1x1 kernel shares
    no load between rows: the packed kernel's four-channel passes did better on pw_g4_28 at batch
    8, 1.6 against 2.4 ms, in an experiment not kept), at most ``_generated.MAX_TAPS`` taps, and
    the group's packed planes fit the scratch. Depthwise layers qualify too; the launcher gives
    those at least 16 columns wide to ``_rowblock`` first (sums stored straight to the output)."""
    taps = spec.kernel_size[0] * spec.kernel_size[1]
    if spec.batch == 0 or taps == 1 or taps > _generated.MAX_TAPS:
        return False
    _, scratch_elems, _ = _packed.packed_geometry(spec, 1)
    rows, n_blocks, pw = _blocking(spec, 1)
    return max(scratch_elems, choose_block(spec)[0] * n_blocks * rows * pw) <= MAX_SCRATCH_ELEMS


def oc_slices(spec, threads: int, n_stacks: int) -> int:
    """Slices of a group's output channels per task: 1 (the group's planes packed once) unless
    there are too few (stack, group) pairs to give every thread 4 tasks."""
    blocks = -(-spec.out_per_group // choose_block(spec)[0])
    return max(1, min(blocks, -(-4 * threads // (n_stacks * spec.groups))))


def layout_stack(spec) -> int:
    """Images a stack of the generated module's packed layout holds: as many small images as
    fill a segment (``_packed.stack_limit`` without the batch's bound), so that one module serves
    every batch size (the launcher's stack for a batch, :func:`_packed.choose_stack`, is at most
    this; a stack of fewer images computes only the rows they cover)."""
    return _packed.stack_bucket(_packed.stack_limit(spec, _packed.SEGMENT_ELEMS, bound_by_batch=False))


def _pass_source(name: str, taps, wc: int, pw: int, ob: int, rows: int, n_blocks: int, w_oc: int) -> list[str]:
    """For the first ``blocks`` (at most ``n_blocks``) blocks j of ``rows`` rows:
    ``acc[k, j * rows + r, p] += sum_t w[w0 + k * w_oc + t] * xs[x0 + taps[t] + (j * rows + r) * wc
    + p]`` for ``ob`` output channels k, p < pw. The weights are loaded once per call, for all the
    blocks."""
    plane = n_blocks * rows * pw  # one output channel's accumulator rows
    return _generated.fill(
        _PASS, name=name, block_elems=rows * pw, block_step=rows * wc, pw=pw,
        weights=[f"k{k}_{t} = w[_U(w0 + {k * w_oc + t})]" for k in range(ob) for t in range(len(taps))],
        loads=[f"s{k}_{r} = acc[_U(a0 + {k * plane + r * pw} + p)]" for k in range(ob) for r in range(rows)],
        terms=_generated.multiply_add_lines(taps, wc, rows, ob),
        stores=[f"acc[_U(a0 + {k * plane + r * pw} + p)] = s{k}_{r}" for k in range(ob) for r in range(rows)],
    ).split("\n")


_PASS = """

@njit_serial
def {name}(acc, xs, x0, w, w0, blocks):
    {weights}
    for j in range(blocks):
        a0 = j * {block_elems}
        x1 = x0 + j * {block_step}
        for p in range({pw}):
            q = x1 + p
            {loads}
            {terms}
            {stores}"""


def _bias_source(name: str, ob: int, plane: int, block_elems: int) -> list[str]:
    """``acc[k * plane + i] = b[oc0 + k]`` for the first ``blocks`` blocks (``block_elems`` each):
    the sums of a block start from the bias (one generated pass function for every input channel,
    half the code to compile of a separate first pass)."""
    return ["", "", "@njit_serial", f"def {name}(acc, b, oc0, blocks):",
            f"    for k in range({ob}):", "        bias = b[oc0 + k]",
            f"        for i in range(blocks * {block_elems}):", f"            acc[_U(k * {plane} + i)] = bias"]


def _unpack_source(name: str, ob: int, plane: int, pw: int, oh: int, ow: int) -> list[str]:
    """``out[o0 + k * oh * ow + y * ow + p] = acc[a0 + k * plane + y * pw + p]`` for y < oh, p < ow."""
    return ["", "", "@njit_serial", f"def {name}(out, o0, acc, a0):",
            f"    for k in range({ob}):", f"        for y in range({oh}):",
            f"            for p in range({ow}):",
            f"                out[_U(o0 + k * {oh * ow} + y * {ow} + p)] = acc[_U(a0 + k * {plane} + y * {pw} + p)]"]


_DRIVER = '''

@njit_parallel
def forward(x, w, b, out, scratch, acc_buf, stack, slices, ocs):
    """out (N, {c_out}, {oh}, {ow}) = x (N, {c_in}, H, W) convolved with w ({c_out}, {cin_g}, kH, kW)
    in {groups} groups, + b: tasks of (stack of ``stack`` images, at most {stack}; group; slice of
    ``ocs`` output channels, ``slices`` slices per group); the images of a stack lie one above the
    other in each packed plane, and only the blocks of rows they cover are computed."""
    n_img = x.shape[0]
    x_flat, w_flat, out_flat = x.reshape(-1), w.reshape(-1), out.reshape(-1)
    n_stacks = (n_img + stack - 1) // stack
    for task in numba.prange(n_stacks * {groups} * slices):
        tid = numba.get_thread_id()
        xs = scratch[tid]
        acc = acc_buf[tid]
        sl = task % slices
        g = (task // slices) % {groups}
        n0 = task // (slices * {groups}) * stack
        n_cnt = min(stack, n_img - n0)
        blocks = ((n_cnt - 1) * {hc} + {oh} + {rows} - 1) // {rows}
        for ci in range({cin_g}):
            for j in range(n_cnt):
                _pack_plane(x_flat, ((n0 + j) * {c_in} + g * {cin_g} + ci) * {in_plane}, xs, ci * {chan} + j * {img})
        oc = g * {cout_g} + sl * ocs
        oc_hi = min(oc + ocs, (g + 1) * {cout_g})
        while oc < oc_hi:
            full = oc + {ob} <= oc_hi
            w0 = oc * {w_oc}
            if full:
                _bias(acc, b, oc, blocks)
                for ci in range({cin_g}):
                    _pass(acc, xs, ci * {chan}, w_flat, w0 + ci * {n_taps}, blocks)
                for j in range(n_cnt):  # the seam rows between images are dropped
                    _unpack(out_flat, ((n0 + j) * {c_out} + oc) * {oh} * {ow}, acc, j * {hc} * {pw})
            else:
                {remainder}
            oc += {ob} if full else {ob_rem}
'''

_REMAINDER = '''_bias_rem(acc, b, oc, blocks)
for ci in range({cin_g}):
    _pass_rem(acc, xs, ci * {chan}, w_flat, w0 + ci * {n_taps}, blocks)
for j in range(n_cnt):
    _unpack_rem(out_flat, ((n0 + j) * {c_out} + oc) * {oh} * {ow}, acc, j * {hc} * {pw})'''


@functools.lru_cache(maxsize=256)
def choose_block(spec) -> tuple[int, int]:
    """(output channels, output rows) per block: the most multiply-adds per load (accumulator
    load and store per input channel, plus the distinct input vectors the rows read) among the
    blocks that fit ``REGISTER_BUDGET``; 1 x 4 when none does (kernels of more than 27 taps)."""
    taps = [int(t) for t in _packed.packed_tables(spec, 1)[2].ravel()]
    wc = _packed.packed_geometry(spec, 1).geometry.wc
    best, best_score = (1, min(4, spec.out_size[0])), -1.0
    for ob in range(1, min(MAX_OUT_BLOCK, spec.out_per_group) + 1):
        for rows in range(1, min(MAX_ROW_BLOCK, spec.out_size[0]) + 1):
            if ob * (rows + len(taps)) > REGISTER_BUDGET:
                continue
            loads = 2 * ob * rows + len(_generated.row_offsets(taps, wc, rows))
            score = ob * rows * len(taps) / loads
            if score > best_score:
                best, best_score = (ob, rows), score
    return best


def _blocking(spec, stack: int) -> tuple[int, int, int]:
    """(rows per block, blocks, accumulator pitch): whole blocks of rows cover the stacked output
    planes (the seam rows and the rows past the last image are computed and dropped), rows of
    whole vectors cover the output width."""
    oh, ow = spec.out_size
    hc = _packed.packed_geometry(spec, stack).geometry.hc
    rows = choose_block(spec)[1]
    return rows, -(-((stack - 1) * hc + oh) // rows), -(-ow // LANES) * LANES


def module_source(spec, stack: int) -> str:
    """The generated module for ``spec`` (nothing of it depends on the batch) and a packed layout
    of stacks of up to ``stack`` images."""
    geo = _packed.packed_geometry(spec, stack).geometry
    hc, wc = geo.hc, geo.wc
    taps = tuple(int(t) for t in _packed.packed_tables(spec, stack)[2].ravel())
    (oh, ow), cin_g, cout_g = spec.out_size, spec.in_per_group, spec.out_per_group
    rows, n_blocks, pw = _blocking(spec, stack)
    ob = choose_block(spec)[0]
    ob_rem = cout_g % ob
    w_oc = cin_g * len(taps)
    what = (f"grouped conv, {cin_g} -> {cout_g} channels per group, taps {taps}, packed pitch {wc}, "
            f"{ob} channels x {rows} rows per block, stacks of up to {stack}")
    lines = [_generated.HEADER.format(generator=__name__, version=__version__, what=what),
             _generated.pack_source(spec, stack)]
    for suffix, n_oc in (("", ob), ("_rem", ob_rem)):
        if n_oc:
            lines += _bias_source(f"_bias{suffix}", n_oc, n_blocks * rows * pw, rows * pw)
            lines += _pass_source(f"_pass{suffix}", taps, wc, pw, n_oc, rows, n_blocks, w_oc)
            lines += _unpack_source(f"_unpack{suffix}", n_oc, n_blocks * rows * pw, pw, oh, ow)
    fmt = dict(c_in=spec.in_channels, c_out=spec.out_channels, groups=spec.groups, cin_g=cin_g, cout_g=cout_g,
               stack=stack, ob=ob, ob_rem=ob_rem, oh=oh, ow=ow, w_oc=w_oc, hc=hc, pw=pw, rows=rows,
               n_taps=len(taps), chan=geo.channel_elems, img=hc * wc,
               in_plane=spec.in_size[0] * spec.in_size[1])
    remainder = _REMAINDER.format(**fmt).split("\n") if ob_rem else ["pass"]
    return "\n".join(lines) + "\n" + _generated.fill(_DRIVER, remainder=remainder, **fmt)


@functools.lru_cache(maxsize=128)
def _module(spec, stack: int):
    return _generated.load(module_source(spec, stack), "nbconv_grouped")


def grouped_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, out: np.ndarray, spec, stack: int = 1,
                    slices: int | None = None) -> None:
    """``out`` = the convolution of ``spec`` (C-contiguous arrays, ``w`` in
    (C_out, C_in/groups, kH, kW); any stride, dilation or input dilation of the packed layout),
    in stacks of ``stack`` images (small planes: longer loops per weight load), each group's
    output channels in ``slices`` tasks (default: :func:`oc_slices`). The module and its layout
    (:func:`layout_stack`) are the same for every batch size and stack up to it."""
    threads = thread_count()
    layout = max(stack, layout_stack(spec))
    n_stacks = -(-spec.batch // stack)
    slices = oc_slices(spec, threads, n_stacks) if slices is None else slices
    ocs = _generated.channels_per_slice(spec.out_per_group, slices, choose_block(spec)[0])
    geo, scratch_elems, _ = _packed.packed_geometry(spec, layout)
    rows, n_blocks, pw = _blocking(spec, layout)
    # slack: the dropped rows and columns of the last channel read past its planes
    slack = (n_blocks * rows - (layout - 1) * geo.hc - spec.out_size[0] + 1) * geo.wc + pw
    scratch, acc = _scratch.reused(("grouped", spec, layout, threads), lambda: (
        np.zeros((threads, scratch_elems + slack), x.dtype),
        np.empty((threads, choose_block(spec)[0] * n_blocks * rows * pw), x.dtype)))
    _module(spec, layout).forward(x, w, b, out, scratch, acc, stack, slices, ocs)
