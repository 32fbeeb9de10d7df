"""1-D convolutions as views of the 2-D ones: ``(N, C, L)`` is computed as ``(N, C, 1, L)``.

No kernel of its own: every array gets a length-1 H axis (a view, never a copy), the 1-D
arguments become their 2-D forms (stride ``s`` -> ``(1, s)``, padding ``p`` -> ``((0, 0), (p, p))``),
and the 2-D op's result comes back without that axis. The checks that only make sense in one
dimension (ranks, the weight's channels, the kernel against the padded length) are made here, in
1-D terms; the rest is the 2-D ops' validation, under the 1-D op's name.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np

from . import _arrays, _dispatch, _padding_modes
from ._spec import (
    _facts,
    _groups,
    _int,
    _size,
    conv2d_bias_spec,
    conv2d_input_spec,
    conv2d_spec,
    conv2d_weight_spec,
    conv_transpose2d_spec,
    forward_spec,
)

IntSingle = Union[int, Sequence[int]]
Padding1d = Union[int, Sequence[int], Sequence[Sequence[int]], str]


def _single(op: str, name: str, value: Any, minimum: int) -> int:
    """An int or a sequence of one int (PyTorch's ``(s,)``) -> a Python int >= ``minimum``."""
    if isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, (str, bytes)):
        items = tuple(value)
        if len(items) != 1:
            raise ValueError(f"{op}: {name} must be an int or a sequence of one int, got {items!r}")
        value = items[0]
    v = _int(op, name, value)
    if v < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {v}")
    return v


def _padding_1d(op: str, value: Any) -> Union[str, tuple[int, int]]:
    """``'same'``, ``'valid'`` or ``(left, right)`` from ``p``, ``(p,)`` or ``((left, right),)``."""
    if isinstance(value, str):
        if value in ("same", "valid"):
            return value
        raise ValueError(f"{op}: padding must be an int, (int,), ((left, right),), 'valid' or 'same', got {value!r}")
    if isinstance(value, (Sequence, np.ndarray)):
        items = tuple(value)
        if len(items) == 1 and isinstance(items[0], (Sequence, np.ndarray)) and not isinstance(items[0], str):
            sides = tuple(items[0])
            if len(sides) != 2:
                raise ValueError(f"{op}: padding ((left, right),) needs two ints, got {value!r}")
            left, right = (_int(op, "padding", v) for v in sides)
            if min(left, right) < 0:
                raise ValueError(f"{op}: padding must be >= 0, got {((left, right),)}")
            return (left, right)
    p = _single(op, "padding", value, 0)
    return (p, p)


def _padding_2d(pad: Union[str, tuple[int, int]]) -> Any:
    return pad if isinstance(pad, str) else ((0, 0), pad)


def _rank(op: str, name: str, shape: tuple[int, ...], ranks: tuple[int, ...], what: str) -> None:
    if len(shape) not in ranks:
        raise ValueError(f"{op}: {name} must be {what}, got {len(shape)}-D shape {tuple(shape)}")


_INPUT = "2-D (C_in, L) or 3-D (N, C_in, L)"


def _check_kernel_fits(op: str, length: int, k: int, dilation: int, pad: Union[str, tuple[int, int]]) -> None:
    if pad == "same":
        return
    left, right = (0, 0) if pad == "valid" else pad
    span = dilation * (k - 1) + 1
    if span > length + left + right:
        raise ValueError(
            f"{op}: dilated kernel length {span} is larger than the padded input length {length + left + right} "
            f"(input {length}, padding {left} left / {right} right)"
        )


