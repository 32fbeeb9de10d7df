"""Time the Winograd weight gradient (``nbconv.cpu._winograd_wgrad``) against the direct kernel
the launcher would otherwise take (``_outer``'s, else ``_wgrad``'s), interleaved (medians of 15
rounds, batch 8, float32, Numba's threads), with both errors against a float64 reference
(max |error| / max |exact|). The shapes span ``MIN_CHANNELS``: below 48 channels per group the
transforms cost more than they save.

Run: ``python docs/winograd_wgrad.py``.
"""

from __future__ import annotations

import numpy as np
from _timing import interleaved_medians

from nbconv._spec import conv2d_spec
from nbconv.cpu import _launch, _outer, _wgrad, _winograd_wgrad

ROUNDS = 15
#: name, C_in, H = W, C_out, k, padding, groups
SHAPES = [
    ("alexnet_g2", 96, 27, 256, 5, 2, 2),
    ("dense_64_28", 64, 28, 64, 3, 1, 1),
    ("dense_128_14", 128, 14, 128, 3, 1, 1),
    ("g4_64_14", 256, 14, 256, 3, 1, 4),
    ("g8_32_28", 256, 28, 256, 3, 1, 8),
    ("g4_32_56", 128, 56, 128, 3, 1, 4),
    ("resnext_g32_14", 512, 14, 512, 3, 1, 32),
]


def _direct(spec):
    if _outer.applies_weight_grad(spec):
        return "outer", lambda x, gy, dw: _outer.outer_weight_grad(x, gy, dw, spec)
    stack = _launch.choose_weight_stack(spec)
    return "wgrad", lambda x, gy, dw: _wgrad.weight_grad(x, gy, dw, spec, stack)


def _exact(x, gy, spec, w_shape):
    """The weight gradient in float64 (one einsum per tap and group)."""
    (kh_n, kw_n), (oh, ow), pad = spec.kernel_size, spec.out_size, spec.padding
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), pad[:2], pad[2:]))
    cin_g, cout_g = spec.in_per_group, spec.out_per_group
    dw = np.empty(w_shape)
    for g in range(spec.groups):
        gg = gy[:, g * cout_g:(g + 1) * cout_g].astype(np.float64)
        for kh in range(kh_n):
            for kw in range(kw_n):
                xs = xp[:, g * cin_g:(g + 1) * cin_g, kh:kh + oh, kw:kw + ow]
                dw[g * cout_g:(g + 1) * cout_g, :, kh, kw] = np.einsum("noyx,ncyx->oc", gg, xs)
    return dw


def main() -> None:
    saved = _winograd_wgrad.MIN_CHANNELS
    _winograd_wgrad.MIN_CHANNELS = 1  # time it below the threshold too
    print(f"batch 8, float32: medians of {ROUNDS} interleaved rounds (ms); ratio = direct / Winograd")
    print("| shape | channels per group | Winograd | direct kernel | direct | ratio | error W / direct |")
    print("|---|---:|---:|---|---:|---:|---|")
    for name, c_in, hw, c_out, k, pad, groups in SHAPES:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((8, c_in, hw, hw)).astype(np.float32)
        w_shape = (c_out, c_in // groups, k, k)
        spec = conv2d_spec(x, np.empty(w_shape, np.float32), None, 1, pad, 1, groups)
        gy = rng.standard_normal(spec.output_shape).astype(np.float32)
        dw, dw_ref = np.empty(w_shape, np.float32), np.empty(w_shape, np.float32)
        label, direct = _direct(spec)

        def wino():
            _winograd_wgrad.winograd_weight_grad(x, gy, dw, spec)

        def other():
            direct(x, gy, dw_ref)

        t_w, t_o = interleaved_medians(wino, other, rounds=ROUNDS)
        exact = _exact(x, gy, spec, w_shape)
        scale = np.abs(exact).max()
        errors = f"{np.abs(dw - exact).max() / scale:.1e} / {np.abs(dw_ref - exact).max() / scale:.1e}"
        print(f"| {name} | {c_in // groups} -> {c_out // groups} | {t_w:.3f} | {label} | {t_o:.3f} | "
              f"{t_o / t_w:.2f} | {errors} |")
    _winograd_wgrad.MIN_CHANNELS = saved


if __name__ == "__main__":
    main()
