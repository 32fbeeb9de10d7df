"""``nbconv bench --network NAME``: every conv layer of a well-known network, timed against PyTorch.

The layer lists are torchvision's models (``mobilenet_v2``, ..., random weights, 224 x 224
images), read once with forward hooks and kept here as tables, so no torchvision is needed. A
network's layers run in forward order, each as often as the network has it; a pass of nbconv
and a pass of PyTorch alternate, and the speedup is the median of the passes' paired ratios,
for all conv layers and for the grouped ones alone (``groups > 1``).
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import numpy as np


class Layer(NamedTuple):
    """One conv layer of a network (square kernel and image, symmetric zero padding, no dilation);
    ``side`` is its input's side for 224 x 224 images, ``count`` how often the network has it."""

    c_in: int
    c_out: int
    k: int
    stride: int
    pad: int
    groups: int
    bias: bool
    side: int
    count: int

    def at(self, image: int) -> Layer:
        """The layer for ``image`` x ``image`` inputs (sides scale with the image; 1 x 1 stays)."""
        side = self.side if self.side == 1 else max(1, round(self.side * image / 224))
        return self._replace(side=side)

    @property
    def label(self) -> str:
        kind = "dense" if self.groups == 1 else ("depthwise" if self.groups == self.c_in else f"g{self.groups}")
        return (f"{self.c_in}->{self.c_out} {self.k}x{self.k}" + (f" s{self.stride}" if self.stride > 1 else "")
                + f" {kind} @{self.side}")

    def flops(self, batch: int) -> int:
        out = (self.side + 2 * self.pad - self.k) // self.stride + 1
        return 2 * batch * self.c_out * out * out * (self.c_in // self.groups) * self.k * self.k


#: Columns: in and out channels, kernel side, stride, padding, groups, bias, input side at
#: 224 x 224, how many times the layer occurs. Read from torchvision 0.28's models by
#: ``tests/test_networks.py`` (which checks them again when torchvision is installed).
_TABLES = {
    "mobilenet_v2": """
           3   32    3    2    1    1    0  224    1
          32   32    3    1    1   32    0  112    1
          32   16    1    1    0    1    0  112    1
          16   96    1    1    0    1    0  112    1
          96   96    3    2    1   96    0  112    1
          96   24    1    1    0    1    0   56    1
          24  144    1    1    0    1    0   56    2
         144  144    3    1    1  144    0   56    1
         144   24    1    1    0    1    0   56    1
         144  144    3    2    1  144    0   56    1
         144   32    1    1    0    1    0   28    1
          32  192    1    1    0    1    0   28    3
         192  192    3    1    1  192    0   28    2
         192   32    1    1    0    1    0   28    2
         192  192    3    2    1  192    0   28    1
         192   64    1    1    0    1    0   14    1
          64  384    1    1    0    1    0   14    4
         384  384    3    1    1  384    0   14    4
         384   64    1    1    0    1    0   14    3
         384   96    1    1    0    1    0   14    1
          96  576    1    1    0    1    0   14    3
         576  576    3    1    1  576    0   14    2
         576   96    1    1    0    1    0   14    2
         576  576    3    2    1  576    0   14    1
         576  160    1    1    0    1    0    7    1
         160  960    1    1    0    1    0    7    3
         960  960    3    1    1  960    0    7    3
         960  160    1    1    0    1    0    7    2
         960  320    1    1    0    1    0    7    1
         320 1280    1    1    0    1    0    7    1
""",
    "mobilenet_v3_small": """
           3   16    3    2    1    1    0  224    1
          16   16    3    2    1   16    0  112    1
          16    8    1    1    0    1    1    1    1
           8   16    1    1    0    1    1    1    1
          16   16    1    1    0    1    0   56    1
          16   72    1    1    0    1    0   56    1
          72   72    3    2    1   72    0   56    1
          72   24    1    1    0    1    0   28    1
          24   88    1    1    0    1    0   28    1
          88   88    3    1    1   88    0   28    1
          88   24    1    1    0    1    0   28    1
          24   96    1    1    0    1    0   28    1
          96   96    5    2    2   96    0   28    1
          96   24    1    1    0    1    1    1    1
          24   96    1    1    0    1    1    1    1
          96   40    1    1    0    1    0   14    1
          40  240    1    1    0    1    0   14    2
         240  240    5    1    2  240    0   14    2
         240   64    1    1    0    1    1    1    2
          64  240    1    1    0    1    1    1    2
         240   40    1    1    0    1    0   14    2
          40  120    1    1    0    1    0   14    1
         120  120    5    1    2  120    0   14    1
         120   32    1    1    0    1    1    1    1
          32  120    1    1    0    1    1    1    1
         120   48    1    1    0    1    0   14    1
          48  144    1    1    0    1    0   14    1
         144  144    5    1    2  144    0   14    1
         144   40    1    1    0    1    1    1    1
          40  144    1    1    0    1    1    1    1
         144   48    1    1    0    1    0   14    1
          48  288    1    1    0    1    0   14    1
         288  288    5    2    2  288    0   14    1
         288   72    1    1    0    1    1    1    1
          72  288    1    1    0    1    1    1    1
         288   96    1    1    0    1    0    7    1
          96  576    1    1    0    1    0    7    3
         576  576    5    1    2  576    0    7    2
         576  144    1    1    0    1    1    1    2
         144  576    1    1    0    1    1    1    2
         576   96    1    1    0    1    0    7    2
""",
    "resnext50_32x4d": """
           3   64    7    2    3    1    0  224    1
          64  128    1    1    0    1    0   56    1
         128  128    3    1    1   32    0   56    3
         128  256    1    1    0    1    0   56    3
          64  256    1    1    0    1    0   56    1
         256  128    1    1    0    1    0   56    2
         256  256    1    1    0    1    0   56    1
         256  256    3    2    1   32    0   56    1
         256  512    1    1    0    1    0   28    4
         256  512    1    2    0    1    0   56    1
         512  256    1    1    0    1    0   28    3
         256  256    3    1    1   32    0   28    3
         512  512    1    1    0    1    0   28    1
         512  512    3    2    1   32    0   28    1
         512 1024    1    1    0    1    0   14    6
         512 1024    1    2    0    1    0   28    1
        1024  512    1    1    0    1    0   14    5
         512  512    3    1    1   32    0   14    5
        1024 1024    1    1    0    1    0   14    1
        1024 1024    3    2    1   32    0   14    1
        1024 2048    1    1    0    1    0    7    3
        1024 2048    1    2    0    1    0   14    1
        2048 1024    1    1    0    1    0    7    2
        1024 1024    3    1    1   32    0    7    2
""",
    "efficientnet_b0": """
           3   32    3    2    1    1    0  224    1
          32   32    3    1    1   32    0  112    1
          32    8    1    1    0    1    1    1    1
           8   32    1    1    0    1    1    1    1
          32   16    1    1    0    1    0  112    1
          16   96    1    1    0    1    0  112    1
          96   96    3    2    1   96    0  112    1
          96    4    1    1    0    1    1    1    1
           4   96    1    1    0    1    1    1    1
          96   24    1    1    0    1    0   56    1
          24  144    1    1    0    1    0   56    2
         144  144    3    1    1  144    0   56    1
         144    6    1    1    0    1    1    1    2
           6  144    1    1    0    1    1    1    2
         144   24    1    1    0    1    0   56    1
         144  144    5    2    2  144    0   56    1
         144   40    1    1    0    1    0   28    1
          40  240    1    1    0    1    0   28    2
         240  240    5    1    2  240    0   28    1
         240   10    1    1    0    1    1    1    2
          10  240    1    1    0    1    1    1    2
         240   40    1    1    0    1    0   28    1
         240  240    3    2    1  240    0   28    1
         240   80    1    1    0    1    0   14    1
          80  480    1    1    0    1    0   14    3
         480  480    3    1    1  480    0   14    2
         480   20    1    1    0    1    1    1    3
          20  480    1    1    0    1    1    1    3
         480   80    1    1    0    1    0   14    2
         480  480    5    1    2  480    0   14    1
         480  112    1    1    0    1    0   14    1
         112  672    1    1    0    1    0   14    3
         672  672    5    1    2  672    0   14    2
         672   28    1    1    0    1    1    1    3
          28  672    1    1    0    1    1    1    3
         672  112    1    1    0    1    0   14    2
         672  672    5    2    2  672    0   14    1
         672  192    1    1    0    1    0    7    1
         192 1152    1    1    0    1    0    7    4
        1152 1152    5    1    2 1152    0    7    3
        1152   48    1    1    0    1    1    1    4
          48 1152    1    1    0    1    1    1    4
        1152  192    1    1    0    1    0    7    3
        1152 1152    3    1    1 1152    0    7    1
        1152  320    1    1    0    1    0    7    1
         320 1280    1    1    0    1    0    7    1
""",
    "convnext_tiny": """
           3   96    4    4    0    1    1  224    1
          96   96    7    1    3   96    1   56    3
          96  192    2    2    0    1    1   56    1
         192  192    7    1    3  192    1   28    3
         192  384    2    2    0    1    1   28    1
         384  384    7    1    3  384    1   14    9
         384  768    2    2    0    1    1   14    1
         768  768    7    1    3  768    1    7    3
""",
    "shufflenet_v2_x1_0": """
           3   24    3    2    1    1    0  224    1
          24   24    3    2    1   24    0   56    1
          24   58    1    1    0    1    0   28    1
          24   58    1    1    0    1    0   56    1
          58   58    3    2    1   58    0   56    1
          58   58    1    1    0    1    0   28    7
          58   58    3    1    1   58    0   28    3
         116  116    3    2    1  116    0   28    2
         116  116    1    1    0    1    0   14   16
         116  116    1    1    0    1    0   28    1
         116  116    3    1    1  116    0   14    7
         232  232    3    2    1  232    0   14    2
         232  232    1    1    0    1    0    7    8
         232  232    1    1    0    1    0   14    1
         232  232    3    1    1  232    0    7    3
         464 1024    1    1    0    1    0    7    1
""",
    "regnet_y_400mf": """
           3   32    3    2    1    1    0  224    1
          32   48    1    2    0    1    0  112    1
          32   48    1    1    0    1    0  112    1
          48   48    3    2    1    6    0  112    1
          48    8    1    1    0    1    1    1    1
           8   48    1    1    0    1    1    1    1
          48   48    1    1    0    1    0   56    1
          48  104    1    2    0    1    0   56    1
          48  104    1    1    0    1    0   56    1
         104  104    3    2    1   13    0   56    1
         104   12    1    1    0    1    1    1    1
          12  104    1    1    0    1    1    1    1
         104  104    1    1    0    1    0   28    5
         104  104    3    1    1   13    0   28    2
         104   26    1    1    0    1    1    1    2
          26  104    1    1    0    1    1    1    2
         104  208    1    2    0    1    0   28    1
         104  208    1    1    0    1    0   28    1
         208  208    3    2    1   26    0   28    1
         208   26    1    1    0    1    1    1    1
          26  208    1    1    0    1    1    1    1
         208  208    1    1    0    1    0   14   11
         208  208    3    1    1   26    0   14    5
         208   52    1    1    0    1    1    1    5
          52  208    1    1    0    1    1    1    5
         208  440    1    2    0    1    0   14    1
         208  440    1    1    0    1    0   14    1
         440  440    3    2    1   55    0   14    1
         440   52    1    1    0    1    1    1    1
          52  440    1    1    0    1    1    1    1
         440  440    1    1    0    1    0    7   11
         440  440    3    1    1   55    0    7    5
         440  110    1    1    0    1    1    1    5
         110  440    1    1    0    1    1    1    5
""",
    "mnasnet0_5": """
           3   16    3    2    1    1    0  224    1
          16   16    3    1    1   16    0  112    1
          16    8    1    1    0    1    0  112    1
           8   24    1    1    0    1    0  112    1
          24   24    3    2    1   24    0  112    1
          24   16    1    1    0    1    0   56    1
          16   48    1    1    0    1    0   56    3
          48   48    3    1    1   48    0   56    2
          48   16    1    1    0    1    0   56    2
          48   48    5    2    2   48    0   56    1
          48   24    1    1    0    1    0   28    1
          24   72    1    1    0    1    0   28    2
          72   72    5    1    2   72    0   28    2
          72   24    1    1    0    1    0   28    2
          24  144    1    1    0    1    0   28    1
         144  144    5    2    2  144    0   28    1
         144   40    1    1    0    1    0   14    1
          40  240    1    1    0    1    0   14    3
         240  240    5    1    2  240    0   14    2
         240   40    1    1    0    1    0   14    2
         240  240    3    1    1  240    0   14    1
         240   48    1    1    0    1    0   14    1
          48  288    1    1    0    1    0   14    2
         288  288    3    1    1  288    0   14    1
         288   48    1    1    0    1    0   14    1
         288  288    5    2    2  288    0   14    1
         288   96    1    1    0    1    0    7    1
          96  576    1    1    0    1    0    7    4
         576  576    5    1    2  576    0    7    3
         576   96    1    1    0    1    0    7    3
         576  576    3    1    1  576    0    7    1
         576  160    1    1    0    1    0    7    1
         160 1280    1    1    0    1    0    7    1
""",
}


def _parse(text: str) -> tuple[Layer, ...]:
    return tuple(Layer(*(int(v) for v in line.split()[:6]), bool(int(line.split()[6])),
                       *(int(v) for v in line.split()[7:]))
                 for line in text.strip().splitlines())


NETWORKS: dict[str, tuple[Layer, ...]] = {name: _parse(text) for name, text in _TABLES.items()}


def conv_layers(name: str) -> list[Layer]:
    """The network's conv layers in forward order of first occurrence (each with its ``count``)."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; known: {', '.join(NETWORKS)}")
    return list(NETWORKS[name])


@dataclass
class LayerResult:
    label: str
    count: int
    grouped: bool
    gflop: float  # per occurrence
    time_s: float  # median per call
    torch_time_s: float | None = None
    speedup: float | None = None  # median of per-pass paired ratios
    faults: float | None = None  # median minor page faults per pass (all its occurrences), None where unknown
    torch_faults: float | None = None


@dataclass
class NetworkResult:
    network: str
    batch: int
    image: int
    dtype: str
    time_s: float  # median pass, all conv layers
    grouped_time_s: float
    torch_time_s: float | None = None
    torch_grouped_time_s: float | None = None
    speedup: float | None = None  # median of paired pass ratios
    grouped_speedup: float | None = None
    first_pass_s: float = 0.0  # the first nbconv pass: every layer's first call, JIT included
    layers: list = field(default_factory=list)


def _arrays(layer: Layer, batch: int, dtype: str, rng) -> tuple:
    x = rng.standard_normal((batch, layer.c_in, layer.side, layer.side)).astype(dtype)
    w = rng.standard_normal((layer.c_out, layer.c_in // layer.groups, layer.k, layer.k))
    w = (w / math.sqrt(w[0].size)).astype(dtype)
    b = rng.standard_normal(layer.c_out).astype(dtype) if layer.bias else None
    return x, w, b


def _calls(layers: Sequence[Layer], batch: int, dtype: str, torch) -> tuple[list, list | None, list]:
    """Per layer, nbconv's call, PyTorch's (None without PyTorch) and the host arrays (x, w, b)."""
    from .. import conv2d

    rng = np.random.default_rng(0)
    ours, theirs, arrays = [], ([] if torch is not None else None), []
    F = torch.nn.functional if torch is not None else None
    for layer in layers:
        x, w, b = _arrays(layer, batch, dtype, rng)
        arrays.append((x, w, b))
        args = dict(stride=layer.stride, padding=layer.pad, groups=layer.groups)
        ours.append(lambda x=x, w=w, b=b, args=args: conv2d(x, w, b, **args))
        if torch is not None:
            tx, tw = torch.from_numpy(x), torch.from_numpy(w)
            tb = torch.from_numpy(b) if b is not None else None
            theirs.append(lambda tx=tx, tw=tw, tb=tb, args=args: F.conv2d(tx, tw, tb, **args))
    return ours, theirs, arrays


def _check(layers, ours, theirs, arrays, dtype) -> None:
    """Each layer's result against PyTorch's, or against a float64 NumPy conv without PyTorch."""
    from ._check import conv2d_numpy, max_scaled_error

    tolerance = 1e-4 if dtype == "float32" else 1e-10
    for j, (layer, call) in enumerate(zip(layers, ours)):
        if theirs is not None:
            want = theirs[j]().numpy().astype(np.float64)
        else:
            p = layer.pad
            want = conv2d_numpy(*arrays[j], (layer.stride,) * 2, (p, p, p, p), (1, 1), layer.groups)
        err = max_scaled_error(call(), want)
        if not err <= tolerance:
            raise AssertionError(f"{layer.label}: nbconv differs from the check by {err:.3g} (scaled)")


def _minor_faults() -> int | None:
    """Minor page faults of this process so far (None where ``resource`` is missing)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _timed_pass(calls: Sequence[Callable], layers: Sequence[Layer]) -> tuple[list[float], list[int | None]]:
    """Seconds and minor page faults per layer (all its occurrences) of one pass over the
    network in forward order. Page faults are the first touch of memory the allocator has just
    taken from the system; they depend on what ran before, and can make up most of a large
    layer's time (its output written for the first time), so they are counted apart."""
    times, faults = [], []
    for call, layer in zip(calls, layers):
        f0 = _minor_faults()
        t0 = time.perf_counter()
        for _ in range(layer.count):
            call()
        times.append(time.perf_counter() - t0)
        f1 = _minor_faults()
        faults.append(None if f0 is None else f1 - f0)
    return times, faults


def run_network_bench(name: str, batch: int = 2, dtype: str = "float32", rounds: int = 15,
                      image: int = 224, torch=None,
                      progress: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
                      ) -> NetworkResult:
    """Time every conv layer of network ``name`` by ``nbconv.conv2d`` on NumPy arrays, and by
    ``torch.nn.functional.conv2d`` when ``torch`` is given (same threads, interleaved passes)."""
    from ._timing import warm_allocator

    layers = [layer.at(image) for layer in conv_layers(name)]
    ours, theirs, arrays = _calls(layers, batch, dtype, torch)
    warm_allocator()
    t0 = time.perf_counter()
    for call in ours:
        call()
    first = time.perf_counter() - t0
    _check(layers, ours, theirs, arrays, dtype)
    progress(f"{name}: first pass {first:.2f} s (JIT included); {rounds} interleaved passes ...")
    mine, twins, mine_faults, twin_faults = [], [], [], []
    for i in range(rounds):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for who in order:
            if who == 0:
                times, faults = _timed_pass(ours, layers)
                mine.append(times)
                mine_faults.append(faults)
            elif theirs is not None:
                times, faults = _timed_pass(theirs, layers)
                twins.append(times)
                twin_faults.append(faults)
    med = statistics.median
    grouped = [j for j, layer in enumerate(layers) if layer.groups > 1]

    def total(p, idx=None):
        return sum(p) if idx is None else sum(p[j] for j in idx)

    result = NetworkResult(name, batch, image, dtype, med(total(p) for p in mine),
                           med(total(p, grouped) for p in mine), first_pass_s=first)
    if twins:
        result.torch_time_s = med(total(p) for p in twins)
        result.torch_grouped_time_s = med(total(p, grouped) for p in twins)
        result.speedup = med(total(t) / total(m) for m, t in zip(mine, twins))
        if grouped:
            result.grouped_speedup = med(total(t, grouped) / total(m, grouped) for m, t in zip(mine, twins))
    for j, layer in enumerate(layers):
        row = LayerResult(layer.label, layer.count, layer.groups > 1, layer.flops(batch) / 1e9,
                          med(p[j] for p in mine) / layer.count, faults=_median_faults(mine_faults, j))
        if twins:
            row.torch_time_s = med(p[j] for p in twins) / layer.count
            row.speedup = med(t[j] / m[j] for m, t in zip(mine, twins))
            row.torch_faults = _median_faults(twin_faults, j)
        result.layers.append(row)
    return result


def _median_faults(passes: Sequence[Sequence[int | None]], j: int) -> float | None:
    values = [p[j] for p in passes]
    return None if not values or None in values else statistics.median(values)


def format_network_table(results: Sequence[NetworkResult]) -> str:
    """One row per network: all its conv layers, and the grouped ones alone."""
    has_torch = any(r.speedup is not None for r in results)
    head = "| network | conv layers (grouped) | nbconv ms | first pass s |"
    rule = "|---|---|---:|---:|"
    if has_torch:
        head += " PyTorch ms | all convs | grouped convs only |"
        rule += "---:|---:|---:|"
    rows = [head, rule]
    for r in results:
        n = sum(layer.count for layer in r.layers)
        g = sum(layer.count for layer in r.layers if layer.grouped)
        row = f"| {r.network} | {n} ({g}) | {r.time_s * 1e3:.1f} | {r.first_pass_s:.2f} |"
        if has_torch:
            gs = f"{r.grouped_speedup:.2f}x" if r.grouped_speedup else "-"
            row += f" {r.torch_time_s * 1e3:.1f} | {r.speedup:.2f}x | {gs} |"
        rows.append(row)
    if has_torch and len(results) > 1:
        gm = math.exp(statistics.fmean(math.log(r.speedup) for r in results))
        rows.append(f"| **geometric mean** | | | | | **{gm:.2f}x** | |")
    return "\n".join(rows)


def format_layer_table(result: NetworkResult) -> str:
    """One row per distinct layer of a network, in forward order."""
    has_torch = result.speedup is not None
    head = "| layer | count | ms | GFLOP/s | page faults |"
    head += " torch ms | torch page faults | speedup |" if has_torch else ""
    rule = "|---|---:|---:|---:|---:|" + ("---:|---:|---:|" if has_torch else "")
    rows = [head, rule]

    def faults(n):
        return "-" if n is None else f"{n:.0f}"

    for r in result.layers:
        row = f"| {r.label} | {r.count} | {r.time_s * 1e3:.3f} | {r.gflop / r.time_s:.1f} | {faults(r.faults)} |"
        if has_torch:
            row += f" {r.torch_time_s * 1e3:.3f} | {faults(r.torch_faults)} | {r.speedup:.2f}x |"
        rows.append(row)
    return "\n".join(rows)


def network_json(results: Sequence[NetworkResult], machine: dict) -> dict:
    return {"machine": machine, "results": [asdict(r) for r in results]}
