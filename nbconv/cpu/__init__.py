"""CPU backend: Numba ``@njit(parallel=True)`` kernels and their launchers (NumPy arrays only)."""

from . import _launch
from ._threads import taking_turns

conv2d_forward = taking_turns(_launch.conv2d_forward)
conv2d_weight = taking_turns(_launch.conv2d_weight)
conv2d_bias = taking_turns(_launch.conv2d_bias)
takes_padding_mode = _launch.takes_padding_mode

__all__ = ["conv2d_forward", "conv2d_weight", "conv2d_bias", "takes_padding_mode"]
