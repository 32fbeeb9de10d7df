"""Depthwise convolution on the CPU with output-row register blocking (one input channel per group).

With one input channel per group no second output channel can share an input load, so the
packed kernel's loop (``_packed._row_taps``: one unaligned vector load per multiply-add) is
bound by the load ports. Here ``R`` consecutive output rows go through one vector loop together:
output row ``oy + r`` with kernel row ``kh`` reads the same packed row as output row ``oy + r + 1``
with kernel row ``kh - 1`` (any stride: rows are split by phase, see ``_packed``), so one load
feeds up to ``kH`` multiply-adds, and the ``R`` sums go straight to the output rows (no
accumulator pass, no unpack).

LLVM vectorises such a loop well only when it can see that the loads form one group and the
stores another (otherwise it emits hundreds of run-time overlap checks per call) and when the
weights are loop invariants: that needs every tap offset, the packed pitch and the output pitch
to be compile-time constants. So the loop is generated as Python source per geometry
(:func:`kernel_source`) and loaded through ``_generated`` (a file per geometry, so that Numba's
on-disk cache keeps the compiled code between processes as it does for the other kernels).

Kernels of more than ``MAX_PASS_TAPS`` taps (7x7) go through the loop in passes of whole kernel
rows (:func:`kernel_row_passes`), so that a pass's weights stay in registers.

An output pixel is ``bias`` plus its terms in the order of their packed addresses (kernel order
for stride 1; by phase plane first otherwise) within each pass, the passes in kernel-row order,
each multiply-add fused (``contract``): the order is fixed by the geometry, so results are the
same run after run and whatever the thread count.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np

from .._version import __version__
from . import _generated, _packed, _scratch
from ._threads import thread_count

#: Output rows per vector pass: 4 for kernels of up to 3x3 taps, 8 for bigger ones (more sums in
#: flight per loaded row; with rows_per_pass forced, an experiment not kept: 3x3 ran the same with
#: 4 or 8 rows, 5x5 and 7x7 fastest with 8).
ROWS_SMALL_KERNEL, ROWS_LARGE_KERNEL = 4, 8
#: Narrower outputs go to ``_grouped`` (images stacked in the packed planes): here a
#: row is covered by whole vectors of ``CHUNK`` columns, the last one moved left to end at the
#: row's end (a few columns computed twice) so that no loop has a scalar remainder.
MIN_OUT_WIDTH = CHUNK = 16


#: Most taps whose weights one vector loop keeps in registers beside its ``rows`` sums: a bigger
#: kernel goes through the loop in passes of whole kernel rows (7x7: 3 + 3 + 1 rows), each pass
#: adding to the sums the previous one stored. Without passes LLVM spills the weights and every
#: multiply-add has a broadcast load beside it (``python docs/row_passes.py``: convnext_dw7 at
#: batch 8 0.99-1.06 ms in passes of 3 kernel rows against 1.20-1.23 in one; 5x5 is a little
#: slower in passes, 0.41 against 0.39 ms for effnet_dw5_28).
MAX_PASS_TAPS = 25


def kernel_row_passes(kh: int, kw: int) -> tuple[int, ...]:
    """Kernel rows per pass of the vector loop: all of them up to ``MAX_PASS_TAPS`` taps, else as
    many whole rows as fit that (the last pass takes the rest)."""
    if kh * kw <= MAX_PASS_TAPS:
        return (kh,)
    per = max(1, MAX_PASS_TAPS // kw)
    return tuple(min(per, kh - r) for r in range(0, kh, per))


def rows_per_pass(spec) -> int:
    kh, kw = spec.kernel_size
    return ROWS_SMALL_KERNEL if kh * kw <= 9 else ROWS_LARGE_KERNEL


def applies(spec) -> bool:
    """Whether this path computes ``spec``: depthwise (any channel multiplier), outputs at least
    ``MIN_OUT_WIDTH`` wide, at most ``_generated.MAX_TAPS`` taps. Not the thread count: which
    kernel runs, and so the order of each sum, must not depend on it."""
    return (spec.in_per_group == 1 and spec.out_size[1] >= MIN_OUT_WIDTH
            and spec.kernel_size[0] * spec.kernel_size[1] <= _generated.MAX_TAPS)


def kernel_source(taps: tuple[int, ...], wc: int, ow: int, rows: int, passes: tuple[int, ...]) -> str:
    """Python source of ``_rows{rows}`` and ``_rows1``: output rows ``oy .. oy + rows - 1`` of one
    plane, ``out[o0 + r * ow + p] = bias + sum_t w[w0 + t] * xs[x0 + taps[t] + r * wc + p]``.

    ``passes``: kernel rows per pass of the vector loop (``taps`` holds whole kernel rows of equal
    length, in kernel order). Each pass after the first starts from the sums the previous one
    stored, and loads its weights per column chunk; a single pass loads them once per call."""
    row_len = len(taps) // sum(passes)
    ends = list(itertools.accumulate(n * row_len for n in passes))
    bounds = list(zip([0, *ends[:-1]], ends))
    functions = []
    for r_n in sorted({rows, 1}):
        passes_lines = []
        for i, (a, b) in enumerate(bounds):
            passes_lines += _generated.fill(
                _PASS, chunk=CHUNK,
                weights=[f"k0_{t - a} = w[_U(w0 + {t})]" for t in range(a, b)] if len(bounds) > 1 else [],
                starts=[f"s0_{r} = " + ("bias" if i == 0 else f"out[_U(o0 + {r * ow} + p)]") for r in range(r_n)],
                terms=_generated.multiply_add_lines(taps[a:b], wc, r_n, 1),
                stores=[f"out[_U(o0 + {r * ow} + p)] = s0_{r}" for r in range(r_n)]).split("\n")
        functions.append(_generated.fill(
            _ROWS, r_n=r_n, chunks=-(-ow // CHUNK), chunk=CHUNK, last=ow - CHUNK, passes=passes_lines,
            weights=[f"k0_{t} = w[_U(w0 + {t})]" for t in range(len(taps))] if len(bounds) == 1 else []))
    return "\n".join(functions) + "\n"


_ROWS = """

