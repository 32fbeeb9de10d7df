"""Classify array arguments by where they live, without importing CuPy, PyTorch or Numba's CUDA
target, and view the foreign kinds (PyTorch tensors, other DLPack objects) as the arrays the
backends take.

Follows array-api-compat's habit: a class is looked up through ``sys.modules``, so asking
"is this a CuPy array?" never imports CuPy (if CuPy was never imported, nothing can be one).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

#: Kinds of array nbconv accepts. ``numpy`` runs on the CPU; the others on a CUDA device.
NUMPY = "numpy"
CUPY = "cupy"
NUMBA = "numba"  # a Numba CUDA device array (real or simulated)
CAI = "cuda_array_interface"  # any other object exposing __cuda_array_interface__
TORCH_CPU = "torch_cpu"  # a torch.Tensor in host memory: computed on the CPU, given back as a tensor
TORCH_CUDA = "torch_cuda"  # a torch.Tensor on a CUDA device
DLPACK_CPU = "dlpack_cpu"  # any other object with __dlpack__, in host memory: given back as NumPy
DLPACK_CUDA = "dlpack_cuda"  # ... on a CUDA device: given back as CuPy (needs CuPy)

HOST_KINDS = (NUMPY, TORCH_CPU, DLPACK_CPU)
DEVICE_KINDS = (CUPY, NUMBA, CAI, TORCH_CUDA, DLPACK_CUDA)
TORCH_KINDS = (TORCH_CPU, TORCH_CUDA)

#: DLPack's device types (``__dlpack_device__()[0]``) nbconv computes on.
_DLPACK_CPU, _DLPACK_CUDA = 1, 2


def is_cupy_array(x: Any) -> bool:
    cupy = sys.modules.get("cupy")
    return cupy is not None and isinstance(x, cupy.ndarray)


def is_numba_device_array(x: Any) -> bool:
    numba_cuda = sys.modules.get("numba.cuda")
    if numba_cuda is None:
        return False
    return bool(numba_cuda.devicearray.is_cuda_ndarray(x))


def is_torch_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _dlpack_kind(x: Any) -> str | None:
    try:
        device_type = int(x.__dlpack_device__()[0])
    except Exception:  # noqa: BLE001 (an object whose device cannot be read is not an array we take)
        return None
    return {_DLPACK_CPU: DLPACK_CPU, _DLPACK_CUDA: DLPACK_CUDA}.get(device_type)


#: Kinds that follow from an object's type alone (NumPy, CuPy and Numba arrays), learnt per type:
#: validation runs on every call, and a network's calls meet a handful of types.
_KIND_OF_TYPE: dict[type, str] = {}


def array_kind(x: Any) -> str | None:
    """Return the kind of ``x`` (one of the module constants) or None for a non-array."""
    kind = _KIND_OF_TYPE.get(type(x))
    if kind is not None:
        return kind
    if isinstance(x, np.ndarray):
        kind = NUMPY
    elif is_cupy_array(x):
        kind = CUPY
    elif is_numba_device_array(x) and not is_torch_tensor(x):
        kind = NUMBA
    else:
        return _instance_kind(x)
    _KIND_OF_TYPE[type(x)] = kind
    return kind


def native_by_type(x: Any) -> bool:
    """Whether ``x``'s type alone makes it an array the backends take as it is (a NumPy, CuPy or
    Numba array, of a type :func:`array_kind` has met): :func:`native` would return it."""
    return type(x) in _KIND_OF_TYPE


def _instance_kind(x: Any) -> str | None:
    """The kind of ``x`` where it may depend on the object (a tensor's device, an interface
    set on the instance)."""
    if is_torch_tensor(x):
        return TORCH_CUDA if x.device.type == "cuda" else TORCH_CPU if x.device.type == "cpu" else None
    if is_numba_device_array(x):
        return NUMBA
    if hasattr(x, "__cuda_array_interface__"):
        return CAI
    if hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__"):
        return _dlpack_kind(x)
    return None


def result_kind(kind: str) -> str:
    """Kind of the arrays an op returns for inputs of ``kind``: the same, but for other
    ``__cuda_array_interface__`` objects (a Numba device array) and other DLPack objects
    (a NumPy array in host memory, a CuPy array on a CUDA device)."""
    return _RESULT_KIND.get(kind, kind)


def native_kind(kind: str) -> str:
    """Kind of :func:`native`'s view of an array of ``kind``."""
    return _NATIVE_KIND.get(kind, kind)


_RESULT_KIND = {CAI: NUMBA, DLPACK_CPU: NUMPY, DLPACK_CUDA: CUPY}
_NATIVE_KIND = {TORCH_CPU: NUMPY, TORCH_CUDA: NUMBA, DLPACK_CPU: NUMPY, DLPACK_CUDA: CUPY}


