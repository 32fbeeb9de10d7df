"""``padding_mode`` on the CPU: time against zeros padding and against PyTorch's ``nn.Conv2d`` with
the same mode (which pads a copy of the input first), and the memory a call allocates beyond its
output (tracemalloc) against the size of that padded copy. Interleaved medians in milliseconds,
float32, NumPy arrays, 2 threads by default (Numba and PyTorch alike)::

    python docs/padding_modes.py [--rounds 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tracemalloc

import numba
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _timing import interleaved_medians

import nbconv
from nbconv.bench._run import _cpu_model

#: (name, batch, C_in, C_out, side, kernel, stride, padding, groups)
SHAPES = [
    ("mbv2_dw_56", 8, 144, 144, 56, 3, 1, 1, 144),
    ("mbv2_dw_s2", 8, 96, 96, 112, 3, 2, 1, 96),
    ("convnext_dw7", 8, 96, 96, 56, 7, 1, 3, 96),
    ("resnext_g32_56", 8, 128, 128, 56, 3, 1, 1, 32),
    ("dense 64 @56", 8, 64, 64, 56, 3, 1, 1, 1),
]
MODES = ["zeros", "reflect", "replicate", "circular"]


def extra_mib(fn) -> float:
    tracemalloc.start()
    y = fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return (peak - y.nbytes) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    numba.set_num_threads(args.threads)
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    import llvmlite.binding as llvm

    print(f"{_cpu_model()} ({llvm.get_host_cpu_name()}), {args.threads} threads, float32, median of {args.rounds} interleaved rounds"
          + ("" if torch else "; PyTorch not installed"))
    print(f"{'shape':<16} {'mode':<10} {'ms':>7} {'vs zeros':>8} {'torch ms':>9} {'speedup':>8} "
          f"{'extra MiB':>9} {'padded copy MiB':>15}")
    rng = np.random.default_rng(0)
    for name, n, c_in, c_out, side, k, s, p, g in SHAPES:
        x = rng.standard_normal((n, c_in, side, side), dtype=np.float32)
        w = rng.standard_normal((c_out, c_in // g, k, k), dtype=np.float32)
        b = rng.standard_normal(c_out, dtype=np.float32)
        copy_mib = n * c_in * (side + 2 * p) ** 2 * 4 / 2**20
        zeros = None
        for mode in MODES:
            ours = lambda mode=mode: nbconv.conv2d(x, w, b, s, p, 1, g, padding_mode=mode)  # noqa: E731
            fns = [ours]
            if torch is not None:
                layer = torch.nn.Conv2d(c_in, c_out, k, s, p, 1, g, True, mode)
                with torch.no_grad():
                    layer.weight.copy_(torch.from_numpy(w))
                    layer.bias.copy_(torch.from_numpy(b))
                    want = layer(torch.from_numpy(x)).numpy()
                np.testing.assert_allclose(ours(), want, rtol=2e-4, atol=2e-4)
                tx = torch.from_numpy(x)

                def theirs(layer=layer, tx=tx):
                    with torch.no_grad():
                        return layer(tx)

                fns.append(theirs)
            times = interleaved_medians(*fns, rounds=args.rounds)
            zeros = times[0] if mode == "zeros" else zeros
            theirs_ms = f"{times[1]:9.2f} {times[1] / times[0]:7.2f}x" if torch is not None else f"{'-':>9} {'-':>8}"
            print(f"{name:<16} {mode:<10} {times[0]:7.2f} {times[0] / zeros:7.2f}x {theirs_ms} "
                  f"{extra_mib(ours):9.2f} {copy_mib:15.1f}")


if __name__ == "__main__":
    main()
