"""Arguments -> an immutable, validated :class:`ConvSpec`.

Every validation message of nbconv lives in this module, so that both backends raise the very
same errors, before any backend is chosen. Messages follow JAX/PyTorch: they start with the op
name and show the numbers, e.g. ``conv2d: in_channels (5) is not divisible by groups (2)``.
``TypeError`` is raised for wrong types (including dtypes), ``ValueError`` for wrong values.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Sequence, Union

import numpy as np

from . import _arrays

IntPair = Union[int, Sequence[int]]
Padding = Union[int, Sequence[int], str]

#: dtypes each backend computes in. float16 accumulates in float32 on CUDA.
CPU_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
CUDA_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


@dataclass(frozen=True)
class ConvSpec:
    """A validated 2-D grouped convolution problem (NCHW), shared by every backend.

    ``padding`` is ``(top, bottom, left, right)``: ``padding='same'`` may pad one more on the
    far side (bottom/right) than on the near side, as PyTorch does for even dilated kernels.
    """

    op: str
    batch: int
    in_channels: int
    in_size: tuple[int, int]
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]
    dilation: tuple[int, int]
    groups: int
    out_size: tuple[int, int]
    dtype: np.dtype
    has_bias: bool
    unbatched: bool
    kind: str  # array kind of ``input`` (see nbconv._arrays); the output has the same kind

    @property
    def in_per_group(self) -> int:
        return self.in_channels // self.groups

    @property
    def out_per_group(self) -> int:
        return self.out_channels // self.groups

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.in_channels) + self.in_size

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_per_group) + self.kernel_size

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of the result as the caller sees it (no batch axis for unbatched input)."""
        shape = (self.batch, self.out_channels) + self.out_size
        return shape[1:] if self.unbatched else shape

    @property
    def flops(self) -> int:
        """Multiply-adds x 2 of the convolution (padding taps counted, bias not)."""
        kh, kw = self.kernel_size
        oh, ow = self.out_size
        return 2 * self.batch * self.out_channels * oh * ow * self.in_per_group * kh * kw

    @property
    def min_bytes(self) -> int:
        """Bytes that must cross memory at least once: input, weight, bias read; output written."""
        n_elems = (
            int(np.prod(self.input_shape))
            + int(np.prod(self.weight_shape))
            + (self.out_channels if self.has_bias else 0)
            + self.batch * self.out_channels * self.out_size[0] * self.out_size[1]
        )
        return n_elems * self.dtype.itemsize


def _int(op: str, name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be an int, got bool ({value!r})")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__} ({value!r})") from None


