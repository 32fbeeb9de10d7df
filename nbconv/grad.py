"""Gradients of :func:`nbconv.conv2d`, with ``torch.nn.grad`` semantics and argument order.

For ``y = conv2d(x, w, b, stride, padding, dilation, groups)`` and a gradient ``gy`` of a loss
with respect to ``y``::

    gx = conv2d_input(x.shape, w, gy, stride, padding, dilation, groups)
    gw = conv2d_weight(x, w.shape, gy, stride, padding, dilation, groups)
    gb = conv2d_bias(gy)

Every padding form of ``conv2d`` is accepted (also ``'same'`` and ``'valid'``), as are its
dtypes, layouts, array kinds and ``out=``.

The 1-D twins ``conv1d_input``, ``conv1d_weight`` and ``conv1d_bias`` (of :func:`nbconv.conv1d`,
``torch.nn.grad.conv1d_*``'s argument order) run the same kernels on ``(N, C, 1, L)`` views.

Determinism: on the CPU every result is bit-identical run after run, whatever the number of
threads (each output element is summed by one task in an order fixed by the shapes and by the
compiled code: the same machine and build give the same bits). On the GPU
``conv2d_input`` is a gather (no atomics) and ``conv2d_weight`` / ``conv2d_bias`` reduce through
per-block partial sums added in a fixed order, so they are bit-identical run after run too.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from . import _dispatch, _padding_modes
from ._arrays import array_kind, array_shape
from ._conv1d import conv1d_bias, conv1d_input, conv1d_weight
from ._spec import (
    IntPair,
    Padding,
    conv2d_bias_spec,
    conv2d_input_spec,
    conv2d_weight_spec,
    forward_spec,
)

__all__ = ["conv1d_bias", "conv1d_input", "conv1d_weight", "conv2d_bias", "conv2d_input", "conv2d_weight"]


def conv2d_input(
    input_size: Sequence[int],
    weight: Any,
    grad_output: Any,
    stride: IntPair = 1,
    padding: Padding = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    *,
    out: Optional[Any] = None,
    padding_mode: str = "zeros",
) -> Any:
    """Gradient of :func:`nbconv.conv2d` with respect to its input.

    A grouped transposed convolution of ``grad_output`` with ``weight`` (the same kernel as
    :func:`nbconv.conv_transpose2d`; ``output_padding`` is chosen to give ``input_size``).

    Parameters
    ----------
    input_size : sequence of 4 ints (N, C_in, H, W), or 3 (C_in, H, W) for unbatched input
    weight : array, shape (C_out, C_in / groups, kH, kW)
        NumPy (CPU) or CuPy / Numba device array (GPU).
    grad_output : array, shape (N, C_out, H_out, W_out)
        Must be the shape ``conv2d`` gives for ``input_size``; same kind and dtype as ``weight``.
    stride, padding, dilation, groups, padding_mode
        As given to :func:`nbconv.conv2d`.
    out : array, optional
        Preallocated result of shape ``input_size``.

    Returns
    -------
    array of shape ``input_size``, of ``grad_output``'s kind and dtype.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> w = np.ones((2, 1, 1, 2))                      # depthwise, two taps along W
    >>> gy = np.ones((1, 2, 1, 2))
    >>> nbconv.grad.conv2d_input((1, 2, 1, 3), w, gy, groups=2)[0, 0].tolist()
    [[1.0, 2.0, 1.0]]
    """
    spec = conv2d_input_spec(input_size, weight, grad_output, stride, padding, dilation, groups)
    if padding_mode != "zeros":
        mode = _padding_modes.check_mode("conv2d_input", padding_mode)
        forward = forward_spec("conv2d_input", _size_of(input_size), _shape_of(weight), stride, padding, dilation,
                               groups, spec)
        _padding_modes.check_geometry(forward, mode)
        return _padding_modes.conv2d_input(forward, mode, tuple(input_size), weight, grad_output, out)
    return _dispatch.conv2d_forward(spec, grad_output, weight, None, out)


def conv2d_weight(
    input: Any,
    weight_size: Sequence[int],
    grad_output: Any,
    stride: IntPair = 1,
    padding: Padding = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    *,
    out: Optional[Any] = None,
    padding_mode: str = "zeros",
) -> Any:
    """Gradient of :func:`nbconv.conv2d` with respect to its weight.

    ``gw[o, c, i, j] = sum over n, y, x of grad_output[n, o, y, x] * input_padded[n, g*C_in/groups + c,
    y*sH + i*dH, x*sW + j*dW]`` with ``g = o // (C_out / groups)``.

    Parameters
    ----------
    input : array, shape (N, C_in, H, W) or (C_in, H, W)
    weight_size : sequence of 4 ints (C_out, C_in / groups, kH, kW)
    grad_output : array, shape (N, C_out, H_out, W_out) (3-D for unbatched input)
    stride, padding, dilation, groups, padding_mode
        As given to :func:`nbconv.conv2d`.
    out : array, optional
        Preallocated result of shape ``weight_size``.

    Returns
    -------
    array of shape ``weight_size``, of ``input``'s kind and dtype (zeros for N = 0).

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> x = np.arange(3.0).reshape(1, 1, 1, 3)
    >>> gy = np.ones((1, 1, 1, 2))
    >>> nbconv.grad.conv2d_weight(x, (1, 1, 1, 2), gy).ravel().tolist()
    [1.0, 3.0]
    """
    spec = conv2d_weight_spec(input, weight_size, grad_output, stride, padding, dilation, groups)
    if padding_mode != "zeros":
        mode = _padding_modes.check_mode("conv2d_weight", padding_mode)
        _padding_modes.check_geometry(spec, mode)
        return _padding_modes.conv2d_weight(spec, mode, input, tuple(weight_size), grad_output, out)
    return _dispatch.conv2d_weight(spec, input, grad_output, out)


def conv2d_bias(grad_output: Any, *, out: Optional[Any] = None) -> Any:
    """Gradient of :func:`nbconv.conv2d` with respect to its bias: ``grad_output`` summed over
    N, H and W.

    Parameters
    ----------
    grad_output : array, shape (N, C_out, H_out, W_out) or (C_out, H_out, W_out)
    out : array, optional
        Preallocated result of shape (C_out,).

    Returns
    -------
    array, shape (C_out,), of ``grad_output``'s kind and dtype.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> nbconv.grad.conv2d_bias(np.ones((2, 3, 4, 5))).tolist()
    [40.0, 40.0, 40.0]
    """
    spec = conv2d_bias_spec(grad_output)
    return _dispatch.conv2d_bias(spec, grad_output, out)


def _size_of(size: Any) -> tuple[int, ...]:
    return tuple(int(n) for n in size)


def _shape_of(a: Any) -> tuple[int, ...]:
    return array_shape(a, array_kind(a))
