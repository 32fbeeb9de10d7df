"""Public convolution ops: docstring, type hints and one call into spec -> dispatch."""

from __future__ import annotations

from typing import Any, Optional

from . import _dispatch
from ._spec import IntPair, Padding, conv2d_spec


def conv2d(
    input: Any,
    weight: Any,
    bias: Optional[Any] = None,
    stride: IntPair = 1,
    padding: Padding = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    *,
    out: Optional[Any] = None,
) -> Any:
    """2-D grouped convolution (cross-correlation), with ``torch.nn.functional.conv2d`` semantics.

    The input channels are split into ``groups`` consecutive blocks of ``C_in / groups``;
    output channel ``o`` belongs to group ``o // (C_out / groups)`` and sees only that group's
    input channels::

        out[n, o, y, x] = bias[o] + sum_{c, i, j} weight[o, c, i, j]
                          * input_padded[n, g * C_in/groups + c, y * sH + i * dH, x * sW + j * dW]

    with ``g = o // (C_out / groups)``. ``groups=1`` is a dense convolution, ``groups=C_in`` a
    depthwise one (``C_out = m * C_in`` for a channel multiplier ``m``).

    Parameters
    ----------
    input : array, shape (N, C_in, H, W) or (C_in, H, W)
        NumPy array (computed on the CPU), CuPy array or Numba CUDA device array (computed on
        the GPU). float32 or float64; float16 too on the GPU (accumulated in float32).
    weight : array, shape (C_out, C_in / groups, kH, kW)
        Same kind and dtype as ``input``.
    bias : array, shape (C_out,), optional
        Added to every output pixel of its channel.
    stride : int or (int, int), default 1
    padding : int, (int, int), 'valid' or 'same', default 0
        Implicit zero padding on both sides of H and W. ``'same'`` keeps the input size (stride 1
        only); for an even dilated kernel the extra row/column is padded on the far side.
    dilation : int or (int, int), default 1
        Spacing between kernel taps.
    groups : int, default 1
        Must divide both C_in and C_out.
    out : array, optional
        Preallocated result of the right shape, dtype and kind; must not overlap the inputs.

    Returns
    -------
    array, shape (N, C_out, H_out, W_out) or (C_out, H_out, W_out)
        Of the input's kind (a Numba device array for other ``__cuda_array_interface__``
        objects) and dtype, with ``H_out = (H + pad_top + pad_bottom - dH * (kH - 1) - 1) // sH + 1``
        and likewise for W. On the GPU the kernel is launched asynchronously on CuPy's current
        stream (Numba's default stream for Numba arrays).

    Raises
    ------
    TypeError
        For a non-array argument, arrays on different devices, mismatched or unsupported dtypes,
        non-integer stride/padding/dilation/groups.
    ValueError
        For inconsistent shapes or bad values; every message starts with ``conv2d:``.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> x = np.array([100.0, 200.0, 300.0]).reshape(1, 3, 1, 1)
    >>> w = np.arange(6.0).reshape(6, 1, 1, 1)   # C_out=6, C_in/groups=1
    >>> nbconv.conv2d(x, w, groups=3).ravel()    # outputs 2g, 2g+1 read input channel g
    array([   0.,  100.,  400.,  600., 1200., 1500.])
    """
    spec = conv2d_spec(input, weight, bias, stride, padding, dilation, groups)
    return _dispatch.conv2d_forward(spec, input, weight, bias, out)
