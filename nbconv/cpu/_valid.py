"""Which taps of a convolution read input pixels, not padding, at which output pixels: for the
kernels that read their input where it lies and leave out the padding's terms.

Leaving out a term ``0 x v`` changes no sum while ``v`` is finite. Where ``v`` (a weight, or an
output gradient value) may be inf or NaN the reference has NaN there; the kernels then compute
again with the padding's zeros (a non-finite weight is seen before; a non-finite gradient value
leaves a non-finite total, since it meets an input pixel too: :func:`valid_tap_regions` makes
sure every output pixel reads one).
"""

from __future__ import annotations

import functools


def valid_intervals(n_out: int, n_in: int, stride: int, dilation: int, pad: int,
                    k_n: int) -> list[tuple[int, int, tuple[int, ...]]]:
    """The output positions ``0 .. n_out`` split where the set of kernel positions that read an
    input pixel (not padding) changes: ``[(lo, hi, kernel positions), ...]``."""
    valid = []
    for k in range(k_n):
        lo = max(0, -(-(pad - k * dilation) // stride))
        hi = min(n_out, (n_in - 1 + pad - k * dilation) // stride + 1)
        valid.append((lo, max(lo, hi)))
    cuts = sorted({0, n_out} | {min(max(e, 0), n_out) for interval in valid for e in interval})
    return [(a, b, tuple(k for k, (lo, hi) in enumerate(valid) if lo <= a and b <= hi)) for a, b in zip(cuts, cuts[1:])]


def flat_tap_offsets(spec) -> tuple[int, ...]:
    """Per tap (``kh * kW + kw``), the offset from an output pixel's first input pixel
    (``oy * sH * W + ox * sW``) to the input pixel the tap reads, in the unpadded plane: negative
    above and left of it. Valid only where the tap reads an input pixel."""
    (dh, dw), (kh_n, kw_n), w = spec.dilation, spec.kernel_size, spec.in_size[1]
    pt, pl = spec.padding[0], spec.padding[2]
    return tuple((kh * dh - pt) * w + kw * dw - pl for kh in range(kh_n) for kw in range(kw_n))


@functools.lru_cache(maxsize=256)
def valid_tap_regions(spec) -> tuple[tuple[int, int, int, int, tuple[int, ...]], ...] | None:
    """The output pixels in rectangles by which taps read input pixels there, not padding:
    ``((row_lo, row_hi, col_lo, col_hi, tap indices), ...)`` (taps numbered ``kh * kW + kw``): 9% of
    resnext_g32_14's terms are the padding's. One region of every tap where no padding is read; None where some output pixel reads padding
    only (its gradient would then meet no input pixel, so a non-finite value there would not show
    in the result), or the input is dilated."""
    if spec.lhs_dilation != (1, 1):
        return None
    (sh, sw), (dh, dw), (kh_n, kw_n) = spec.stride, spec.dilation, spec.kernel_size
    pt, _, pl, _ = spec.padding
    rows = valid_intervals(spec.out_size[0], spec.in_size[0], sh, dh, pt, kh_n)
    cols = valid_intervals(spec.out_size[1], spec.in_size[1], sw, dw, pl, kw_n)
    if any(not ks for _, _, ks in rows + cols):
        return None
    return tuple((r0, r1, c0, c1, tuple(kh * kw_n + kw for kh in khs for kw in kws))
                 for r0, r1, khs in rows for c0, c1, kws in cols)


def reads_padding(regions, n_taps: int) -> bool:
    """Whether some output pixel of :func:`valid_tap_regions`' ``regions`` has a tap on padding
    (so a kernel that leaves those terms out may differ where values are non-finite)."""
    return any(len(taps) < n_taps for *_, taps in regions)
