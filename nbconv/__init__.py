"""nbconv: grouped and depthwise 2-D convolution for NumPy (Numba CPU) and CuPy (Numba CUDA)."""

from . import grad
from ._conv import conv2d, conv_transpose2d
from ._conv1d import conv1d, conv_transpose1d
from ._explain import Explanation, explain
from ._layer import Conv2d
from ._version import __version__

__all__ = ["Conv2d", "Explanation", "conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d", "explain", "grad", "__version__"]
