"""The standard benchmark shapes: one definition, used by ``nbconv bench``, ASV and the tests."""

from __future__ import annotations

from typing import NamedTuple


class Shape(NamedTuple):
    """A named grouped convolution (float32 NCHW unless said otherwise); square input and kernel."""

    name: str
    c_in: int
    hw: int
    c_out: int
    k: int
    stride: int
    pad: int
    groups: int
    dilation: int = 1

    def input_shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, self.c_in, self.hw, self.hw)

    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.c_out, self.c_in // self.groups, self.k, self.k)

    def conv_args(self) -> dict:
        return dict(stride=self.stride, padding=self.pad, dilation=self.dilation, groups=self.groups)


STANDARD_SHAPES: tuple[Shape, ...] = (
    Shape("mbv2_dw_112", 32, 112, 32, 3, 1, 1, 32),
    Shape("mbv2_dw_s2", 96, 112, 96, 3, 2, 1, 96),
    Shape("mbv2_dw_56", 144, 56, 144, 3, 1, 1, 144),
    Shape("mbv2_dw_7", 960, 7, 960, 3, 1, 1, 960),
    Shape("effnet_dw5_28", 240, 28, 240, 5, 1, 2, 240),
    Shape("effnet_dw5_14", 672, 14, 672, 5, 1, 2, 672),
    Shape("convnext_dw7", 96, 56, 96, 7, 1, 3, 96),
    Shape("dw_mult2", 32, 112, 64, 3, 1, 1, 32),
    Shape("resnext_g32_56", 128, 56, 128, 3, 1, 1, 32),
    Shape("resnext_g32_s2", 256, 56, 256, 3, 2, 1, 32),
    Shape("resnext_g32_14", 512, 14, 512, 3, 1, 1, 32),
    Shape("alexnet_g2", 96, 27, 256, 5, 1, 2, 2),
)

#: Shapes off the standard list that must not fall off a cliff (odd sizes, 1x1 grouped, dense,
#: few channels with a multiplier, dilation).
EXTRA_SHAPES: tuple[Shape, ...] = (
    Shape("odd_dw3_33", 48, 33, 48, 3, 1, 1, 48),
    Shape("pw_g4_28", 256, 28, 256, 1, 1, 0, 4),
    Shape("pw_g8_c4_28", 32, 28, 32, 1, 1, 0, 8),  # 4 channels per group: fewer than a 1x1 block's 6
    Shape("dense_64_28", 64, 28, 64, 3, 1, 1, 1),
    Shape("dw_mult4_c8", 8, 64, 32, 3, 1, 1, 8),
    Shape("dw3_dil2_56", 64, 56, 64, 3, 1, 2, 64, dilation=2),
)

SHAPES_BY_NAME = {s.name: s for s in STANDARD_SHAPES + EXTRA_SHAPES}
