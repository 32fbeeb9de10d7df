"""A strided transposed convolution as ``stride**2`` stride-1 convolutions, one per output phase.

``conv_transpose2d`` (and so ``grad.conv2d_input`` of a strided layer) is the stride-1
convolution of its input dilated by the stride ``s``: ``s - 1`` zeros between input pixels. A
kernel that walks the dilated input multiplies those zeros too (``s**2`` times the work at
``s = 2``, ``3x3``). Split by output phase instead: the outputs ``oy = py + s * m`` only ever meet
input pixels through the taps ``kh`` with ``(py - pad + kh * dh) % s == 0``; those taps are
evenly spaced (every ``s / gcd(dh, s)``-th), and the input pixels they meet are consecutive
pixels of the *undilated* input, ``dh / gcd(dh, s)`` apart. So each phase is an ordinary
stride-1 convolution of the undilated input, with a sub-kernel (a strided view of the flipped
weight), its own padding and dilation, writing a strided view of the output
(``out[..., py::s, px::s]``). No zero is read or multiplied, and nothing is copied.

Where a phase would get no tap at all (a kernel smaller than the stride), the split does not
apply and the caller keeps the kernel that walks the dilated input.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple


class AxisPhase(NamedTuple):
    """One output phase along one axis."""

    phase: int  # p: the outputs p, p + s, p + 2s, ...
    out_len: int  # how many
    taps: int  # T: kernel taps this phase meets
    weight_start: int  # the sub-kernel is weight[start :: step][:T] along this axis (as stored)
    weight_step: int
    pad: int  # padding of the stride-1 sub-convolution (negative: cropped)
    dilation: int  # its dilation, in undilated input pixels


def axis_phases(out_len: int, k: int, pad: int, dilation: int, stride: int) -> list[AxisPhase] | None:
    """The ``stride`` phases of one axis of a transposed convolution whose stride-1 form has
    ``out_len`` outputs, ``k`` taps, padding ``pad`` (top/left) and ``dilation`` (over the input
    dilated by ``stride``); None if a phase meets no tap."""
    g = math.gcd(dilation, stride)
    step = stride // g  # every step-th tap falls on a real input pixel for a given phase
    phases = []
    for p in range(min(stride, out_len)):
        # taps kh with (p - pad + kh * dilation) % stride == 0; the first one, kh0
        first = next((kh for kh in range(min(k, step)) if (p - pad + kh * dilation) % stride == 0), None)
        if first is None:
            return None
        taps = (k - 1 - first) // step + 1
        # output p + s*m reads undilated pixel m + (p - pad + kh * dilation) / s for kh = first + t*step
        base = (p - pad + first * dilation) // stride
        # the kernel reads its weight flipped: sub-tap u (flipped) is tap first + (T - 1 - u) * step
        start = k - 1 - first - (taps - 1) * step
        phases.append(AxisPhase(p, -(-(out_len - p) // stride), taps, start, step, -base, dilation // g))
    return phases


class Phase(NamedTuple):
    spec: object  # the stride-1 sub-convolution's ConvSpec (no lhs_dilation)
    rows: slice  # the weight's kernel rows and columns it reads (strided, as stored) ...
    cols: slice
    out_rows: slice  # ... and the output rows and columns it writes
    out_cols: slice


def phases(spec) -> list[Phase] | None:
    """The stride-1 sub-convolutions of a strided transposed convolution ``spec``, or None
    when the split does not apply (not strided, or a phase that meets no tap)."""
    (sh, sw) = spec.lhs_dilation
    if (sh, sw) == (1, 1) or not spec.transposed_weight or spec.stride != (1, 1):
        return None
    (oh, ow), (kh, kw), (dh, dw) = spec.out_size, spec.kernel_size, spec.dilation
    pt, _, pl, _ = spec.padding
    along_h = axis_phases(oh, kh, pt, dh, sh)
    along_w = axis_phases(ow, kw, pl, dw, sw)
    if along_h is None or along_w is None:
        return None
    out = []
    for ph in along_h:
        for pw in along_w:
            sub = dataclasses.replace(
                spec, kernel_size=(ph.taps, pw.taps), dilation=(ph.dilation, pw.dilation),
                padding=(ph.pad, ph.pad, pw.pad, pw.pad), out_size=(ph.out_len, pw.out_len), lhs_dilation=(1, 1),
            )
            out.append(Phase(sub,
                             slice(ph.weight_start, ph.weight_start + (ph.taps - 1) * ph.weight_step + 1, ph.weight_step),
                             slice(pw.weight_start, pw.weight_start + (pw.taps - 1) * pw.weight_step + 1, pw.weight_step),
                             slice(ph.phase, None, sh), slice(pw.phase, None, sw)))
    return out
