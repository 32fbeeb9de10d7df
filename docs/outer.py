"""Time the CPU kernels with output channels in the vector lanes (``nbconv.cpu._outer``) against
the kernels the launcher would otherwise take, interleaved (medians of 30 rounds, batch 8
unless ``--batch``, float32, Numba's threads): the forward against ``_winograd`` / ``_rowblock`` / ``_grouped`` /
the packed kernel, the weight gradient against ``_wgrad``, and the transposed convolution of the
output gradient (``conv_transpose2d``: at stride 2 ``_outer`` skips the inserted zeros) where the
shape is marked for it. Groups of 4 or 8 float32 outputs share a vector (``group_pack``), the
last vector with idle groups where the group count is odd (RegNetY's 13 and 55 groups of 8).

Run: ``python docs/outer.py [--shapes NAME,NAME] [--batch N]``.
"""

from __future__ import annotations

import argparse
import dataclasses

import numba
import numpy as np
from _timing import interleaved_medians

from nbconv._spec import conv2d_spec, conv_transpose2d_spec
from nbconv.cpu import _grouped, _launch, _outer, _packed, _rowblock, _wgrad, _winograd

ROUNDS = 30
#: name, C_in, H = W, C_out, k, stride, padding, groups
SHAPES = [
    ("resnext_g32_14", 512, 14, 512, 3, 1, 1, 32),
    ("pw_g4_28", 256, 28, 256, 1, 1, 0, 4),
    ("g8_128_56", 128, 56, 128, 3, 1, 1, 8),
    ("g16_s2_56", 256, 56, 256, 3, 2, 1, 16),
    ("g32_k5_14", 512, 14, 512, 5, 1, 2, 32),
    ("g32_1024_7", 1024, 7, 1024, 3, 1, 1, 32),
    ("dw_mult16_28", 16, 28, 256, 3, 1, 1, 16),
    ("dense_64_28", 64, 28, 64, 3, 1, 1, 1),
    ("alexnet_g2", 96, 27, 256, 5, 1, 2, 2),
    ("resnext_g32_56", 128, 56, 128, 3, 1, 1, 32),  # 4 outputs per group: 4 groups per vector
    ("resnext_g32_s2", 256, 56, 256, 3, 2, 1, 32),  # 8 per group: pairs (stride 1: transposed only)
    ("g32_8_28", 256, 28, 256, 3, 1, 1, 32),
    ("pw_g32_8_28", 256, 28, 256, 1, 1, 0, 32),
    ("regnety_g13_28", 104, 28, 104, 3, 1, 1, 13),  # 13 groups of 8: the last pair has an idle group
    ("regnety_g55_7", 440, 7, 440, 3, 1, 1, 55),
    ("regnety_g6_s2_112", 48, 112, 48, 3, 2, 1, 6),  # stride 2: pairs of groups of 8
    ("regnety_g55_s2_14", 440, 14, 440, 3, 2, 1, 55),
    ("regnety_g13_s2_56", 104, 56, 104, 3, 2, 1, 13),
    ("regnety_g26_s2_28", 208, 28, 208, 3, 2, 1, 26),
    ("regnety_g26_14", 208, 14, 208, 3, 1, 1, 26),
    ("resnext_g32_s2_4", 128, 56, 128, 3, 2, 1, 32),  # fours at stride 2: not packed
]
#: shapes whose transposed convolution is timed too
TRANSPOSED = {"resnext_g32_14", "resnext_g32_56", "resnext_g32_s2", "g32_8_28", "g16_s2_56"}


def _other_forward(spec):
    if _winograd.applies(spec):  # given the flipped weight of a transposed convolution: read as a convolution's
        plain = dataclasses.replace(spec, transposed_weight=False)
        return "winograd", lambda x, w, b, out: _winograd.winograd_forward(x, w, b, out, plain)
    if _rowblock.applies(spec):
        return "rows", lambda x, w, b, out: _rowblock.depthwise_forward(x, w, b, out, spec)
    stack = _launch.choose_stack(spec)
    if _grouped.applies(spec):
        return "grouped", lambda x, w, b, out: _grouped.grouped_forward(x, w, b, out, spec, stack)
    oc_block = _launch.choose_oc_block(-(-spec.batch // stack), spec.groups, spec.out_per_group,
                                       numba.get_num_threads())
    return "packed", lambda x, w, b, out: _packed.forward_packed(x, w, b, out, spec, oc_block, stack)


def _medians(a, b) -> tuple[float, float]:
    t_a, t_b = interleaved_medians(a, b, rounds=ROUNDS)
    return t_a, t_b


def _forward_row(name, op, spec, x, w, b) -> None:
    out, ref = np.empty(spec.output_shape, np.float32), np.empty(spec.output_shape, np.float32)
    if not _outer.applies(spec):
        print(f"| {name} | {op} | - | (not this path) | | |")
        return
    label, other = _other_forward(spec)
    t_outer, t_other = _medians(lambda: _outer.outer_forward(x, w, b, out, spec), lambda: other(x, w, b, ref))
    print(f"| {name} | {op} | {t_outer:.3f} | {label} | {t_other:.3f} | {t_other / t_outer:.2f} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", help="comma-separated names (default: all)")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    chosen, batch = args.shapes, args.batch
    print(f"batch {batch}, float32: medians of {ROUNDS} interleaved rounds (ms); ratio = other / outer")
    print("| shape | op | outer | other kernel | other | ratio |\n|---|---|---:|---|---:|---:|")
    for name, c_in, hw, c_out, k, stride, pad, groups in SHAPES:
        if chosen and name not in chosen.split(","):
            continue
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch, c_in, hw, hw)).astype(np.float32)
        w = rng.standard_normal((c_out, c_in // groups, k, k)).astype(np.float32)
        b = rng.standard_normal(c_out).astype(np.float32)
        spec = conv2d_spec(x, w, b, stride, pad, 1, groups)
        gy = rng.standard_normal(spec.output_shape).astype(np.float32)
        if _outer.applies(spec) or name not in TRANSPOSED:
            _forward_row(name, "forward", spec, x, w, b)
        if name in TRANSPOSED:  # conv_transpose2d(gy, w): the forward kernels on the flipped weight
            tspec = conv_transpose2d_spec(gy, w, None, stride, pad, stride - 1, groups, 1)
            _forward_row(name, "transposed", tspec, gy, _launch.flipped_transposed_weight(w, groups),
                         np.zeros(tspec.out_channels, np.float32))
        if not (_outer.applies(spec) and _outer.group_pack(spec) == 1
                and spec.kernel_size[0] * spec.kernel_size[1] <= _outer.SUM_BUDGET):
            continue
        dw, dw_ref = np.empty_like(w), np.empty_like(w)
        stack = _launch.choose_weight_stack(spec)
        t_outer, t_other = _medians(lambda: _outer.outer_weight_grad(x, gy, dw, spec),
                                    lambda: _wgrad.weight_grad(x, gy, dw_ref, spec, stack))
        print(f"| {name} | weight grad | {t_outer:.3f} | wgrad | {t_other:.3f} | {t_other / t_outer:.2f} |")


if __name__ == "__main__":
    main()
