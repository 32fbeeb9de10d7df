"""``nbconv.explain``: which input channels feed which output channel in a grouped convolution.

Pure arithmetic on the channel counts, no arrays: the answer to the questions people ask about
``groups`` (weight shape, output order, what is connected, what it costs, which values are
allowed), as plain data and as a short text; ``plot()`` draws the connectivity (matplotlib).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Union

from ._divisors import divisors
from ._spec import _int, _pair

#: Groups listed one per line in ``str()``; more are elided in the middle (the fields hold all).
_SHOWN_GROUPS = 8


class ChannelMap(Mapping):
    """Output channel -> the ``range`` of input channels it reads (read-only, ``dict``-like)."""

    def __init__(self, out_channels: int, in_per_group: int, out_per_group: int):
        self._n, self._cin_g, self._cout_g = out_channels, in_per_group, out_per_group

    def __getitem__(self, o: int) -> range:
        if not isinstance(o, int) or not 0 <= o < self._n:
            raise KeyError(o)
        g = o // self._cout_g
        return range(g * self._cin_g, (g + 1) * self._cin_g)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self._n))

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"ChannelMap({dict(self)!r})" if self._n <= 8 else f"ChannelMap(<{self._n} output channels>)"


def _span(r: range) -> str:
    return f"{r.start}" if len(r) == 1 else f"{r.start}-{r.stop - 1}"


@dataclass(frozen=True)
class Explanation:
    """What a grouped convolution with these channel counts connects and costs.

    Every field is plain data. ``valid`` is False when ``groups`` does not divide both channel
    counts; then ``problem`` says why, ``nearest_groups`` holds the closest allowed values, and
    the per-group fields are empty.
    """

    in_channels: int
    out_channels: int
    groups: int
    kernel_size: tuple[int, int]
    #: The allowed ``groups``: the divisors of gcd(in_channels, out_channels).
    valid_groups: tuple[int, ...]
    valid: bool
    problem: Optional[str]
    #: The allowed values just below and above ``groups`` (one value when it is itself allowed).
    nearest_groups: tuple[int, ...]
    in_per_group: int = 0
    out_per_group: int = 0
    #: Per group g: the input channels it reads and the output channels it writes.
    group_inputs: tuple[range, ...] = ()
    group_outputs: tuple[range, ...] = ()
    #: Output channel -> its input channels (``inputs_of[o] == group_inputs[o // out_per_group]``).
    inputs_of: Mapping = field(default_factory=dict)
    #: (C_out, C_in / groups, kH, kW).
    weight_shape: tuple[int, int, int, int] = (0, 0, 0, 0)
    #: Weights (bias excluded) of this layer and of the dense layer (groups=1) with the same channels.
    params: int = 0
    dense_params: int = 0
    #: Multiply-adds per output pixel (all output channels), this layer and dense.
    macs_per_pixel: int = 0
    dense_macs_per_pixel: int = 0
    #: Outputs per input channel when groups == in_channels (depthwise), else None.
    depthwise_multiplier: Optional[int] = None

    def __str__(self) -> str:
        kh, kw = self.kernel_size
        head = (f"conv2d: in_channels={self.in_channels}, out_channels={self.out_channels}, groups={self.groups}, "
                f"kernel {kh}x{kw}")
        allowed = (f"allowed groups for {self.in_channels} -> {self.out_channels} channels: "
                   f"{', '.join(map(str, self.valid_groups))} (the divisors of gcd({self.in_channels}, "
                   f"{self.out_channels}) = {math.gcd(self.in_channels, self.out_channels)})")
        if not self.valid:
            near = " or ".join(map(str, self.nearest_groups))
            return f"{head}\n  invalid: {self.problem}\n  nearest allowed: groups={near}\n  {allowed}"
        kind = ("dense" if self.groups == 1 else
                f"depthwise, channel multiplier {self.depthwise_multiplier}" if self.depthwise_multiplier else
                f"{self.groups} groups of {self.in_per_group} inputs -> {self.out_per_group} outputs")
        lines = [f"{head}: {kind}",
                 (f"  weight shape {self.weight_shape} = (C_out, C_in/groups, kH, kW): weight[o, c, i, j] multiplies "
                  f"input channel (o // {self.out_per_group}) * {self.in_per_group} + c at kernel tap (i, j)")]
        shown = list(range(self.groups))
        if self.groups > _SHOWN_GROUPS:
            shown = shown[:_SHOWN_GROUPS - 2] + [None] + shown[-2:]  # type: ignore[list-item]
        for g in shown:
            if g is None:
                lines.append(f"  ... ({self.groups - _SHOWN_GROUPS + 1} more groups, the same pattern)")
                continue
            lines.append(f"  group {g}: inputs {_span(self.group_inputs[g])} -> outputs {_span(self.group_outputs[g])}")
        lines += [
            f"  output channel o is in group o // {self.out_per_group}; the outputs of a group are consecutive",
            (f"  every input channel feeds all {self.out_channels} outputs" if self.groups == 1 else
             f"  every input channel feeds the {self.out_per_group} output(s) of its group, so none is dropped; but "
             f"channels of different groups never meet in this layer (a later dense or shuffled layer mixes them)"),
            (f"  parameters: {self.params:,} weights (+{self.out_channels} bias); dense: {self.dense_params:,} "
             f"({self.dense_params / self.params:g}x)"),
            f"  multiply-adds per output pixel: {self.macs_per_pixel:,}; dense: {self.dense_macs_per_pixel:,}",
            f"  {allowed}",
        ]
        return "\n".join(lines)

    def plot(self, ax: Any = None, path: Optional[str] = None) -> Any:
        """Draw the connectivity: input channels on the left, output channels on the right, a line
        for every (input, output) pair that shares a weight, one colour per group.

        Needs matplotlib (``pip install "nbconv[plot]"``). Draws into ``ax`` (a new figure when
        None), saves to ``path`` when given, and returns the axes.
        """
        try:
            import matplotlib

            if ax is None and path is not None:
                matplotlib.use("Agg", force=False)
            import matplotlib.pyplot as plt
            from matplotlib.collections import LineCollection
        except ImportError:
            raise ImportError('Explanation.plot needs matplotlib: pip install "nbconv[plot]"') from None
        if not self.valid:
            raise ValueError(f"nothing to draw: {self.problem}")
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 6))
        colours = plt.get_cmap("tab10" if self.groups <= 10 else "hsv")
        y_in = lambda c: 1 - (c + 0.5) / self.in_channels
        y_out = lambda o: 1 - (o + 0.5) / self.out_channels
        for g, (ins, outs) in enumerate(zip(self.group_inputs, self.group_outputs)):
            segments = [[(0.0, y_in(c)), (1.0, y_out(o))] for c in ins for o in outs]
            colour = colours(g % 10 if self.groups <= 10 else g / self.groups)
            ax.add_collection(LineCollection(segments, colors=[colour], linewidths=0.6,
                                             alpha=max(0.08, min(0.8, 40 / len(segments)))))
            ax.scatter([0.0] * len(ins), [y_in(c) for c in ins], s=12, color=colour, zorder=3)
            ax.scatter([1.0] * len(outs), [y_out(o) for o in outs], s=12, color=colour, zorder=3)
            if self.groups <= 16:
                ax.annotate(f"group {g}\nin {_span(ins)}\nout {_span(outs)}", (1.03, (y_out(outs[0]) + y_out(outs[-1])) / 2),
                            va="center", fontsize=7, color=colour, annotation_clip=False)
        ax.set_xlim(-0.15, 1.25)
        ax.set_ylim(0, 1)
        ax.set_xticks([0, 1], [f"{self.in_channels} input channels", f"{self.out_channels} output channels"])
        ax.set_yticks([])
        for side in ("left", "right", "top"):
            ax.spines[side].set_visible(False)
        ax.set_title(f"groups={self.groups}: weight {self.weight_shape}, {self.params:,} weights "
                     f"({self.dense_params / self.params:g}x fewer than dense)", fontsize=9)
        if path is not None:
            ax.figure.savefig(path, dpi=120, bbox_inches="tight")
        return ax


def explain(in_channels: int, out_channels: int, groups: int = 1,
            kernel_size: Union[int, tuple[int, int]] = 3) -> Explanation:
    """Explain a grouped convolution: which input channels feed which output channel, the weight's
    shape, the cost against the dense layer, and which ``groups`` are allowed.

    Parameters
    ----------
    in_channels, out_channels : int
        Channel counts (positive).
    groups : int, default 1
        The ``groups`` of :func:`conv2d`. One that does not divide both counts is explained, not
        raised: the result says why and names the nearest allowed values.
    kernel_size : int or (int, int), default 3
        (kH, kW), for the weight shape and the costs.

    Returns
    -------
    Explanation
        Plain-data fields (``group_inputs``, ``group_outputs``, ``inputs_of``, ``weight_shape``,
        ``params``, ``valid_groups``, ...); ``str()`` is a short account, ``plot()`` a drawing.

    Raises
    ------
    TypeError, ValueError
        For non-integer or non-positive arguments; messages start with ``explain:``.

    Examples
    --------
    >>> import nbconv
    >>> e = nbconv.explain(3, 6, groups=3, kernel_size=1)
    >>> e.weight_shape, e.depthwise_multiplier, list(e.inputs_of[4])
    ((6, 1, 1, 1), 2, [2])
    >>> nbconv.explain(96, 256, groups=3).nearest_groups
    (2, 4)
    """
    op = "explain"
    c_in, c_out, g = (_int(op, n, v) for n, v in (("in_channels", in_channels), ("out_channels", out_channels),
                                                    ("groups", groups)))
    kh, kw = _pair(op, "kernel_size", kernel_size)
    for name, v in (("in_channels", c_in), ("out_channels", c_out), ("groups", g), ("kernel_size", min(kh, kw))):
        if v < 1:
            raise ValueError(f"{op}: {name} must be positive, got {v}")
    allowed = tuple(divisors(math.gcd(c_in, c_out)))
    below = [d for d in allowed if d <= g]
    above = [d for d in allowed if d >= g]
    nearest = tuple(sorted({below[-1]} | ({above[0]} if above else set())))
    common = dict(in_channels=c_in, out_channels=c_out, groups=g, kernel_size=(kh, kw), valid_groups=allowed,
                  nearest_groups=nearest)
    if c_in % g or c_out % g:
        which = " and ".join(f"{name} ({n})" for name, n in (("in_channels", c_in), ("out_channels", c_out)) if n % g)
        problem = (f"groups={g} does not divide {which}: each group needs a whole number of input and of output "
                   f"channels")
        return Explanation(valid=False, problem=problem, **common)
    cin_g, cout_g = c_in // g, c_out // g
    params = c_out * cin_g * kh * kw
    return Explanation(
        valid=True, problem=None, in_per_group=cin_g, out_per_group=cout_g,
        group_inputs=tuple(range(k * cin_g, (k + 1) * cin_g) for k in range(g)),
        group_outputs=tuple(range(k * cout_g, (k + 1) * cout_g) for k in range(g)),
        inputs_of=ChannelMap(c_out, cin_g, cout_g), weight_shape=(c_out, cin_g, kh, kw),
        params=params, dense_params=c_out * c_in * kh * kw, macs_per_pixel=params,
        dense_macs_per_pixel=c_out * c_in * kh * kw,
        depthwise_multiplier=cout_g if g == c_in else None, **common,
    )
