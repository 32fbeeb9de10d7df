"""The CPU kernels compiled once per kind (``_depthwise`` and ``_depthwise_lanes``: per kernel size,
stride and dilation; ``_pointwise``: once) against the kernels generated per geometry that the
launcher chose before them (``_rowblock``, ``_outer``; ``_channels_last``'s forward until round 14,
when it was removed), and against PyTorch when it is installed:
interleaved medians in milliseconds, float32, 2 threads by default (Numba and PyTorch alike).

The shapes are MobileNetV2's depthwise and pointwise layers at batch 2 (224 x 224 images) and the
depthwise standard shapes at batch 8. Every kernel's result is checked against the first one's
(the same bits at stride 1; at stride 2 ``_rowblock`` adds the taps in another order)::

    python docs/generic_kernels.py [--rounds 20] [--threads 2] [--only depthwise|pointwise]
"""

from __future__ import annotations

import argparse
import os
import sys

import numba
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _timing import interleaved_medians

from nbconv._spec import conv2d_spec
from nbconv.cpu import _depthwise, _depthwise_lanes, _outer, _pointwise, _rowblock

#: (name, batch, channels, multiplier, side, kernel, stride)
DEPTHWISE = [
    ("mbv2 112", 2, 32, 1, 112, 3, 1), ("mbv2 112 s2", 2, 96, 1, 112, 3, 2), ("mbv2 56", 2, 144, 1, 56, 3, 1),
    ("mbv2 56 s2", 2, 144, 1, 56, 3, 2), ("mbv2 28", 2, 192, 1, 28, 3, 1), ("mbv2 28 s2", 2, 192, 1, 28, 3, 2),
    ("mbv2 14", 2, 384, 1, 14, 3, 1), ("mbv2 14 s2", 2, 576, 1, 14, 3, 2), ("mbv2 7", 2, 960, 1, 7, 3, 1),
    ("mbv2_dw_112", 8, 32, 1, 112, 3, 1), ("mbv2_dw_s2", 8, 96, 1, 112, 3, 2), ("mbv2_dw_7", 8, 960, 1, 7, 3, 1),
    ("effnet_dw5_28", 8, 240, 1, 28, 5, 1), ("effnet_dw5_14", 8, 672, 1, 14, 5, 1),
    ("convnext_dw7", 8, 96, 1, 56, 7, 1), ("dw_mult2", 8, 32, 2, 112, 3, 1), ("odd_dw3_33", 8, 48, 1, 33, 3, 1),
    ("dw_mult4_c8", 8, 8, 4, 64, 3, 1),
]
#: (name, batch, input channels, output channels, side, groups)
POINTWISE = [
    ("mbv2 32->16 @112", 2, 32, 16, 112, 1), ("mbv2 16->96 @112", 2, 16, 96, 112, 1),
    ("mbv2 96->24 @56", 2, 96, 24, 56, 1), ("mbv2 144->32 @28", 2, 144, 32, 28, 1),
    ("mbv2 192->64 @14", 2, 192, 64, 14, 1), ("mbv2 384->96 @14", 2, 384, 96, 14, 1),
    ("mbv2 960->320 @7", 2, 960, 320, 7, 1), ("mbv2 320->1280 @7", 2, 320, 1280, 7, 1),
    ("pw_g4_28", 8, 256, 256, 28, 4), ("resnet 256->512 @14", 8, 256, 512, 14, 1),
    ("resnet 64->256 @56", 8, 64, 256, 56, 1),
]


def _torch(x, w, b, **args):
    try:
        import torch
    except ImportError:
        return None
    xt, wt, bt = (torch.from_numpy(a) for a in (x, w, b))
    return lambda: torch.nn.functional.conv2d(xt, wt, bt, **args)


def _row(name, kernels, spec, x, w, b, args, rounds) -> str:
    """Time every applicable kernel of ``kernels`` ({label: (applies, forward)}) and PyTorch."""
    fns, labels, outs = [], [], []
    for label, (applies, forward) in kernels.items():
        if not applies(spec):
            continue
        out = np.empty(spec.output_shape, x.dtype)
        fns.append(lambda f=forward, o=out: f(x, w, b, o, spec))
        labels.append(label)
        outs.append(out)
    torch_fn = _torch(x, w, b, **args)
    if torch_fn is not None:
        fns.append(torch_fn)
        labels.append("torch")
    times = interleaved_medians(*fns, rounds=rounds)
    same = all(np.array_equal(outs[0], o) for o in outs[1:])
    return f"| {name} | " + " | ".join(f"{lab} {t:.3f}" for lab, t in zip(labels, times)) + f" | {'yes' if same else 'no'} |"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=("depthwise", "pointwise"))
    a = parser.parse_args(argv)
    numba.set_num_threads(min(a.threads, numba.config.NUMBA_NUM_THREADS))
    try:
        import torch

        torch.set_num_threads(a.threads)
    except ImportError:
        pass
    rng = np.random.default_rng(0)
    if a.only != "pointwise":
        print("| depthwise layer | ms (one compile per kind first) | same bits |\n|---|---|---|")
        kernels = {"depthwise": (_depthwise.applies, _depthwise.depthwise_forward),
                   "rowblock": (_rowblock.applies, _rowblock.depthwise_forward),
                   "depthwise_lanes": (_depthwise_lanes.applies, _depthwise_lanes.depthwise_forward),
                   "outer": (_outer.applies, _outer.outer_forward)}
        for name, n, c, m, side, k, s in DEPTHWISE:
            x = rng.standard_normal((n, c, side, side)).astype(np.float32)
            w = rng.standard_normal((c * m, 1, k, k)).astype(np.float32)
            b = rng.standard_normal(c * m).astype(np.float32)
            args = {"stride": s, "padding": k // 2, "groups": c}
            print(_row(name, kernels, conv2d_spec(x, w, b, **args), x, w, b, args, a.rounds), flush=True)
    if a.only != "depthwise":
        print("\n| pointwise layer | ms | same bits |\n|---|---|---|")
        kernels = {"pointwise": (_pointwise.applies, _pointwise.pointwise_forward),
                   "outer": (_outer.applies, _outer.outer_forward)}
        for name, n, ci, co, side, g in POINTWISE:
            x = rng.standard_normal((n, ci, side, side)).astype(np.float32)
            w = rng.standard_normal((co, ci // g, 1, 1)).astype(np.float32)
            b = rng.standard_normal(co).astype(np.float32)
            args = {"groups": g}
            print(_row(name, kernels, conv2d_spec(x, w, b, **args), x, w, b, args, a.rounds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
