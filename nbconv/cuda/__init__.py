"""CUDA backend: ``@cuda.jit`` kernel factories and their launchers.

Importing this package imports ``numba.cuda`` but neither CuPy nor the CUDA driver: the driver
is touched on the first launch. ``nbconv`` itself imports this package lazily.
"""

from ._launch import conv2d_forward

__all__ = ["conv2d_forward"]
