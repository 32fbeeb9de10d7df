"""Array kind -> backend: output allocation of the input's kind, ``out=`` checks, the call.

Backends are imported lazily, so ``import nbconv`` touches neither CuPy nor the CUDA driver.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from . import _arrays
from ._spec import ConvSpec


def _result_kind(kind: str) -> str:
    """Kind of the arrays an op returns: CAI objects come back as Numba device arrays."""
    return _arrays.NUMBA if kind == _arrays.CAI else kind


def _allocate(kind: str, shape: tuple[int, ...], dtype: np.dtype) -> Any:
    if kind == _arrays.NUMPY:
        return np.empty(shape, dtype)
    if kind == _arrays.CUPY:
        return sys.modules["cupy"].empty(shape, dtype)
    from numba import cuda

    return cuda.device_array(shape, dtype)


def _extent(a: Any, kind: str) -> tuple[int, int] | None:
    """[first, last] byte addresses ``a`` spans, or None when it holds no element."""
    if kind == _arrays.NUMPY:
        ptr, strides, itemsize = a.__array_interface__["data"][0], a.strides, a.itemsize
    elif hasattr(a, "__cuda_array_interface__"):
        cai = a.__cuda_array_interface__
        itemsize = np.dtype(cai["typestr"]).itemsize
        ptr = cai["data"][0]
        strides = cai.get("strides") or tuple(np.cumprod((1,) + tuple(cai["shape"][:0:-1]))[::-1] * itemsize)
    else:  # Numba's CUDA simulator: device arrays wrap host arrays
        return _extent(a._ary, _arrays.NUMPY)
    shape = _arrays.array_shape(a, kind)
    if 0 in shape:
        return None
    lo = ptr + sum(min(0, st) * (n - 1) for n, st in zip(shape, strides))
    hi = ptr + sum(max(0, st) * (n - 1) for n, st in zip(shape, strides)) + itemsize - 1
    return lo, hi


def _overlaps(a: Any, b: Any, kind: str) -> bool:
    if kind == _arrays.NUMPY:
        return bool(np.may_share_memory(a, b))
    ea, eb = _extent(a, kind), _extent(b, kind)
    return ea is not None and eb is not None and ea[0] <= eb[1] and eb[0] <= ea[1]


def check_out(spec: ConvSpec, out: Any, inputs: dict[str, Any]) -> None:
    """Raise ValueError unless ``out`` can receive the result of ``spec``."""
    op = spec.op
    want_kind = _result_kind(spec.kind)
    kind = _arrays.array_kind(out)
    if kind != want_kind:
        got = _arrays.describe_kind(kind) if kind else type(out).__name__
        raise ValueError(f"{op}: out must be {_arrays.describe_kind(want_kind)} like the result, got {got}")
    shape = _arrays.array_shape(out, kind)
    if shape != spec.output_shape:
        raise ValueError(f"{op}: out has shape {shape}, expected {spec.output_shape}")
    dtype = _arrays.array_dtype(out, kind)
    if dtype != spec.dtype:
        raise ValueError(f"{op}: out has dtype {dtype}, expected {spec.dtype}")
    if kind == _arrays.NUMPY and not out.flags.writeable:
        raise ValueError(f"{op}: out is read-only")
    for name, a in inputs.items():
        if a is not None and _overlaps(out, a, kind):
            raise ValueError(f"{op}: out overlaps {name} in memory; pass a separate output array")


def _output(spec: ConvSpec, out: Any, inputs: dict[str, Any]) -> Any:
    if out is None:
        return _allocate(_result_kind(spec.kind), spec.output_shape, spec.dtype)
    check_out(spec, out, inputs)
    return out


def _backend(kind: str):
    if kind == _arrays.NUMPY:
        from . import cpu

        return cpu
    from . import cuda

    return cuda


def _zeros(out: Any, kind: str) -> Any:
    """Fill ``out`` with zeros (a sum over an empty batch)."""
    if kind in (_arrays.NUMPY, _arrays.CUPY):
        out.fill(0)
    else:
        out.copy_to_device(np.zeros(out.shape, out.dtype))
    return out


def conv2d_forward(spec: ConvSpec, input: Any, weight: Any, bias: Any, out: Any) -> Any:
    """Run the convolution of a validated ``spec`` (``conv2d``, ``conv_transpose2d`` or
    ``grad.conv2d_input``) on the backend of its arrays."""
    out = _output(spec, out, {"input": input, "weight": weight, "bias": bias})
    if spec.batch == 0:
        return out
    return _backend(spec.kind).conv2d_forward(spec, input, weight, bias, out)


def conv2d_weight(spec: ConvSpec, input: Any, grad_output: Any, out: Any) -> Any:
    """Run ``grad.conv2d_weight`` of a validated ``spec`` on the backend of its arrays."""
    out = _output(spec, out, {"input": input, "grad_output": grad_output})
    if spec.batch == 0:
        return _zeros(out, _result_kind(spec.kind))
    return _backend(spec.kind).conv2d_weight(spec, input, grad_output, out)


def conv2d_bias(spec: ConvSpec, grad_output: Any, out: Any) -> Any:
    """Run ``grad.conv2d_bias`` of a validated ``spec`` on the backend of its array."""
    out = _output(spec, out, {"grad_output": grad_output})
    if spec.batch == 0:
        return _zeros(out, _result_kind(spec.kind))
    return _backend(spec.kind).conv2d_bias(spec, grad_output, out)
