"""Launchers of the CPU kernels: layout normalisation and the choice of algorithm per spec.

Kernels receive C-contiguous 4-D arrays of one dtype. Inputs in any other layout (Fortran
order, strided views) are copied once into C order here; read-only inputs are used as they are.
"""

from __future__ import annotations

import numpy as np

from ._direct import forward_direct


def _batched(a: np.ndarray, unbatched: bool) -> np.ndarray:
    return a[np.newaxis] if unbatched else a


def choose_oc_block(out_per_group: int) -> int:
    """Output channels per parallel task: whole small groups, slices of large ones."""
    return min(out_per_group, 4)


def conv2d_forward(spec, input: np.ndarray, weight: np.ndarray, bias, out: np.ndarray) -> np.ndarray:
    """Compute ``conv2d`` of ``spec`` into ``out`` (NumPy arrays that passed validation)."""
    x = np.ascontiguousarray(_batched(input, spec.unbatched))
    w = np.ascontiguousarray(weight)
    b = np.zeros(spec.out_channels, spec.dtype) if bias is None else np.ascontiguousarray(bias)
    target = _batched(out, spec.unbatched)
    dest = target if target.flags.c_contiguous else np.empty(target.shape, spec.dtype)
    forward_direct(x, w, b, dest, spec, choose_oc_block(spec.out_per_group))
    if dest is not target:
        target[...] = dest
    return out