@njit_serial
def _rows{r_n}(out, o0, xs, x0, w, w0, bias):
    {weights}
    for c in range({chunks}):
        p0 = min(c * {chunk}, {last})
        {passes}"""

_PASS = """{weights}
for p in range(p0, p0 + {chunk}):
    q = x0 + p
    {starts}
    {terms}
    {stores}"""


_DRIVER = '''

@njit_parallel
def forward(x, w, b, out, scratch):
    """out (N, C_out, OH, {ow}) = the depthwise convolution of x (N, C_in, H, W) by w
    (C_out, 1, kH, kW) + b: one task per (image, input channel) packs the plane once and computes
    its C_out / C_in output channels, {rows} rows per pass."""
    n_img, c_in = x.shape[0], x.shape[1]
    c_out, oh = out.shape[1], out.shape[2]
    mult = c_out // c_in
    out_flat = out.reshape(-1)
    w_flat = w.reshape(-1)
    x_flat = x.reshape(-1)
    in_plane = x.shape[2] * x.shape[3]
    for task in numba.prange(n_img * c_in):
        xs = scratch[numba.get_thread_id()]
        n = task // c_in
        c = task - n * c_in
        _pack_plane(x_flat, task * in_plane, xs, 0)
        for oc in range(c * mult, (c + 1) * mult):
            plane = (n * c_out + oc) * oh * {ow}
            w0 = oc * {n_taps}
            if oh < {rows}:
                for oy in range(oh):
                    _rows1(out_flat, plane + oy * {ow}, xs, oy * {wc}, w_flat, w0, b[oc])
            else:
                {blocks}
'''



def module_source(spec) -> str:
    """The whole generated module for ``spec``: header, pack, row kernels and parallel driver."""
    geo, _, _ = _packed.packed_geometry(spec, 1)
    taps = tuple(int(t) for t in _packed.packed_tables(spec, 1)[2].ravel())
    wc, ow, rows = geo.wc, spec.out_size[1], rows_per_pass(spec)
    passes = kernel_row_passes(*spec.kernel_size)

    def call(r_n: int) -> str:  # in a loop over oy
        return f"    _rows{r_n}(out_flat, plane + oy * {ow}, xs, oy * {wc}, w_flat, w0, b[oc])"

    if len(passes) == 1:
        blocks = [f"for blk in range(0, oh, {rows}):",
                  f"    oy = min(blk, oh - {rows})  # the last block moves up: a few rows computed twice", call(rows)]
    else:  # passes add to stored sums: no row may be computed twice, the rows past the blocks one by one
        blocks = [f"for oy in range(0, oh - {rows} + 1, {rows}):", call(rows),
                  f"for oy in range(oh - oh % {rows}, oh):", call(1)]
    fmt = dict(taps=taps, wc=wc, ow=ow, rows=rows, n_taps=len(taps), blocks=blocks)
    what = f"depthwise rows for taps {taps}, packed pitch {wc}, output width {ow}, {rows} rows per pass"
    header = _generated.HEADER.format(generator=__name__, version=__version__, what=what)
    return header + _generated.pack_source(spec) + kernel_source(taps, wc, ow, rows, passes) + _generated.fill(_DRIVER, **fmt)


@functools.lru_cache(maxsize=128)
def _module(spec):
    return _generated.load(module_source(spec), "nbconv_rowblock")


def depthwise_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, out: np.ndarray, spec) -> None:
    """``out`` = the depthwise convolution of ``spec`` (C-contiguous arrays; ``w`` in
    (C_out, 1, kH, kW), any stride, dilation or input dilation the packed layout handles)."""
    _, scratch_elems, _ = _packed.packed_geometry(spec, 1)
    threads = thread_count()
    scratch, = _scratch.reused(("rowblock", spec, threads), lambda: (np.zeros((threads, scratch_elems), x.dtype),))
    _module(spec).forward(x, w, b, out, scratch)
