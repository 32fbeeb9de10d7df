"""The weight gradient on the CPU, generated per geometry: packed dot products with every offset a
compile-time constant.

``dw[o, c, kh, kw] = sum over n, oy, ox of gy[n, o, oy, ox] * x_pad[n, c_g, oy*sH + kh*dH, ox*sW + kw*dW]``
(``c_g`` the group's ``c``-th input channel). A task (group, slice of the group's output
channels) walks the images in stacks, as the packed kernel does: it packs the group's input planes
(``_packed``'s layout, by the generated ``_pack_plane``) and its output channels' gradient planes
in the same pitch (zeros in the columns past the output width, in the seam rows and at the end),
so that every tap is one contiguous dot product between a gradient plane and the packed input,
shifted by the tap's offset.

One vector loop (a "pass") computes ``OB`` output channels x ``T`` taps of one input channel at
once: each loaded input vector feeds ``OB`` multiply-adds, each gradient vector ``T``; the
``OB x T`` sums are vector partial sums in registers (``njit_reduction``'s reassociation), reduced
at the end of the loop and added to the task's float64 totals. :func:`choose_passes` picks ``OB``
and the split of the taps into passes from a cost model of the loop (multiply-adds against
loads, unaligned input loads counted twice).

Every weight element is summed by one task: per stack in the fixed order of the compiled loop,
then over stacks in float64. Which channels share a pass depends on the spec alone (slices are
whole multiples of ``OB``; the group's last ``C_out/groups % OB`` channels go through the
remainder passes), so the result is bit-identical whatever the thread count.
"""

from __future__ import annotations

import functools

import numpy as np

from .._version import __version__
from . import _generated, _packed, _scratch
from ._target import target
from ._threads import thread_count

#: Most vector sums one pass keeps in registers with AVX-512 (32 registers; a gradient vector and
#: an input vector are live besides): a 5x5 kernel of one output channel fits in one pass. Other
#: targets: :func:`sum_budget`.
SUM_BUDGET = 25
#: Most output channels per pass.
MAX_OUT_BLOCK = 4
#: Gradient planes are padded to whole multiples of this many elements (``_packed.VECTOR_ROUND``):
#: LLVM's vector loop (16 lanes x up to 4 interleaved) then leaves no scalar remainder.
ROUND = _packed.VECTOR_ROUND


def applies(spec) -> bool:
    """At most ``_generated.MAX_TAPS`` taps (each pass unrolls its taps), at least one image."""
    return spec.batch > 0 and spec.kernel_size[0] * spec.kernel_size[1] <= _generated.MAX_TAPS


def sum_budget() -> int:
    """Vector sums one pass keeps in registers on the compile target: ``SUM_BUDGET`` with
    AVX-512, 12 with AVX2's 16 registers (``python docs/wgrad_budget.py`` on a 2-core Zen 3:
    25 sums spilled, 12 took effnet_dw5_28 from 3.13 to 2.67 ms and convnext_dw7 from 5.50 to
    4.62 at batch 8, and changed no 3x3 layer by more than 6%)."""
    return max(1, min(SUM_BUDGET, target().vector_registers - 4))


def _pass_cost(ob: int, taps: int) -> float:
    """Cycles-like cost of one pass per vector of positions: ``ob x taps`` multiply-adds against
    ``ob`` aligned gradient loads and ``taps`` input loads (mostly unaligned: counted twice), two
    of either per cycle."""
    return max(ob * taps, ob + 2 * taps) / 2


