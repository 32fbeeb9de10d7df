"""The floor time of a convolution on a GPU: the larger of its bytes over the memory bandwidth and
its FLOPs over the FP32 (non-tensor-core) peak, for the kernels' targets and the CUDA figures.

``python -m nbconv.bench._roofline [--batch N] [--dtype float32|float16]`` prints the table for
the standard shapes on the devices below.
"""

from __future__ import annotations

import argparse
from typing import NamedTuple

import numpy as np

from .._shapes import STANDARD_SHAPES
from .._spec import conv2d_spec


class Device(NamedTuple):
    """Peak figures from the vendor's data sheet (SXM parts)."""

    name: str
    bandwidth: float  # bytes / s, HBM
    fp32_flops: float  # FLOP / s without tensor cores


DEVICES = (
    Device("H100 SXM", 3.35e12, 67e12),
    Device("H200 SXM", 4.8e12, 67e12),
)


class Floor(NamedTuple):
    bytes: int
    flops: int
    memory_s: float
    compute_s: float

    @property
    def seconds(self) -> float:
        return max(self.memory_s, self.compute_s)

    @property
    def bound(self) -> str:
        return "memory" if self.memory_s >= self.compute_s else "compute"


def floor(spec, device: Device) -> Floor:
    """Input, weight and bias read once and the output written once, at the peak bandwidth; the
    multiply-adds at the FP32 peak."""
    return Floor(spec.min_bytes, spec.flops, spec.min_bytes / device.bandwidth, spec.flops / device.fp32_flops)


class _Stand:
    """Shape and dtype only (no array is made): what the spec needs."""

    def __init__(self, shape, dtype):
        self.__cuda_array_interface__ = {"shape": tuple(shape), "typestr": np.dtype(dtype).str, "data": (0, False),
                                         "version": 3}


def table(batch: int = 32, dtype: str = "float32") -> str:
    lines = ["| shape | MB | GFLOP | " + " | ".join(f"{d.name} floor (us) | bound" for d in DEVICES) + " |",
             "|---|---:|---:|" + "---:|---|" * len(DEVICES)]
    for s in STANDARD_SHAPES:
        spec = conv2d_spec(_Stand(s.input_shape(batch), dtype), _Stand(s.weight_shape(), dtype), None,
                           **s.conv_args())
        cells = [f"{floor(spec, d).seconds * 1e6:.1f} | {floor(spec, d).bound}" for d in DEVICES]
        lines.append(f"| {s.name} | {spec.min_bytes / 1e6:.1f} | {spec.flops / 1e9:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    args = p.parse_args(argv)
    print(f"Roofline floors, batch {args.batch}, {args.dtype}, no bias:")
    print(table(args.batch, args.dtype))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
