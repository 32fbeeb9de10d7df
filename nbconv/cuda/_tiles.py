"""What the two tile kernels (``_conv_tiles``, ``_wgrad_tiles``) share of their keys: the thread
grid and shared memory of a ``tile = (TM, TN, TK)`` computed ``micro = (RM, RN)`` a thread.

Their products loops are alike too, but stay written out in each kernel: with a call to a
``@cuda.jit(device=True)`` function, ``numba.cuda.compile_ptx`` (numba-cuda 0.30.4) asked for a
GPU context (``CudaSupportError`` without a driver), and the kernels must compile to PTX without
one (``tests/compile_kernels.py``)."""

from __future__ import annotations


def thread_grid(key) -> tuple[int, int]:
    """(BX, BY): threads along the tile's columns (TN / RN) and rows (TM / RM)."""
    (tm, tn, _), (rm, rn) = key.tile, key.micro
    return tn // rn, tm // rm


def threads(key) -> int:
    bx, by = thread_grid(key)
    return bx * by


def shared_bytes(key) -> int:
    """Both slices of a step: TK rows of TM + 1 words (one of padding) and of TN words."""
    tm, tn, tk = key.tile
    return tk * (tm + 1 + tn) * (8 if key.acc_double else 4)
