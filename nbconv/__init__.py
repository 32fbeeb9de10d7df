"""nbconv: grouped and depthwise 2-D convolution for NumPy (Numba CPU) and CuPy (Numba CUDA)."""

from ._conv import conv2d
from ._version import __version__

__all__ = ["conv2d", "__version__"]