def _split(n_taps: int, per_pass: int) -> tuple[int, ...]:
    """Tap counts of the passes: ``n_taps`` split into the fewest passes of at most
    ``per_pass``, as even as they go."""
    passes = -(-n_taps // per_pass)
    return tuple(n_taps // passes + (i < n_taps % passes) for i in range(passes))


@functools.lru_cache(maxsize=256)
def choose_passes(spec) -> tuple[int, tuple[int, ...]]:
    """(output channels per pass ``OB``, tap counts of the passes): the least estimated cost per
    output channel (:func:`_pass_cost`), with ``OB x T <=`` :func:`sum_budget`; ties go to fewer
    passes."""
    n_taps = spec.kernel_size[0] * spec.kernel_size[1]
    budget = sum_budget()
    best, best_cost = None, float("inf")
    for ob in range(1, min(MAX_OUT_BLOCK, spec.out_per_group) + 1):
        split = _split(n_taps, max(1, budget // ob))
        cost = sum(_pass_cost(ob, t) for t in split) / ob + 1e-3 * len(split)
        if cost < best_cost:
            best, best_cost = (ob, split), cost
    return best


def _grad_pitch(spec, stack: int) -> int:
    """Elements of one output channel's packed gradient planes (a stack of images)."""
    geo, _, _ = _packed.packed_geometry(spec, stack)
    hc, wc = geo.hc, geo.wc
    return -(-((stack - 1) * hc + spec.out_size[0]) * wc // ROUND) * ROUND


def _dots_source(name: str, ob: int, split: tuple[int, ...], taps: tuple[int, ...], g_pitch: int,
                 tot_oc: int) -> list[str]:
    """``tot[t0 + k * tot_oc + t] += sum_{p < n} gb[k * g_pitch + p] * xs[x0 + taps[t] + p]`` for
    the ``ob`` output channels k and every tap t, in passes of ``split`` taps."""
    lines = ["", "", "@njit_reduction", f"def {name}(tot, t0, gb, xs, x0, n, zero):"]
    t_lo = 0
    for n_t in split:
        ts = range(t_lo, t_lo + n_t)
        lines += [f"    s{k}_{t} = zero" for k in range(ob) for t in ts]
        lines += ["    for p in range(n):", "        q = x0 + p"]
        lines += [f"        h{k} = gb[_U({k * g_pitch} + p)]" for k in range(ob)]
        for t in ts:
            lines.append(f"        v = xs[_U(q + {taps[t]})]")
            lines += [f"        s{k}_{t} += h{k} * v" for k in range(ob)]
        lines += [f"    tot[t0 + {k * tot_oc + t}] += s{k}_{t}" for k in range(ob) for t in ts]
        t_lo += n_t
    return lines


def _grad_pack_source(oh: int, ow: int, wc: int) -> list[str]:
    """``gb[d0 + oy * wc + ox] = gy_flat[s0 + oy * ow + ox]``: one gradient plane in the pitch of
    the packed input."""
    return ["", "", "@njit_serial", "def _pack_grad(gy_flat, s0, gb, d0):",
            f"    for oy in range({oh}):", f"        for ox in range({ow}):",
            f"            gb[_U(d0 + oy * {wc} + ox)] = gy_flat[_U(s0 + oy * {ow} + ox)]"]


_DRIVER = '''

@njit_parallel
def weight_grad(x, gy, dw, scratch, gy_buf, tot_buf, ocs, zero):
    """dw ({c_out}, {cin_g}, kH, kW) = the weight gradient of x (N, {c_in}, H, W) and the output
    gradient gy (N, {c_out}, {oh}, {ow}) in {groups} groups: tasks of (group, slice of ``ocs``
    of the group's output channels), each over all images in stacks of {stack}."""
    n_img = x.shape[0]
    x_flat, gy_flat, dw_flat = x.reshape(-1), gy.reshape(-1), dw.reshape(-1)
    slices = ({cout_g} + ocs - 1) // ocs
    for task in numba.prange({groups} * slices):
        tid = numba.get_thread_id()
        xs = scratch[tid]
        gb = gy_buf[tid]
        tot = tot_buf[tid]
        g = task // slices
        oc_lo = g * {cout_g} + (task % slices) * ocs
        oc_hi = min(oc_lo + ocs, (g + 1) * {cout_g})
        tot[:] = 0.0
        gb[:] = zero  # the columns past the output width and the seam rows stay zero
        for n0 in range(0, n_img, {stack}):
            n_cnt = min({stack}, n_img - n0)
            valid = ((n_cnt - 1) * {hc} + {oh}) * {wc}
            n_el = (valid + {round} - 1) // {round} * {round}
            for ci in range({cin_g}):
                for j in range(n_cnt):
                    src = ((n0 + j) * {c_in} + g * {cin_g} + ci) * {in_plane}
                    _pack_plane(x_flat, src, xs, ci * {chan} + j * {img})
            oc = oc_lo
            while oc < oc_hi:
                nk = {ob} if oc + {ob} <= oc_hi else {ob_rem}
                for k in range(nk):
                    # past a short last stack the planes hold an earlier stack's gradient
                    gb[k * {g_pitch} + valid:k * {g_pitch} + n_el] = zero
                    for j in range(n_cnt):
                        src = ((n0 + j) * {c_out} + oc + k) * {oh} * {ow}
                        _pack_grad(gy_flat, src, gb, k * {g_pitch} + j * {img})
                t0 = (oc - oc_lo) * {w_oc}
                for ci in range({cin_g}):
                    if nk == {ob}:
                        _dots(tot, t0 + ci * {n_taps}, gb, xs, ci * {chan}, n_el, zero)
                    else:
                        {remainder}
                oc += nk
        w0 = oc_lo * {w_oc}
        for i in range((oc_hi - oc_lo) * {w_oc}):
            dw_flat[w0 + i] = tot[i]
'''


def module_source(spec, stack: int) -> str:
    """The generated module for ``spec`` (a forward spec) and stacks of ``stack`` images."""
    geo, _, _ = _packed.packed_geometry(spec, stack)
    hc, wc = geo.hc, geo.wc
    taps = tuple(int(t) for t in _packed.packed_tables(spec, stack)[2].ravel())
    (oh, ow), cin_g, cout_g = spec.out_size, spec.in_per_group, spec.out_per_group
    ob, split = choose_passes(spec)
    ob_rem = cout_g % ob
    g_pitch = _grad_pitch(spec, stack)
    w_oc = cin_g * len(taps)
    what = (f"grouped conv weight gradient, {cin_g} -> {cout_g} channels per group, taps {taps}, packed pitch "
            f"{wc}, {ob} output channels x {split} taps per pass, stacks of {stack}")
    lines = [_generated.HEADER.format(generator=__name__, version=__version__, what=what),
             _generated.pack_source(spec, stack), *_grad_pack_source(oh, ow, wc)]
    lines += _dots_source("_dots", ob, split, taps, g_pitch, w_oc)
    if ob_rem:
        lines += _dots_source("_dots_rem", ob_rem, split, taps, g_pitch, w_oc)
    fmt = dict(c_in=spec.in_channels, c_out=spec.out_channels, groups=spec.groups, cin_g=cin_g, cout_g=cout_g,
               stack=stack, ob=ob, ob_rem=ob_rem, oh=oh, ow=ow, hc=hc, wc=wc, round=ROUND, g_pitch=g_pitch,
               w_oc=w_oc, n_taps=len(taps), chan=geo.channel_elems, img=hc * wc,
               in_plane=spec.in_size[0] * spec.in_size[1])
    remainder = ["_dots_rem(tot, t0 + ci * {n_taps}, gb, xs, ci * {chan}, n_el, zero)".format(**fmt)
                 if ob_rem else "pass"]
    return "\n".join(lines) + "\n" + _generated.fill(_DRIVER, remainder=remainder, **fmt)


@functools.lru_cache(maxsize=128)
def _module(spec, stack: int):
    return _generated.load(module_source(spec, stack), "nbconv_wgrad")


def task_slices(spec, threads: int) -> int:
    """Slices of a group's output channels (each slice packs the group's input again): 1 unless
    there are too few groups to give every thread 4 tasks."""
    blocks = -(-spec.out_per_group // choose_passes(spec)[0])
    return max(1, min(blocks, -(-4 * threads // spec.groups)))


def weight_grad(x: np.ndarray, gy: np.ndarray, dw: np.ndarray, spec, stack: int, slices: int | None = None) -> None:
    """``dw`` = the weight gradient of the convolution ``spec`` (C-contiguous arrays, ``x`` with
    finite values: the dot products also pair pixels with the zeros of dropped positions), in
    stacks of ``stack`` images, each group's output channels in at most ``slices`` tasks
    (default :func:`task_slices`) of whole passes."""
    threads = thread_count()
    slices = task_slices(spec, threads) if slices is None else slices
    _, scratch_elems, _ = _packed.packed_geometry(spec, stack)
    ob = choose_passes(spec)[0]
    ocs = _generated.channels_per_slice(spec.out_per_group, slices, ob)
    # the padding of scratch stays zero; each task zeroes its gy_buf and tot rows
    scratch, gy_buf, tot = _scratch.reused(("wgrad", spec, stack, threads, ocs), lambda: (
        np.zeros((threads, scratch_elems), x.dtype),
        np.empty((threads, ob * _grad_pitch(spec, stack)), x.dtype),
        np.empty((threads, ocs * spec.in_per_group * spec.kernel_size[0] * spec.kernel_size[1]), np.float64)))
    _module(spec, stack).weight_grad(x, gy, dw, scratch, gy_buf, tot, ocs, x.dtype.type(0))
