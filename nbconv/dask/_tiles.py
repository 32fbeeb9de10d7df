"""How a chunked convolution is cut into independent tasks: pure arithmetic on chunk sizes.

Along a spatial axis, every output index ``i`` reads the padded input ``i*s .. i*s + d*(k-1)``;
it is computed by the task of the input chunk that holds the centre of its window (clamped into
the input), so no output is computed twice or lost, whatever the stride, padding, dilation and
chunking, and a 'same' convolution's output chunks are its input's. A task reads its chunk plus the halo its windows reach into (which may span several
later chunks when they are small), and pads only where its region meets the input's edge.

Along the channel axis a task holds whole groups: a chunk boundary that cuts a group is moved
down to the group's start (the chunks are merged there), and the output channels of a task are
its groups' outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise


@dataclass(frozen=True)
class Tile:
    """One task along one spatial axis: outputs ``[out_start, out_stop)``, computed from input
    ``[in_start, in_stop)`` padded by ``pad_near`` before and ``pad_far`` after."""

    out_start: int
    out_stop: int
    in_start: int
    in_stop: int
    pad_near: int
    pad_far: int


def _offsets(chunks: tuple[int, ...]) -> list[int]:
    out = [0]
    for c in chunks:
        out.append(out[-1] + c)
    return out


def _tile(i0: int, i1: int, size: int, pad_near: int, k: int, stride: int, dilation: int) -> Tile:
    first = i0 * stride - pad_near
    last = (i1 - 1) * stride - pad_near + dilation * (k - 1)
    return Tile(i0, i1, max(first, 0), min(last, size - 1) + 1, max(-first, 0), max(last - (size - 1), 0))


def output_tiles(chunks: tuple[int, ...], pad_near: int, k: int, stride: int, dilation: int,
                 n_out: int) -> list[Tile]:
    """The tasks of a forward convolution along an axis whose input has these ``chunks``."""
    size = sum(chunks)
    bounds = _offsets(chunks)
    owner = []  # the chunk holding each output's (clamped) window centre
    for i in range(n_out):
        centre = min(max(i * stride - pad_near + dilation * (k - 1) // 2, 0), size - 1)
        owner.append(max(c for c in range(len(chunks)) if bounds[c] <= centre))
    ranges: list[list[int]] = []
    for i, c in enumerate(owner):
        if ranges and owner[ranges[-1][0]] == c:
            ranges[-1][1] = i + 1
        else:
            ranges.append([i, i + 1])
    tiles = [_tile(a, b, size, pad_near, k, stride, dilation) for a, b in ranges]
    # a range whose windows all lie in the padding reads no input: merge it into a neighbour
    merged: list[Tile] = []
    for t in tiles:
        if merged and (t.in_stop <= t.in_start or merged[-1].in_stop <= merged[-1].in_start):
            t = _tile(merged.pop().out_start, t.out_stop, size, pad_near, k, stride, dilation)
        merged.append(t)
    return merged


def gradient_tiles(chunks: tuple[int, ...], pad_near: int, k: int, stride: int, dilation: int,
                   n_out: int) -> list[tuple[int, int, Tile | None]]:
    """The tasks of an input gradient along an axis: for each input chunk ``[a, b)``, the outputs
    whose windows meet it and the forward tile (their windows' union) to differentiate, or None
    when no window meets the chunk (its gradient is zero)."""
    size = sum(chunks)
    bounds = _offsets(chunks)
    span = dilation * (k - 1)
    out = []
    for a, b in pairwise(bounds):
        lo = max(0, -(-(a + pad_near - span) // stride))
        hi = min(n_out, (b - 1 + pad_near) // stride + 1)
        # outputs lo..hi-1 have window starts <= b-1 and ends >= a; a strided window may skip [a, b)
        touching = [i for i in range(lo, hi) if _meets(i, a, b, pad_near, k, stride, dilation)]
        if not touching:
            out.append((a, b, None))
            continue
        out.append((a, b, _tile(touching[0], touching[-1] + 1, size, pad_near, k, stride, dilation)))
    return out


def _meets(i: int, a: int, b: int, pad_near: int, k: int, stride: int, dilation: int) -> bool:
    return any(a <= i * stride - pad_near + j * dilation < b for j in range(k))


def group_aligned(chunks: tuple[int, ...], per_group: int) -> tuple[int, ...]:
    """Channel chunks holding whole groups: each boundary moved down to its group's start."""
    bounds = sorted({(o // per_group) * per_group for o in _offsets(chunks)})
    total = sum(chunks)
    if bounds[-1] != total:
        bounds.append(total)
    return tuple(b - a for a, b in pairwise(bounds) if b > a)
