"""Launchers of the CPU kernels: layout normalisation and the choice of algorithm per spec.

Kernels receive C-contiguous 4-D arrays of one dtype. Inputs in any other layout (Fortran
order, strided views) are copied once into C order here; read-only inputs are used as they are.
"""

from __future__ import annotations

import numba
import numpy as np

from ._packed import forward_packed


def _batched(a: np.ndarray, unbatched: bool) -> np.ndarray:
    return a[np.newaxis] if unbatched else a


def choose_oc_block(batch: int, groups: int, out_per_group: int, threads: int) -> int:
    """Output channels per parallel task.

    A task packs its group's input planes once, so whole groups are best; a group is sliced
    only as far as needed to give every thread at least 4 tasks.
    """
    slices = -(-4 * threads // max(1, batch * groups))  # ceil
    return max(1, -(-out_per_group // min(slices, out_per_group)))


def conv2d_forward(spec, input: np.ndarray, weight: np.ndarray, bias, out: np.ndarray) -> np.ndarray:
    """Compute ``conv2d`` of ``spec`` into ``out`` (NumPy arrays that passed validation)."""
    x = np.ascontiguousarray(_batched(input, spec.unbatched))
    w = np.ascontiguousarray(weight)
    b = np.zeros(spec.out_channels, spec.dtype) if bias is None else np.ascontiguousarray(bias)
    target = _batched(out, spec.unbatched)
    dest = target if target.flags.c_contiguous else np.empty(target.shape, spec.dtype)
    oc_block = choose_oc_block(spec.batch, spec.groups, spec.out_per_group, numba.get_num_threads())
    forward_packed(x, w, b, dest, spec, oc_block)
    if dest is not target:
        target[...] = dest
    return out
