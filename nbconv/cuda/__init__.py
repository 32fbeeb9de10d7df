"""CUDA backend: ``@cuda.jit`` kernel factories and their launchers.

Importing this package imports ``numba.cuda`` but neither CuPy nor the CUDA driver: the driver
is touched on the first launch. ``nbconv`` itself imports this package lazily.
"""

from ._versions import check_installed

check_installed()

from ._launch import conv2d_bias, conv2d_forward, conv2d_weight

__all__ = ["conv2d_forward", "conv2d_weight", "conv2d_bias"]
