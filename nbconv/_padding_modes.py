"""``padding_mode`` 'reflect', 'replicate' and 'circular' without a padded copy of the input.

PyTorch's ``nn.Conv2d`` pads a whole copy of the input and convolves that. Here, a backend
that takes the mode in its kernel gets the forward whole (``nbconv._dispatch.takes_padding_mode``:
the CPU's depthwise layers fill each task's padded plane by the mode). Otherwise, every output
whose window lies inside the input is what the zero-padded convolution gives, so that one runs
over the whole input first (the fast kernels, no copy); then the outputs whose windows reach into
the padding (a frame of output rows and columns: top and bottom bands over the full width, left
and right bands between them) are computed again from *slabs*: small gathered copies of just the
input rows and columns those outputs read, padded by the mode, convolved with no padding. Extra
memory: one slab at a time, about (pad + dilated kernel) rows or columns of the input, against
the whole padded input for a padded copy.

The gradients follow from linearity. With ``P`` the padding (each padded value is a copy of an
input value) and ``P0`` zero padding: the input gradient is ``P0^T g + (the gradient that reached
the padded positions, folded back onto the input values they copy)``, and the weight gradient is
``conv2d_weight(P0 x) + conv2d_weight(P x - P0 x)``, where ``P x - P0 x`` is zero outside the
padding, so only the frame's outputs contribute. Both are computed per slab.

Works on NumPy, CuPy and torch arrays (slices, ``+=`` and integer-list indexing); other DLPack
arrays are viewed as NumPy or CuPy first.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from . import _arrays, _dispatch
from ._spec import ConvSpec

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def check_mode(op: str, mode: Any) -> str:
    if not isinstance(mode, str) or mode not in PADDING_MODES:
        raise ValueError(f"{op}: padding_mode must be one of {', '.join(map(repr, PADDING_MODES))}, got {mode!r}")
    return mode


def check_geometry(spec: ConvSpec, mode: str) -> None:
    """PyTorch's limits: reflect needs padding < input size, circular padding <= input size."""
    if mode in ("zeros", "replicate"):
        return
    pads = spec.padding
    for (near, far), size, axis in ((pads[:2], spec.in_size[0], "H"), (pads[2:], spec.in_size[1], "W")):
        if mode == "reflect" and max(near, far) >= size:
            raise ValueError(f"{spec.op}: padding_mode='reflect' needs padding < input size along {axis}, got "
                             f"padding ({near}, {far}) for size {size}")
        if mode == "circular" and max(near, far) > size:
            raise ValueError(f"{spec.op}: padding_mode='circular' needs padding <= input size along {axis}, got "
                             f"padding ({near}, {far}) for size {size}")


def source_index(q: int, size: int, mode: str) -> int:
    """The input index a padded position ``q`` (in input coordinates: -pad ... size + pad - 1) copies."""
    if 0 <= q < size:
        return q
    if mode == "reflect":
        return -q if q < 0 else 2 * (size - 1) - q
    if mode == "replicate":
        return min(max(q, 0), size - 1)
    return q % size  # circular


@dataclass(frozen=True)
class _Axis:
    """Along one axis: the output ranges whose windows reach into the near and far padding."""

    near_end: int  # outputs [0, near_end) read the near padding
    far_start: int  # outputs [far_start, n_out) read the far padding
    n_out: int