def native(x: Any, kind: str) -> Any:
    """``x`` as an array a backend takes (NumPy, CuPy, a Numba device array or a CAI object),
    sharing its memory: torch tensors (detached from autograd) and DLPack objects are viewed."""
    if kind == TORCH_CPU:
        return x.detach().numpy()
    if kind == TORCH_CUDA:
        from numba import cuda

        return cuda.as_cuda_array(x.detach(), sync=False)
    if kind == DLPACK_CPU:
        return np.from_dlpack(x)
    if kind == DLPACK_CUDA:
        try:
            import cupy
        except ImportError:
            raise TypeError("a CUDA DLPack array other than a torch.Tensor needs CuPy: pip install \"nbconv[cuda13]\"")
        return cupy.from_dlpack(x)
    return x


def describe_kind(kind: str) -> str:
    """Human-readable 'where it lives' for error messages."""
    return {
        NUMPY: "a numpy.ndarray (host memory)",
        CUPY: "a cupy.ndarray (CUDA device memory)",
        NUMBA: "a Numba CUDA device array (device memory)",
        CAI: "a __cuda_array_interface__ object (CUDA device memory)",
        TORCH_CPU: "a torch.Tensor (host memory)",
        TORCH_CUDA: "a torch.Tensor (CUDA device memory)",
        DLPACK_CPU: "a DLPack array (host memory)",
        DLPACK_CUDA: "a DLPack array (CUDA device memory)",
    }[kind]


def array_dtype(x: Any, kind: str) -> np.dtype:
    """The dtype of ``x``; a torch dtype NumPy has no name for (bfloat16) comes back as
    ``np.dtype(object)``, which no backend supports."""
    if kind == NUMPY or kind == CUPY:  # a CuPy array's dtype is NumPy's
        return x.dtype
    if kind == CAI:
        return np.dtype(x.__cuda_array_interface__["typestr"])
    if kind in TORCH_KINDS:
        try:
            return np.dtype(str(x.dtype).removeprefix("torch."))
        except TypeError:
            return np.dtype(object)
    if kind in (DLPACK_CPU, DLPACK_CUDA):
        return array_dtype(native(x, kind), result_kind(kind))
    return np.dtype(x.dtype)


def array_shape(x: Any, kind: str) -> tuple[int, ...]:
    if kind == NUMPY or kind == CUPY:
        return x.shape  # already a tuple of Python ints
    if kind == CAI:
        return tuple(int(s) for s in x.__cuda_array_interface__["shape"])
    if kind in (DLPACK_CPU, DLPACK_CUDA):
        return array_shape(native(x, kind), result_kind(kind))
    return tuple(int(s) for s in x.shape)


def _simulated(x: Any) -> bool:
    """Whether ``x`` is a device array of Numba's CUDA simulator (a NumPy array inside)."""
    return type(x).__name__ == "FakeCUDAArray"


def with_unit_axis(x: Any, kind: str) -> Any:
    """A view of ``x`` (of ``kind``) with a length-1 axis inserted before its last one, of the kind
    an op returns for ``kind`` (:func:`result_kind`): ``(N, C, L)`` -> ``(N, C, 1, L)``. No copy."""
    if kind in (DLPACK_CPU, DLPACK_CUDA):
        x, kind = native(x, kind), result_kind(kind)
    if kind in (NUMPY, CUPY, TORCH_CPU, TORCH_CUDA) or _simulated(x):
        return x[(slice(None),) * (_ndim(x, kind) - 1) + (None, slice(None))]
    # a Numba device array (basic indexing only: no None) or another __cuda_array_interface__
    # object: the same memory described with one more axis
    iface = x.__cuda_array_interface__
    shape = tuple(int(n) for n in iface["shape"])
    itemsize = np.dtype(iface["typestr"]).itemsize
    strides = iface.get("strides") or tuple(int(s) for s in np.cumprod((1,) + shape[:0:-1])[::-1] * itemsize)
    view = dict(iface, shape=shape[:-1] + (1,) + shape[-1:], strides=tuple(strides[:-1]) + (itemsize,) + tuple(strides[-1:]))
    from numba import cuda

    return cuda.from_cuda_array_interface(view, owner=x, sync=False)


def without_unit_axis(x: Any, kind: str) -> Any:
    """A view of ``x`` (a result of ``kind``) without its length-1 axis before the last one."""
    return x[(slice(None),) * (_ndim(x, kind) - 2) + (0, slice(None))]


def _ndim(x: Any, kind: str) -> int:
    return len(array_shape(x, kind))
