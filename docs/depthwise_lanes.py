"""The depthwise forward with channels in the lanes (``nbconv/cpu/_depthwise_lanes.py``) against
the one with output columns in the lanes (``nbconv/cpu/_depthwise.py``) and PyTorch's
``F.conv2d`` (when installed), called in turn on the same arrays, ``--rounds`` times; each cell is
a median in ms, each ratio the median of the per-round ratios. Both nbconv kernels must give the
same bits. The shapes are MobileNetV2's, EfficientNet-B0's and ConvNeXt-T's depthwise layers
(``padding = k // 2``), float32::

    python docs/depthwise_lanes.py [--batch 8] [--rounds 25]

The last column says whether the launcher takes the lanes kernel (``_depthwise_lanes.prefers``).
With ``--network NAME[,NAME]`` (see ``nbconv bench --network``) it times instead the depthwise
layers of those networks through ``nbconv.conv2d``, as the launcher chooses and with the lanes
kernel never preferred, passes alternating, per layer (each as often as the network has it).
"""

from __future__ import annotations

import argparse
import sys
import time

import numba
import numpy as np

from nbconv._spec import conv2d_spec
from nbconv.bench._run import _cpu_model
from nbconv.cpu import _depthwise, _depthwise_lanes
from nbconv.cpu._target import target

#: (channels, output side, kernel side, stride)
SHAPES = [(768, 7, 7, 1), (384, 14, 7, 1), (192, 28, 7, 1), (96, 56, 7, 1),
          (1152, 7, 5, 1), (672, 14, 5, 1), (240, 28, 5, 1), (240, 14, 5, 2), (672, 7, 5, 2),
          (960, 7, 3, 1), (576, 14, 3, 1), (192, 28, 3, 1), (144, 56, 3, 1), (32, 112, 3, 1),
          (576, 7, 3, 2), (192, 14, 3, 2), (144, 28, 3, 2), (96, 56, 3, 2)]


def _torch_call(x, w, b, stride, padding):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(numba.get_num_threads())
    xt, wt, bt = map(torch.from_numpy, (x, w, b))
    return lambda: torch.nn.functional.conv2d(xt, wt, bt, stride=stride, padding=padding, groups=x.shape[1])


def _paired(fns, rounds: int) -> np.ndarray:
    """(functions, rounds) times in seconds, the functions called in turn each round."""
    for fn in fns:
        fn()
    times = np.empty((len(fns), rounds))
    for r in range(rounds):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            times[i, r] = time.perf_counter() - t0
    return times


def compare_networks(names: str, batch: int, rounds: int) -> None:
    import nbconv
    from nbconv.bench._networks import conv_layers

    chosen = _depthwise_lanes.prefers
    for name in names.split(","):
        rng = np.random.default_rng(0)
        calls = []
        for layer in conv_layers(name):
            if layer.groups == 1 or layer.groups != layer.c_in:
                continue
            x = rng.standard_normal((batch, layer.c_in, layer.side, layer.side), dtype=np.float32)
            w = rng.standard_normal((layer.c_out, 1, layer.k, layer.k), dtype=np.float32)
            calls.append((layer, lambda x=x, w=w, layer=layer: [
                nbconv.conv2d(x, w, None, stride=layer.stride, padding=layer.pad, groups=layer.groups)
                for _ in range(layer.count)]))
        times = np.empty((len(calls), 2, rounds))
        try:
            for r in range(-1, rounds):  # a first round to compile
                for mode, prefers in enumerate((chosen, lambda spec: False)):
                    _depthwise_lanes.prefers = prefers
                    for i, (_, fn) in enumerate(calls):
                        t0 = time.perf_counter()
                        fn()
                        if r >= 0:
                            times[i, mode, r] = time.perf_counter() - t0
        finally:
            _depthwise_lanes.prefers = chosen
        total = np.median(times.sum(axis=0), axis=-1) * 1e3
        print(f"\n{name}, batch {batch}: depthwise layers {total[0]:.2f} ms as chosen, {total[1]:.2f} ms without the "
              f"lanes kernel ({np.median(times[:, 0].sum(0) / times[:, 1].sum(0)):.2f}x the time)")
        print("| layer | count | as chosen ms | without lanes ms | ratio |\n|---|---:|---:|---:|---:|")
        for (layer, _), t in zip(calls, times):
            print(f"| {layer.label} | {layer.count} | {np.median(t[0]) * 1e3:.3f} | {np.median(t[1]) * 1e3:.3f} | "
                  f"{np.median(t[0] / t[1]):.2f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--network")
    a = parser.parse_args(argv)
    print(f"{_cpu_model()} ({target().name}), {numba.get_num_threads()} threads, batch {a.batch}, float32, "
          f"medians of {a.rounds} rounds")
    if a.network:
        compare_networks(a.network, a.batch, a.rounds)
        return 0
    print("| layer | lanes ms | GFLOP/s | depthwise ms | lanes / depthwise | torch ms | torch / lanes | same bits | taken |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---|")
    for c, side, k, stride in SHAPES:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((a.batch, c, side * stride, side * stride), dtype=np.float32)
        w = rng.standard_normal((c, 1, k, k), dtype=np.float32)
        b = rng.standard_normal(c).astype(np.float32)
        spec = conv2d_spec(x, w, b, stride, k // 2, 1, c)
        lanes_out, cols_out = np.empty(spec.output_shape, np.float32), np.empty(spec.output_shape, np.float32)
        fns = [lambda: _depthwise_lanes.depthwise_forward(x, w, b, lanes_out, spec),
               lambda: _depthwise.depthwise_forward(x, w, b, cols_out, spec)]
        torch_fn = _torch_call(x, w, b, stride, k // 2)
        if torch_fn is not None:
            fns.append(torch_fn)
        t = _paired(fns, a.rounds)
        flops = 2 * a.batch * c * spec.out_size[0] * spec.out_size[1] * k * k
        lanes_ms = np.median(t[0]) * 1e3
        torch_cells = (f"{np.median(t[2]) * 1e3:.3f} | {np.median(t[2] / t[0]):.2f}" if torch_fn else "- | -")
        print(f"| {c} ch {k}x{k} s{stride} @{side} | {lanes_ms:.3f} | {flops / lanes_ms / 1e6:.1f} | "
              f"{np.median(t[1]) * 1e3:.3f} | {np.median(t[0] / t[1]):.2f} | {torch_cells} | "
              f"{np.array_equal(lanes_out, cols_out)} | {_depthwise_lanes.prefers(spec)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