def _axis(size: int, pad_near: int, k: int, stride: int, dilation: int, n_out: int) -> _Axis:
    near_end = min(n_out, -(-pad_near // stride))
    last_inside = pad_near + size - 1 - dilation * (k - 1)  # padded start of the last window that fits
    far_start = last_inside // stride + 1 if last_inside >= 0 else 0
    return _Axis(near_end, min(n_out, max(near_end, far_start)), n_out)


@dataclass(frozen=True)
class Slab:
    """One rectangle of frame outputs and the padded input it reads.

    ``rows`` / ``cols``: for each slab row (column), the input index it copies; ``real_rows`` /
    ``real_cols``: the slab's run of rows (columns) that are input, not padding, as a slice.
    """

    out_rows: slice
    out_cols: slice
    rows: tuple[int, ...]
    cols: tuple[int, ...]
    real_rows: slice
    real_cols: slice


def _slab_axis(out: slice, size: int, pad_near: int, k: int, stride: int, dilation: int,
               mode: str) -> tuple[tuple[int, ...], slice]:
    first = out.start * stride
    last = (out.stop - 1) * stride + dilation * (k - 1)
    qs = range(first - pad_near, last - pad_near + 1)
    inside = [i for i, q in enumerate(qs) if 0 <= q < size]
    real = slice(inside[0], inside[-1] + 1) if inside else slice(0, 0)
    return tuple(source_index(q, size, mode) for q in qs), real


def slabs(spec: ConvSpec, mode: str) -> list[Slab]:
    """The frame of ``spec``'s output that reads padding, as at most four disjoint rectangles."""
    (h, w), (kh, kw), (sh, sw), (dh, dw) = spec.in_size, spec.kernel_size, spec.stride, spec.dilation
    pt, _, pl, _ = spec.padding
    ho, wo = spec.out_size
    rows, cols = _axis(h, pt, kh, sh, dh, ho), _axis(w, pl, kw, sw, dw, wo)
    everything = slice(0, wo)
    boxes = [(slice(0, rows.near_end), everything), (slice(rows.far_start, ho), everything),
             (slice(rows.near_end, rows.far_start), slice(0, cols.near_end)),
             (slice(rows.near_end, rows.far_start), slice(cols.far_start, wo))]
    out = []
    for r, c in boxes:
        if r.stop <= r.start or c.stop <= c.start:
            continue
        row_src, real_r = _slab_axis(r, h, pt, kh, sh, dh, mode)
        col_src, real_c = _slab_axis(c, w, pl, kw, sw, dw, mode)
        out.append(Slab(r, c, row_src, col_src, real_r, real_c))
    return out


def _viewed(a: Any) -> Any:
    """``a`` as an array that supports slicing, ``+=`` and list indexing (DLPack -> NumPy/CuPy)."""
    if a is None:
        return None
    kind = _arrays.array_kind(a)
    if kind in (_arrays.NUMBA, _arrays.CAI):
        raise TypeError(f"padding_mode other than 'zeros' takes NumPy, CuPy or torch arrays, got "
                        f"{_arrays.describe_kind(kind)}")
    return _arrays.native(a, kind) if kind in (_arrays.DLPACK_CPU, _arrays.DLPACK_CUDA) else a


def gather(x: Any, slab: Slab) -> Any:
    """The padded input the slab's outputs read, gathered from ``x``: first along the axis the slab
    takes the smaller share of (a band of a few columns is never first gathered as all its rows of
    the whole width), so the temporary is never larger than the slab's band."""
    h, w = x.shape[-2], x.shape[-1]
    if len(slab.cols) * h < len(slab.rows) * w:
        return x[..., list(slab.cols)][..., list(slab.rows), :]
    return x[..., list(slab.rows), :][..., list(slab.cols)]


def _zero_pad_args(spec: ConvSpec) -> dict:
    pt, pb, pl, pr = spec.padding
    return dict(stride=spec.stride, padding=((pt, pb), (pl, pr)), dilation=spec.dilation, groups=spec.groups)


def _slab_args(spec: ConvSpec) -> dict:
    return dict(stride=spec.stride, padding=0, dilation=spec.dilation, groups=spec.groups)


def conv2d(spec: ConvSpec, mode: str, input: Any, weight: Any, bias: Any, out: Optional[Any]) -> Any:
    """``conv2d`` with ``padding_mode``: in the kernel where the backend takes the mode (the
    CPU's depthwise layers), else the zero-padded result, its frame computed again per slab."""
    from ._conv import conv2d as conv

    padded = dataclasses.replace(spec, padding_mode=mode)
    if _dispatch.takes_padding_mode(padded):
        return _dispatch.conv2d_forward(padded, input, weight, bias, out)
    y = conv(input, weight, bias, **_zero_pad_args(spec), out=out)
    if spec.batch == 0:
        return y
    x, w, b, yv = _viewed(input), _viewed(weight), _viewed(bias), _viewed(y)
    for slab in slabs(spec, mode):
        yv[..., slab.out_rows, slab.out_cols] = conv(gather(x, slab), w, b, **_slab_args(spec))
    return y


def conv2d_input(spec: ConvSpec, mode: str, input_size: Any, weight: Any, grad_output: Any,
                 out: Optional[Any]) -> Any:
    """The input gradient with ``padding_mode``: the zero-padded one, plus per slab the gradient that
    reached its padded entries, added onto the input values they copy."""
    from .grad import conv2d_input as conv_input

    gx = conv_input(input_size, weight, grad_output, **_zero_pad_args(spec), out=out)
    if spec.batch == 0:
        return gx
    w, gy, gxv = _viewed(weight), _viewed(grad_output), _viewed(gx)
    lead = tuple(input_size[:-2])
    for slab in slabs(spec, mode):
        g = conv_input(lead + (len(slab.rows), len(slab.cols)), w, gy[..., slab.out_rows, slab.out_cols],
                       **_slab_args(spec))
        _fold(gxv, g, slab)
    return gx


def _fold(gx: Any, g: Any, slab: Slab) -> None:
    """Add the padded entries of ``g`` (the gradient over the slab) onto the input entries they copy.
    Several padded entries may copy one input entry (replicate): one ``+=`` each, never a
    duplicate index inside one."""
    rr, rc = slab.real_rows, slab.real_cols
    pad_rows = [i for i in range(len(slab.rows)) if not rr.start <= i < rr.stop]
    pad_cols = [j for j in range(len(slab.cols)) if not rc.start <= j < rc.stop]
    dest_r = slice(slab.rows[rr.start], slab.rows[rr.start] + rr.stop - rr.start) if rr.stop > rr.start else None
    dest_c = slice(slab.cols[rc.start], slab.cols[rc.start] + rc.stop - rc.start) if rc.stop > rc.start else None
    for i in pad_rows:
        if dest_c is not None:
            gx[..., slab.rows[i], dest_c] += g[..., i, rc]
        for j in pad_cols:
            gx[..., slab.rows[i], slab.cols[j]] += g[..., i, j]
    if dest_r is not None:
        for j in pad_cols:
            gx[..., dest_r, slab.cols[j]] += g[..., rr, j]


def conv2d_weight(spec: ConvSpec, mode: str, input: Any, weight_size: Any, grad_output: Any,
                  out: Optional[Any]) -> Any:
    """The weight gradient with ``padding_mode``: the zero-padded one, plus per slab the one of the
    slab's padding values alone (its input entries zeroed)."""
    from .grad import conv2d_weight as conv_weight

    gw = conv_weight(input, weight_size, grad_output, **_zero_pad_args(spec), out=out)
    if spec.batch == 0:
        return gw
    x, gy, gwv = _viewed(input), _viewed(grad_output), _viewed(gw)
    for slab in slabs(spec, mode):
        padding_only = gather(x, slab)
        padding_only[..., slab.real_rows, slab.real_cols] = 0
        gwv += conv_weight(padding_only, weight_size, gy[..., slab.out_rows, slab.out_cols], **_slab_args(spec))
    return gw
