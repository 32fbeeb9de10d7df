"""Array kind -> backend: output allocation of the input's kind, ``out=`` checks, the call.

Backends are imported lazily, so ``import nbconv`` touches neither CuPy nor the CUDA driver.
Torch tensors and DLPack objects reach the backends as views of the kinds they take
(:func:`nbconv._arrays.native`); a torch result is allocated by torch on the input's device.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from . import _arrays
from ._spec import ConvSpec

#: NumPy results of this many bytes or more start at a multiple of ``ALIGNMENT`` bytes (a cache
#: line, as PyTorch's tensors do; NumPy's large arrays start 16 bytes into one): the CPU kernels'
#: vector stores then stay within lines, and their streaming stores write whole lines
#: (``nbconv.cpu._pointwise.STREAM_BYTES``). Such a result is a view of the buffer it lies in.
ALIGNED_BYTES = 1 << 16
ALIGNMENT = 64


def numpy_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised NumPy array, at a multiple of ``ALIGNMENT`` bytes from ``ALIGNED_BYTES``."""
    dtype = np.dtype(dtype)
    nbytes = dtype.itemsize
    for n in shape:
        nbytes *= n
    if nbytes < ALIGNED_BYTES:
        return np.empty(shape, dtype)
    from ._address import data_address

    buffer = np.empty(nbytes + ALIGNMENT, np.uint8)
    return np.ndarray(shape, dtype, buffer=buffer, offset=-data_address(buffer) % ALIGNMENT)


def _allocate(kind: str, shape: tuple[int, ...], dtype: np.dtype, like: Any) -> Any:
    if kind == _arrays.NUMPY:
        return numpy_empty(shape, dtype)
    if kind == _arrays.CUPY:
        return sys.modules["cupy"].empty(shape, dtype)
    if kind in _arrays.TORCH_KINDS:
        torch = sys.modules["torch"]
        return torch.empty(shape, dtype=getattr(torch, dtype.name), device=like.device)
    from numba import cuda

    return cuda.device_array(shape, dtype)


def _native(a: Any) -> Any:
    """``a`` (or None) as its backend takes it (NumPy arrays as they are: the CPU's hot path; then
    the kinds known from their type, CuPy's and Numba's arrays)."""
    if a is None or type(a) is np.ndarray or _arrays.native_by_type(a):
        return a
    return _arrays.native(a, _arrays.array_kind(a))


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
    want_kind = _arrays.result_kind(spec.kind)
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
    out, kind = _native(out), _arrays.native_kind(kind)
    if kind == _arrays.NUMPY and not out.flags.writeable:
        raise ValueError(f"{op}: out is read-only")
    for name, a in inputs.items():
        if a is not None and _overlaps(out, a, kind):
            raise ValueError(f"{op}: out overlaps {name} in memory; pass a separate output array")


def _call(spec: ConvSpec, out: Any, arrays: dict[str, Any], run, sums: bool) -> Any:
    """Check or allocate the result, then ``run(backend, *native arrays, native out)``. An
    empty batch runs nothing: the result is left as it is, or zeroed where it is a sum over the
    batch (``sums``)."""
    natives = {name: _native(a) for name, a in arrays.items()}
    if out is None:
        like = next(iter(arrays.values()))  # the input (or the output gradient): never None
        out = _allocate(_arrays.result_kind(spec.kind), spec.output_shape, spec.dtype, like)
    else:
        check_out(spec, out, natives)
    native_out = _native(out)
    if spec.batch:
        run(_backend(spec.kind), *natives.values(), native_out)
    elif sums:
        _zeros(native_out, _arrays.native_kind(_arrays.result_kind(spec.kind)))
    return out


def _backend(kind: str):
    """The backend package of ``kind``'s arrays, imported on first use (and looked up after)."""
    name = "nbconv.cpu" if kind in _arrays.HOST_KINDS else "nbconv.cuda"
    backend = sys.modules.get(name)
    if backend is None:
        if name == "nbconv.cpu":
            from . import cpu as backend
        else:
            from . import cuda as backend
    return backend


def _zeros(out: Any, kind: str) -> Any:
    """Fill ``out`` with zeros (a sum over an empty batch)."""
    if kind in (_arrays.NUMPY, _arrays.CUPY):
        out.fill(0)
    else:
        out.copy_to_device(np.zeros(out.shape, out.dtype))
    return out


def takes_padding_mode(spec: ConvSpec) -> bool:
    """Whether the backend of ``spec``'s arrays computes its forward with ``spec.padding_mode``
    inside its kernels (the CPU's depthwise kernel does: ``nbconv.cpu.takes_padding_mode``)."""
    return spec.kind in _arrays.HOST_KINDS and _backend(spec.kind).takes_padding_mode(spec)


def conv2d_forward(spec: ConvSpec, input: Any, weight: Any, bias: Any, out: Any) -> Any:
    """Run the convolution of a validated ``spec`` (``conv2d``, ``conv_transpose2d`` or
    ``grad.conv2d_input``) on the backend of its arrays."""
    return _call(spec, out, {"input": input, "weight": weight, "bias": bias},
                 lambda backend, x, w, b, o: backend.conv2d_forward(spec, x, w, b, o), sums=False)


def conv2d_weight(spec: ConvSpec, input: Any, grad_output: Any, out: Any) -> Any:
    """Run ``grad.conv2d_weight`` of a validated ``spec`` on the backend of its arrays."""
    return _call(spec, out, {"input": input, "grad_output": grad_output},
                 lambda backend, x, gy, o: backend.conv2d_weight(spec, x, gy, o), sums=True)


def conv2d_bias(spec: ConvSpec, grad_output: Any, out: Any) -> Any:
    """Run ``grad.conv2d_bias`` of a validated ``spec`` on the backend of its array."""
    return _call(spec, out, {"grad_output": grad_output}, lambda backend, gy, o: backend.conv2d_bias(spec, gy, o),
                 sums=True)