def _geometry(op: str, in_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: Any, padding: Any,
              dilation: Any, groups: Any, in_name: str = "input", w_name: str = "weight") -> tuple:
    """The 1-D checks of a forward geometry: ``(stride, dilation, padding, groups, output length)``."""
    _rank(op, in_name, in_shape, (2, 3), _INPUT)
    _rank(op, w_name, w_shape, (3,), "3-D (C_out, C_in/groups, k)")
    c_in, groups = in_shape[-2], _groups(op, groups)
    if w_shape[1] * groups != c_in:
        raise ValueError(
            f"{op}: {w_name}.shape[1] * groups ({w_shape[1]} * {groups}) must equal in_channels ({c_in}); "
            f"{w_name} must have shape (C_out, C_in/groups, k) = ({w_shape[0]}, {c_in // groups}, {w_shape[2]})"
        )
    s, d, pad = _single(op, "stride", stride, 1), _single(op, "dilation", dilation, 1), _padding_1d(op, padding)
    _check_kernel_fits(op, in_shape[-1], w_shape[2], d, pad)
    if pad == "same":
        total = d * (w_shape[2] - 1)
        pad = (total // 2, total - total // 2) if s == 1 else pad  # strided 'same': the 2-D check says why not
    sides = (0, 0) if pad == "valid" or pad == "same" else pad
    length = (in_shape[-1] + sides[0] + sides[1] - d * (w_shape[2] - 1) - 1) // s + 1
    return s, d, pad, groups, length


def _check_grad_output(op: str, gy_shape: tuple[int, ...], in_shape: tuple[int, ...], w_shape: tuple[int, ...],
                       length: int) -> None:
    want = in_shape[:-2] + (w_shape[0], length)
    if tuple(gy_shape) != want:
        raise ValueError(f"{op}: grad_output has shape {tuple(gy_shape)}, expected {want} (the conv1d output)")


def _view(a: Any) -> Any:
    return None if a is None else _arrays.with_unit_axis(a, _arrays.array_kind(a))


def _as_viewed(a: Any) -> Any:
    """``a`` (a bias: no axis to add) of the kind :func:`_view` gives the other arrays."""
    kind = None if a is None else _arrays.array_kind(a)
    return _arrays.native(a, kind) if kind in (_arrays.DLPACK_CPU, _arrays.DLPACK_CUDA) else a


def _out_view(out: Any) -> Any:
    if out is None:
        return None
    kind = _arrays.array_kind(out)
    if kind is None:
        return out  # the 2-D op's check names what is wrong with it
    return _arrays.with_unit_axis(out, kind)


def _result(result4: Any, out: Any) -> Any:
    if out is not None:
        return out
    return _arrays.without_unit_axis(result4, _arrays.array_kind(result4))


def conv1d(
    input: Any,
    weight: Any,
    bias: Optional[Any] = None,
    stride: IntSingle = 1,
    padding: Padding1d = 0,
    dilation: IntSingle = 1,
    groups: int = 1,
    *,
    out: Optional[Any] = None,
    padding_mode: str = "zeros",
) -> Any:
    """1-D grouped convolution (cross-correlation), with ``torch.nn.functional.conv1d`` semantics.

    ``out[n, o, x] = bias[o] + sum_{c, j} weight[o, c, j] * input_padded[n, g*C_in/groups + c,
    x*stride + j*dilation]`` with ``g = o // (C_out / groups)``: the grouping of :func:`conv2d`,
    along one axis. Computed by the 2-D kernels on ``(N, C, 1, L)`` views (no copy).

    Parameters
    ----------
    input : array, shape (N, C_in, L) or (C_in, L)
        Any array kind :func:`conv2d` takes.
    weight : array, shape (C_out, C_in / groups, k)
    bias : array, shape (C_out,), optional
    stride : int or (int,), default 1
    padding : int, (int,), ((int, int),), 'valid' or 'same', default 0
        Zeros on both ends, or ``((left, right),)`` for each end on its own.
    dilation : int or (int,), default 1
    groups : int, default 1
        Must divide both C_in and C_out.
    out : array, optional
        Preallocated result of shape (N, C_out, L_out); returned.
    padding_mode : 'zeros', 'reflect', 'replicate' or 'circular', default 'zeros'
        As :func:`conv2d`.

    Returns
    -------
    array, shape (N, C_out, L_out) or (C_out, L_out)
        ``L_out = (L + left + right - dilation * (k - 1) - 1) // stride + 1``, of the kind
        :func:`conv2d` returns for ``input``.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> x = np.array([[[1.0, 2.0, 3.0, 4.0]]])
    >>> nbconv.conv1d(x, np.ones((1, 1, 2))).tolist()
    [[[3.0, 5.0, 7.0]]]
    """
    op = "conv1d"
    arrays = {"input": input, "weight": weight, "bias": bias}
    kind, shapes, _ = _facts(op, arrays)
    s, d, pad, groups, _ = _geometry(op, shapes["input"], shapes["weight"], stride, padding, dilation, groups)
    x4, w4, b = _view(input), _view(weight), _as_viewed(bias)
    spec = conv2d_spec(x4, w4, b, (1, s), _padding_2d(pad), (1, d), groups, op=op)
    if padding_mode != "zeros":
        mode = _padding_modes.check_mode(op, padding_mode)
        _padding_modes.check_geometry(spec, mode)
        return _result(_padding_modes.conv2d(spec, mode, x4, w4, b, _out_view(out)), out)
    return _result(_dispatch.conv2d_forward(spec, x4, w4, b, _out_view(out)), out)


def conv_transpose1d(
    input: Any,
    weight: Any,
    bias: Optional[Any] = None,
    stride: IntSingle = 1,
    padding: Padding1d = 0,
    output_padding: IntSingle = 0,
    groups: int = 1,
    dilation: IntSingle = 1,
    *,
    out: Optional[Any] = None,
) -> Any:
    """1-D grouped transposed convolution, with ``torch.nn.functional.conv_transpose1d``
    semantics: the adjoint of :func:`conv1d` (see :func:`conv_transpose2d`).

    Parameters
    ----------
    input : array, shape (N, C_in, L) or (C_in, L)
    weight : array, shape (C_in, C_out / groups, k)
        The input channels first, as in PyTorch.
    bias : array, shape (C_out,), optional
    stride, padding, output_padding, dilation : int or (int,)
        As :func:`conv_transpose2d` along one axis; ``padding`` also ``((left, right),)``.
    groups : int, default 1
    out : array, optional
        Preallocated result; returned.

    Returns
    -------
    array, shape (N, C_out, L_out) or (C_out, L_out)
        ``L_out = (L - 1) * stride - left - right + dilation * (k - 1) + output_padding + 1``.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> nbconv.conv_transpose1d(np.array([[[1.0, 10.0]]]), np.ones((1, 1, 2))).tolist()
    [[[1.0, 11.0, 10.0]]]
    """
    op = "conv_transpose1d"
    arrays = {"input": input, "weight": weight, "bias": bias}
    kind, shapes, _ = _facts(op, arrays)
    _rank(op, "input", shapes["input"], (2, 3), _INPUT)
    _rank(op, "weight", shapes["weight"], (3,), "3-D (C_in, C_out/groups, k)")
    s, d, pad = _single(op, "stride", stride, 1), _single(op, "dilation", dilation, 1), _padding_1d(op, padding)
    opad = _single(op, "output_padding", output_padding, 0)
    x4, w4, b = _view(input), _view(weight), _as_viewed(bias)
    spec = conv_transpose2d_spec(x4, w4, b, (1, s), _padding_2d(pad), (0, opad), groups, (1, d), op=op)
    return _result(_dispatch.conv2d_forward(spec, x4, w4, b, _out_view(out)), out)


def conv1d_input(
    input_size: Sequence[int],
    weight: Any,
    grad_output: Any,
    stride: IntSingle = 1,
    padding: Padding1d = 0,
    dilation: IntSingle = 1,
    groups: int = 1,
    *,
    out: Optional[Any] = None,
    padding_mode: str = "zeros",
) -> Any:
    """Gradient of :func:`nbconv.conv1d` with respect to its input (``torch.nn.grad.conv1d_input``).

    Parameters
    ----------
    input_size : sequence of 3 ints (N, C_in, L), or 2 (C_in, L) for unbatched input
    weight : array, shape (C_out, C_in / groups, k)
    grad_output : array, shape (N, C_out, L_out) (2-D for unbatched input)
    stride, padding, dilation, groups, padding_mode
        As given to :func:`nbconv.conv1d`.
    out : array, optional
        Preallocated result of shape ``input_size``; returned.

    Returns
    -------
    array of shape ``input_size``, of ``grad_output``'s kind and dtype.
    """
    op = "conv1d_input"
    size = _size(op, "input_size", input_size, (2, 3), "(N, C_in, L) or (C_in, L)")
    arrays = {"grad_output": grad_output, "weight": weight}
    kind, shapes, _ = _facts(op, arrays, optional=())
    s, d, pad, groups, length = _geometry(op, size, shapes["weight"], stride, padding, dilation, groups,
                                          in_name="input_size")
    _check_grad_output(op, shapes["grad_output"], size, shapes["weight"], length)
    w4, gy4 = _view(weight), _view(grad_output)
    size4 = size[:-1] + (1,) + size[-1:]
    spec = conv2d_input_spec(size4, w4, gy4, (1, s), _padding_2d(pad), (1, d), groups, op=op)
    if padding_mode != "zeros":
        mode = _padding_modes.check_mode(op, padding_mode)
        forward = forward_spec(op, size4, shapes["weight"][:2] + (1,) + shapes["weight"][2:], (1, s),
                               _padding_2d(pad), (1, d), groups, spec)
        _padding_modes.check_geometry(forward, mode)
        return _result(_padding_modes.conv2d_input(forward, mode, size4, w4, gy4, _out_view(out)), out)
    return _result(_dispatch.conv2d_forward(spec, gy4, w4, None, _out_view(out)), out)


def conv1d_weight(
    input: Any,
    weight_size: Sequence[int],
    grad_output: Any,
    stride: IntSingle = 1,
    padding: Padding1d = 0,
    dilation: IntSingle = 1,
    groups: int = 1,
    *,
    out: Optional[Any] = None,
    padding_mode: str = "zeros",
) -> Any:
    """Gradient of :func:`nbconv.conv1d` with respect to its weight (``torch.nn.grad.conv1d_weight``).

    Parameters
    ----------
    input : array, shape (N, C_in, L) or (C_in, L)
    weight_size : sequence of 3 ints (C_out, C_in / groups, k)
    grad_output : array, shape (N, C_out, L_out) (2-D for unbatched input)
    stride, padding, dilation, groups, padding_mode
        As given to :func:`nbconv.conv1d`.
    out : array, optional
        Preallocated result of shape ``weight_size``; returned.

    Returns
    -------
    array of shape ``weight_size``, of ``input``'s kind and dtype (zeros for N = 0).
    """
    op = "conv1d_weight"
    size = _size(op, "weight_size", weight_size, (3,), "(C_out, C_in/groups, k)")
    arrays = {"input": input, "grad_output": grad_output}
    kind, shapes, _ = _facts(op, arrays, optional=())
    s, d, pad, groups, length = _geometry(op, shapes["input"], size, stride, padding, dilation, groups,
                                          w_name="weight_size")
    _check_grad_output(op, shapes["grad_output"], shapes["input"], size, length)
    x4, gy4 = _view(input), _view(grad_output)
    size4 = size[:2] + (1,) + size[2:]
    spec = conv2d_weight_spec(x4, size4, gy4, (1, s), _padding_2d(pad), (1, d), groups, op=op)
    if padding_mode != "zeros":
        mode = _padding_modes.check_mode(op, padding_mode)
        _padding_modes.check_geometry(spec, mode)
        return _result(_padding_modes.conv2d_weight(spec, mode, x4, size4, gy4, _out_view(out)), out)
    return _result(_dispatch.conv2d_weight(spec, x4, gy4, _out_view(out)), out)


def conv1d_bias(grad_output: Any, *, out: Optional[Any] = None) -> Any:
    """Gradient of :func:`nbconv.conv1d` with respect to its bias: ``grad_output`` (N, C_out, L_out)
    or (C_out, L_out) summed over N and L. Returns shape (C_out,)."""
    op = "conv1d_bias"
    kind, shapes, _ = _facts(op, {"grad_output": grad_output}, optional=())
    _rank(op, "grad_output", shapes["grad_output"], (2, 3), "2-D (C_out, L_out) or 3-D (N, C_out, L_out)")
    gy4 = _view(grad_output)
    return _dispatch.conv2d_bias(conv2d_bias_spec(gy4, op=op), gy4, out)
