"""Classify array arguments by where they live, without importing CuPy or Numba's CUDA target.

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

DEVICE_KINDS = (CUPY, NUMBA, CAI)


def is_cupy_array(x: Any) -> bool:
    cupy = sys.modules.get("cupy")
    return cupy is not None and isinstance(x, cupy.ndarray)


def is_numba_device_array(x: Any) -> bool:
    numba_cuda = sys.modules.get("numba.cuda")
    if numba_cuda is None:
        return False
    return bool(numba_cuda.devicearray.is_cuda_ndarray(x))


def array_kind(x: Any) -> str | None:
    """Return the kind of ``x`` (one of the module constants) or None for a non-array."""
    if isinstance(x, np.ndarray):
        return NUMPY
    if is_cupy_array(x):
        return CUPY
    if is_numba_device_array(x):
        return NUMBA
    if hasattr(x, "__cuda_array_interface__"):
        return CAI
    return None


def describe_kind(kind: str) -> str:
    """Human-readable 'where it lives' for error messages."""
    return {
        NUMPY: "a numpy.ndarray (host memory)",
        CUPY: "a cupy.ndarray (CUDA device memory)",
        NUMBA: "a Numba CUDA device array (device memory)",
        CAI: "a __cuda_array_interface__ object (CUDA device memory)",
    }[kind]


def array_dtype(x: Any, kind: str) -> np.dtype:
    if kind == NUMPY:
        return x.dtype
    if kind == CAI:
        return np.dtype(x.__cuda_array_interface__["typestr"])
    return np.dtype(x.dtype)


def array_shape(x: Any, kind: str) -> tuple[int, ...]:
    if kind == NUMPY:
        return x.shape  # already a tuple of Python ints
    if kind == CAI:
        return tuple(int(s) for s in x.__cuda_array_interface__["shape"])
    return tuple(int(s) for s in x.shape)
