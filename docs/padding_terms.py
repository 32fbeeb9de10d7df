"""Time the CPU kernels that read their input where it lies, with the padding's terms left out,
against the same kernels on zero-padded copies (interleaved, medians of 30 rounds, batch 8,
float32 unless marked, Numba's threads):

- ``_outer``'s forward and weight gradient: ``direct`` (``nbconv.cpu._valid``'s regions of taps,
  no packing) against the packed planes with every term;
- the depthwise weight gradient on flat planes (``_flat``: pixels in the lanes, masked loads)
  against the channels-last kernel (``_channels_last``: transposes and a padded plane), which
  is why ``_flat`` takes 3x3 kernels only.

Run: ``python docs/padding_terms.py``.
"""

from __future__ import annotations

import numpy as np
from _timing import interleaved_medians

from nbconv._spec import conv2d_spec, conv2d_weight_spec
from nbconv.cpu import _channels_last, _flat, _outer

ROUNDS = 30
#: name, C_in, H = W, C_out, k, padding, groups (stride 1)
OUTER_SHAPES = [
    ("resnext_g32_14", 512, 14, 512, 3, 1, 32),
    ("g32_k5_14", 512, 14, 512, 5, 2, 32),
    ("g32_1024_7", 1024, 7, 1024, 3, 1, 32),
    ("dense_64_28", 64, 28, 64, 3, 1, 1),
]
#: name, channels, H = W, k, dtype (depthwise, 'same')
FLAT_SHAPES = [
    ("mbv2_dw_7", 960, 7, 3, np.float32),
    ("dw3_576_14", 576, 14, 3, np.float32),
    ("mbv2_dw_7 f64", 960, 7, 3, np.float64),
    ("effnet_dw5_14", 672, 14, 5, np.float32),
    ("dw5_1152_7", 1152, 7, 5, np.float32),
]


def _medians(*fns) -> list[float]:
    return interleaved_medians(*fns, rounds=ROUNDS)


def main() -> None:
    rng = np.random.default_rng(0)
    print("| op | shape | direct (ms) | packed, every term (ms) | ratio |\n|---|---|---:|---:|---:|")
    for name, c_in, hw, c_out, k, pad, groups in OUTER_SHAPES:
        x = rng.standard_normal((8, c_in, hw, hw)).astype(np.float32)
        w = rng.standard_normal((c_out, c_in // groups, k, k)).astype(np.float32)
        b = np.zeros(c_out, np.float32)
        spec = conv2d_spec(x, w, b, 1, pad, 1, groups)
        out = np.empty(spec.output_shape, np.float32)
        direct, packed = _medians(lambda: _outer.outer_forward(x, w, b, out, spec, True),
                                  lambda: _outer.outer_forward(x, w, b, out, spec, False))
        print(f"| forward | {name} | {direct:.3f} | {packed:.3f} | {direct / packed:.2f} |")
        if _outer.applies_weight_grad(spec):
            gy = rng.standard_normal(spec.output_shape).astype(np.float32)
            dw = np.empty(w.shape, np.float32)
            direct, packed = _medians(lambda: _outer.outer_weight_grad(x, gy, dw, spec),
                                      lambda: _outer.outer_weight_grad(x, gy, dw, spec, direct=False))
            print(f"| weight gradient | {name} | {direct:.3f} | {packed:.3f} | {direct / packed:.2f} |")
    print("\n| depthwise weight gradient | _flat (ms) | _channels_last (ms) | ratio |\n|---|---:|---:|---:|")
    for name, c, hw, k, dtype in FLAT_SHAPES:
        x = rng.standard_normal((8, c, hw, hw)).astype(dtype)
        gy = rng.standard_normal((8, c, hw, hw)).astype(dtype)
        spec = conv2d_weight_spec(x, (c, 1, k, k), gy, 1, k // 2, 1, c)
        dw = np.empty((c, 1, k, k), dtype)
        flat, channels_last = _medians(lambda: _flat.flat_weight_grad(x, gy, dw, spec),
                                       lambda: _channels_last.depthwise_weight_grad(x, gy, dw, spec))
        print(f"| {name} ({k}x{k}) | {flat:.3f} | {channels_last:.3f} | {flat / channels_last:.2f} |")


if __name__ == "__main__":
    main()
