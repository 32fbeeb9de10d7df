"""Public convolution ops: docstring, type hints and one call into spec -> dispatch."""

from __future__ import annotations

from typing import Any, Optional

from . import _dispatch, _padding_modes
from ._spec import IntPair, Padding, conv2d_spec, conv_transpose2d_spec


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
    padding_mode: str = "zeros",
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
        NumPy array or CPU torch tensor (computed on the CPU), CuPy array, Numba CUDA device
        array or CUDA torch tensor (computed on the GPU); other ``__cuda_array_interface__`` and
        DLPack arrays too. float32 or float64; float16 too on the GPU (accumulated in float32).
    weight : array, shape (C_out, C_in / groups, kH, kW)
        Same kind and dtype as ``input``.
    bias : array, shape (C_out,), optional
        Added to every output pixel of its channel.
    stride : int or (int, int), default 1
    padding : int, (int, int), ((int, int), (int, int)), 'valid' or 'same', default 0
        Implicit zero padding: ``p`` on all four sides, ``(pH, pW)`` on both sides of H and W, or
        ``((top, bottom), (left, right))`` for each side on its own. ``'same'`` keeps the input
        size (stride 1 only); for an even dilated kernel the extra row/column is padded on the far
        side.
    dilation : int or (int, int), default 1
        Spacing between kernel taps.
    groups : int, default 1
        Must divide both C_in and C_out.
    out : array, optional
        Preallocated result of the right shape, dtype and kind; must not overlap the inputs.
    padding_mode : 'zeros', 'reflect', 'replicate' or 'circular', default 'zeros'
        What the padding holds, as ``torch.nn.Conv2d``'s ``padding_mode``: zeros, the input
        mirrored about its edge (``padding < size``), its edge repeated, or the input wrapped
        around (``padding <= size``). No padded copy of the input is made (see the README's
        "Padding modes"); NumPy, CuPy and torch arrays.

    Returns
    -------
    array, shape (N, C_out, H_out, W_out) or (C_out, H_out, W_out)
        Of the input's kind (a Numba device array for other ``__cuda_array_interface__``
        objects, NumPy or CuPy for other DLPack arrays; torch tensors on the input's device) and
        dtype, with ``H_out = (H + pad_top + pad_bottom - dH * (kH - 1) - 1) // sH + 1``
        and likewise for W. On the GPU the kernel is launched asynchronously on CuPy's (for
        torch tensors PyTorch's) current stream; Numba's default stream for Numba arrays.

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
    if padding_mode != "zeros":
        mode = _padding_modes.check_mode("conv2d", padding_mode)
        _padding_modes.check_geometry(spec, mode)
        return _padding_modes.conv2d(spec, mode, input, weight, bias, out)
    return _dispatch.conv2d_forward(spec, input, weight, bias, out)


def conv_transpose2d(
    input: Any,
    weight: Any,
    bias: Optional[Any] = None,
    stride: IntPair = 1,
    padding: Padding = 0,
    output_padding: IntPair = 0,
    groups: int = 1,
    dilation: IntPair = 1,
    *,
    out: Optional[Any] = None,
) -> Any:
    """2-D grouped transposed convolution, with ``torch.nn.functional.conv_transpose2d`` semantics.

    The adjoint of :func:`conv2d` (the gradient of its input): every input pixel scatters
    ``weight``'s taps into the output. Input channel ``i`` belongs to group
    ``g = i // (C_in / groups)`` and feeds only output channels ``g * C_out/groups ...
    (g + 1) * C_out/groups - 1``::

        out[n, g*C_out/groups + o, y*sH - pH + i*dH, x*sW - pW + j*dW]
            += input[n, c, y, x] * weight[c, o, i, j]      (c in group g)

    plus ``bias``. Computed as one stride-1 convolution of the input dilated by ``stride``, with
    the weight flipped and transposed per group (the same kernel as :func:`conv2d`).

    Parameters
    ----------
    input : array, shape (N, C_in, H, W) or (C_in, H, W)
        NumPy array (CPU), CuPy array or Numba CUDA device array (GPU); float32 or float64,
        float16 too on the GPU.
    weight : array, shape (C_in, C_out / groups, kH, kW)
        Note the order: the input channels come first (PyTorch's layout for transposed convs).
    bias : array, shape (C_out,), optional
    stride : int or (int, int), default 1
    padding : int, (int, int), ((int, int), (int, int)), 'valid' or 'same', default 0
        Rows/columns cropped from each side of the full transposed output (the padding of the
        ``conv2d`` this op is the adjoint of), in any form :func:`conv2d` takes.
        ``'same'`` (stride 1) keeps the input size.
    output_padding : int or (int, int), default 0
        Extra rows/columns added on the far side, to pick among the input sizes a strided
        ``conv2d`` maps to this size; must be smaller than ``stride`` or ``dilation``.
    groups : int, default 1
        Must divide C_in; C_out = weight.shape[1] * groups.
    dilation : int or (int, int), default 1
    out : array, optional
        Preallocated result of the right shape, dtype and kind; must not overlap the inputs.

    Returns
    -------
    array, shape (N, C_out, H_out, W_out) or (C_out, H_out, W_out)
        ``H_out = (H - 1) * sH - pad_top - pad_bottom + dH * (kH - 1) + output_padding + 1``.

    Raises
    ------
    TypeError, ValueError
        As :func:`conv2d`; every message starts with ``conv_transpose2d:``.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> x = np.array([1.0, 10.0]).reshape(1, 2, 1, 1)      # two input channels, one pixel
    >>> w = np.ones((2, 1, 2, 2))                           # groups=2: each feeds one output
    >>> nbconv.conv_transpose2d(x, w, groups=2)[0, :, :, :].tolist()
    [[[1.0, 1.0], [1.0, 1.0]], [[10.0, 10.0], [10.0, 10.0]]]
    """
    spec = conv_transpose2d_spec(input, weight, bias, stride, padding, output_padding, groups, dilation)
    return _dispatch.conv2d_forward(spec, input, weight, bias, out)
