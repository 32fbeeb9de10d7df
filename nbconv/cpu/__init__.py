"""CPU backend: Numba ``@njit(parallel=True)`` kernels and their launchers (NumPy arrays only)."""

from ._launch import conv2d_bias, conv2d_forward, conv2d_weight

__all__ = ["conv2d_forward", "conv2d_weight", "conv2d_bias"]
