"""The ops ``nbconv bench --op`` times: nbconv's call, PyTorch's twin and a NumPy check of each.

Every op of one shape has the same multiply-add count and touches tensors of the same sizes
(input, weight, output or their gradients), so GFLOP/s and GB/s compare across ops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .. import conv2d, conv_transpose2d, grad
from .._shapes import Shape
from .._spec import conv2d_spec
from ._check import conv2d_input_numpy, conv2d_numpy, conv2d_weight_numpy

#: ``--op`` choices: the forward conv2d and the training ops, each against its PyTorch twin.
OPS = ("forward", "input_grad", "weight_grad", "transpose")
#: What PyTorch runs for each op (shown in the table's title).
TORCH_OP = {
    "forward": "F.conv2d",
    "input_grad": "torch.nn.grad.conv2d_input",
    "weight_grad": "torch.nn.grad.conv2d_weight",
    "transpose": "F.conv_transpose2d",
}


@dataclass
class OpCall:
    """One op on one shape: ``ours()`` and ``theirs()`` (None without PyTorch), the float64 answer."""

    ours: Callable[[], object]
    theirs: Optional[Callable[[], object]]
    want: np.ndarray
    flops: int
    min_bytes: int


def host_arrays(shape: Shape, batch: int, dtype: str, seed: int = 0) -> dict:
    """x, w, b and an output gradient gy, standard normal (w scaled by 1/sqrt(fan-in))."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape.input_shape(batch)).astype(dtype)
    w = (rng.standard_normal(shape.weight_shape()) / math.sqrt(np.prod(shape.weight_shape()[1:]))).astype(dtype)
    b = rng.standard_normal(shape.c_out).astype(dtype)
    # (the CPU refuses float16: the output's shape from float32 stand-ins of the same shapes)
    spec = conv2d_spec(*(np.empty(a.shape, np.float32) for a in (x, w, b)), **shape.conv_args())
    gy = rng.standard_normal(spec.output_shape).astype(dtype)
    return {"x": x, "w": w, "b": b, "gy": gy}


def op_call(op: str, shape: Shape, host: dict, to_device, torch, device: str, check: bool = True) -> OpCall:
    """Build the calls of ``op`` on ``shape`` with the arrays ``host`` (moved by ``to_device``).

    ``check=False`` skips the float64 NumPy answer (``want`` is then an empty array): for the
    extra copies a GPU timing rotates through.
    """
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; expected one of {OPS}")
    x, w, b, gy = (to_device(host[k]) for k in ("x", "w", "b", "gy"))
    args = shape.conv_args()
    spec = conv2d_spec(x, w, b, **args)
    geometry = (spec.stride, spec.padding, spec.dilation, spec.groups)
    # conv_transpose2d's padding is symmetric only; the bench shapes have symmetric padding
    t_args = dict(stride=shape.stride, padding=shape.pad, dilation=shape.dilation, groups=shape.groups)
    if op == "forward":
        ours = lambda: conv2d(x, w, b, **args)  # noqa: E731
        want = lambda: conv2d_numpy(host["x"], host["w"], host["b"], *geometry)  # noqa: E731
    elif op == "input_grad":
        ours = lambda: grad.conv2d_input(x.shape, w, gy, **args)  # noqa: E731
        want = lambda: conv2d_input_numpy(host["x"].shape, host["w"], host["gy"], *geometry)  # noqa: E731
    elif op == "weight_grad":
        ours = lambda: grad.conv2d_weight(x, w.shape, gy, **args)  # noqa: E731
        want = lambda: conv2d_weight_numpy(host["x"], host["w"].shape, host["gy"], *geometry)  # noqa: E731
    else:  # conv_transpose2d of gy with the forward's weight: the input gradient, up to its size
        ours = lambda: conv_transpose2d(gy, w, None, **t_args)  # noqa: E731
        (sh, sw), (dh, dw) = spec.stride, spec.dilation
        size = (
            (spec.out_size[0] - 1) * sh - 2 * shape.pad + dh * (spec.kernel_size[0] - 1) + 1,
            (spec.out_size[1] - 1) * sw - 2 * shape.pad + dw * (spec.kernel_size[1] - 1) + 1,
        )
        want = lambda: conv2d_input_numpy(host["x"].shape[:2] + size, host["w"], host["gy"], *geometry)  # noqa: E731

    theirs = None
    if torch is not None:
        t = {k: torch.from_numpy(v).to(device) for k, v in host.items()}
        F = torch.nn.functional
        if op == "forward":
            theirs = lambda: F.conv2d(t["x"], t["w"], t["b"], **args)  # noqa: E731
        elif op == "input_grad":
            theirs = lambda: torch.nn.grad.conv2d_input(t["x"].shape, t["w"], t["gy"], **args)  # noqa: E731
        elif op == "weight_grad":
            theirs = lambda: torch.nn.grad.conv2d_weight(t["x"], t["w"].shape, t["gy"], **args)  # noqa: E731
        else:
            theirs = lambda: F.conv_transpose2d(t["gy"], t["w"], None, **t_args)  # noqa: E731
    return OpCall(ours, theirs, want() if check else np.empty(0), spec.flops, spec.min_bytes)
