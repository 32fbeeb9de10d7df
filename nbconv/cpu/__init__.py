"""CPU backend: Numba ``@njit(parallel=True)`` kernels and their launchers (NumPy arrays only)."""

from ._launch import conv2d_forward

__all__ = ["conv2d_forward"]