def _pair(op: str, name: str, value: Any) -> tuple[int, int]:
    """An int or a sequence of two ints -> a pair of Python ints."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) and not isinstance(value, np.ndarray):
        try:
            v = _int(op, name, value)
        except TypeError:
            raise TypeError(
                f"{op}: {name} must be an int or a pair of ints, got {type(value).__name__} ({value!r})"
            ) from None
        return (v, v)
    items = list(value)
    if len(items) != 2:
        raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {len(items)} values {tuple(items)!r}")
    try:
        return (_int(op, name, items[0]), _int(op, name, items[1]))
    except TypeError:
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {tuple(items)!r}") from None


def _positive_pair(op: str, name: str, value: Any) -> tuple[int, int]:
    pair = _pair(op, name, value)
    if min(pair) < 1:
        raise ValueError(f"{op}: {name} must be >= 1, got {pair}")
    return pair


def _padding(
    op: str, value: Any, kernel_size: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]
) -> tuple[int, int, int, int]:
    if isinstance(value, str):
        if value == "valid":
            return (0, 0, 0, 0)
        if value == "same":
            if stride != (1, 1):
                raise ValueError(f"{op}: padding='same' is not supported for strided convolutions (stride={stride})")
            pads = []
            for k, d in zip(kernel_size, dilation):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]  # PyTorch: the extra one goes on the far side
            return tuple(pads)  # type: ignore[return-value]
        raise ValueError(f"{op}: padding must be an int, a pair of ints, 'valid' or 'same', got {value!r}")
    ph, pw = _pair(op, "padding", value)
    if min(ph, pw) < 0:
        raise ValueError(f"{op}: padding must be >= 0, got {(ph, pw)}")
    return (ph, ph, pw, pw)


def classify(op: str, arrays: dict[str, Any], optional: tuple[str, ...] = ("bias",)) -> str:
    """Kind of the arrays in ``arrays`` (name -> array or None); all must live on one side.

    Raises TypeError for a non-array, and for host arrays mixed with device arrays (naming which
    argument lives where). Device arrays of different libraries may be mixed; the first one
    given (``input``) decides the kind of the result.
    """
    kinds = {}
    for name, x in arrays.items():
        if x is None and name in optional:
            continue
        kind = _arrays.array_kind(x)
        if kind is None:
            raise TypeError(
                f"{op}: {name} must be a numpy.ndarray, a cupy.ndarray or a CUDA device array "
                f"(__cuda_array_interface__), got {type(x).__module__}.{type(x).__qualname__}"
            )
        kinds[name] = kind
    first_name, first_kind = next(iter(kinds.items()))
    on_host = first_kind == _arrays.NUMPY
    for name, kind in kinds.items():
        if (kind == _arrays.NUMPY) != on_host:
            raise TypeError(
                f"{op}: {first_name} is {_arrays.describe_kind(first_kind)} but {name} is "
                f"{_arrays.describe_kind(kind)}; all arrays must live on the same device"
            )
    return first_kind


def _check_dtypes(op: str, kind: str, dtypes: dict[str, np.dtype]) -> np.dtype:
    supported = CPU_DTYPES if kind == _arrays.NUMPY else CUDA_DTYPES
    for name, dt in dtypes.items():
        if dt not in supported:
            if dt == np.float16:
                raise TypeError(
                    f"{op}: {name} dtype float16 is supported on the CUDA backend only; "
                    "on the CPU use float32 or float64"
                )
            raise TypeError(
                f"{op}: {name} dtype {dt} is not supported; supported dtypes are float32 and float64 "
                "(and float16 on CUDA)"
            )
    (first_name, first), *rest = dtypes.items()
    for name, dt in rest:
        if dt != first:
            raise TypeError(f"{op}: {first_name} dtype ({first}) and {name} dtype ({dt}) must be the same")
    return first


def conv2d_spec(
    input: Any,
    weight: Any,
    bias: Any = None,
    stride: IntPair = 1,
    padding: Padding = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    *,
    op: str = "conv2d",
) -> ConvSpec:
    """Validate the arguments of :func:`nbconv.conv2d` and return the problem they describe."""
    arrays = {"input": input, "weight": weight, "bias": bias}
    kind = classify(op, arrays)
    shapes = {n: _arrays.array_shape(a, _arrays.array_kind(a)) for n, a in arrays.items() if a is not None}
    dtype = _check_dtypes(op, kind, {n: _arrays.array_dtype(a, _arrays.array_kind(a)) for n, a in arrays.items() if a is not None})

    in_shape = shapes["input"]
    if len(in_shape) not in (3, 4):
        raise ValueError(f"{op}: input must be 3-D (C_in, H, W) or 4-D (N, C_in, H, W), got {len(in_shape)}-D shape {in_shape}")
    unbatched = len(in_shape) == 3
    batch, c_in, h, w = (1,) + in_shape if unbatched else in_shape

    w_shape = shapes["weight"]
    if len(w_shape) != 4:
        raise ValueError(f"{op}: weight must be 4-D (C_out, C_in/groups, kH, kW), got {len(w_shape)}-D shape {w_shape}")
    c_out, w_cin, kh, kw = w_shape
    if min(w_shape) < 1:
        raise ValueError(f"{op}: weight must have no zero-size dimension, got shape {w_shape}")

    groups = _int(op, "groups", groups)
    if groups < 1:
        raise ValueError(f"{op}: groups must be a positive integer, got {groups}")
    if c_in % groups:
        raise ValueError(f"{op}: in_channels ({c_in}) is not divisible by groups ({groups})")
    if c_out % groups:
        raise ValueError(f"{op}: out_channels (weight.shape[0] = {c_out}) is not divisible by groups ({groups})")
    if w_cin * groups != c_in:
        raise ValueError(
            f"{op}: weight.shape[1] * groups ({w_cin} * {groups} = {w_cin * groups}) must equal "
            f"in_channels ({c_in}); weight must have shape (C_out, C_in/groups, kH, kW) = "
            f"({c_out}, {c_in // groups}, {kh}, {kw})"
        )
    if bias is not None and shapes["bias"] != (c_out,):
        raise ValueError(f"{op}: bias must have shape (out_channels,) = ({c_out},), got {shapes['bias']}")

    stride_ = _positive_pair(op, "stride", stride)
    dilation_ = _positive_pair(op, "dilation", dilation)
    pad = _padding(op, padding, (kh, kw), stride_, dilation_)

    eff_k = (dilation_[0] * (kh - 1) + 1, dilation_[1] * (kw - 1) + 1)
    padded = (h + pad[0] + pad[1], w + pad[2] + pad[3])
    if eff_k[0] > padded[0] or eff_k[1] > padded[1]:
        raise ValueError(
            f"{op}: dilated kernel size {eff_k} is larger than the padded input size {padded} "
            f"(input {(h, w)}, padding {pad[0::2]} near / {pad[1::2]} far side)"
        )
    out_size = ((padded[0] - eff_k[0]) // stride_[0] + 1, (padded[1] - eff_k[1]) // stride_[1] + 1)

    return ConvSpec(
        op=op,
        batch=batch,
        in_channels=c_in,
        in_size=(h, w),
        out_channels=c_out,
        kernel_size=(kh, kw),
        stride=stride_,
        padding=pad,
        dilation=dilation_,
        groups=groups,
        out_size=out_size,
        dtype=dtype,
        has_bias=bias is not None,
        unbatched=unbatched,
        kind=kind,
    )
