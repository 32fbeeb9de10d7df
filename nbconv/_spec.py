"""Arguments -> an immutable, validated :class:`ConvSpec`.

Every validation message of nbconv lives in this module, so that both backends raise the very
same errors, before any backend is chosen. Messages follow JAX/PyTorch: they start with the op
name and show the numbers, e.g. ``conv2d: in_channels (5) is not divisible by groups (2)``.
``TypeError`` is raised for wrong types (including dtypes), ``ValueError`` for wrong values.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Callable, Union

import numpy as np

from . import _arrays

IntPair = Union[int, Sequence[int]]
Padding = Union[int, Sequence[int], Sequence[Sequence[int]], str]

#: dtypes each backend computes in. float16 accumulates in float32 on CUDA.
CPU_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
CUDA_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


#: The ops whose result is a weight gradient / a bias gradient (the rest return the convolution's
#: output). The 1-D ops are computed as 2-D ones under their own names.
WEIGHT_GRAD_OPS = ("conv2d_weight", "conv1d_weight")
BIAS_GRAD_OPS = ("conv2d_bias", "conv1d_bias")


@dataclass(frozen=True)
class ConvSpec:
    """A validated 2-D grouped convolution problem (NCHW), shared by every backend.

    ``padding`` is ``(top, bottom, left, right)``: ``padding='same'`` may pad one more on the
    far side (bottom/right) than on the near side, as PyTorch does for even dilated kernels.

    Every op is described as the convolution the kernels compute. ``conv2d`` and the gradients
    are plain forward convolutions. ``conv_transpose2d`` (and so ``grad.conv2d_input``) is the
    stride-1 convolution of its input dilated by its stride (``lhs_dilation``), padded by
    ``dilation * (k - 1) - padding`` (negative: cropped), with the weight read flipped and
    transposed per group (``transposed_weight``): one kernel, another index map.
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
    kind: str  # array kind of the first array argument (see nbconv._arrays); the result has it too
    #: Input dilation: zeros inserted between input pixels (the stride of a transposed convolution).
    lhs_dilation: tuple[int, int] = (1, 1)
    #: The weight is (C_in, C_out/groups, kH, kW) and is read flipped, as conv_transpose2d's is.
    transposed_weight: bool = False
    #: What the padding holds ('zeros', 'reflect', 'replicate', 'circular'). Only a backend that
    #: says it takes a spec's mode (``nbconv._dispatch.takes_padding_mode``) is given one other
    #: than zeros; ``nbconv._padding_modes`` computes the others from zero-padded calls.
    padding_mode: str = "zeros"

    # A spec is a dictionary key on every call (the launch configurations and plans cached per
    # spec): its hash is computed once, on first use. It stays out of pickles (a str's hash
    # differs from one process to the next).
    def __hash__(self) -> int:
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash(tuple(getattr(self, f.name) for f in fields(self)))
            object.__setattr__(self, "_hash", h)
        return h

    def __getstate__(self) -> dict:
        return {name: value for name, value in self.__dict__.items() if name != "_hash"}

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
        if self.transposed_weight:
            return (self.in_channels, self.out_per_group) + self.kernel_size
        return (self.out_channels, self.in_per_group) + self.kernel_size

    @property
    def conv_output_shape(self) -> tuple[int, int, int, int]:
        """(N, C_out, H_out, W_out) of the convolution the kernels compute."""
        return (self.batch, self.out_channels) + self.out_size

    @functools.cached_property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of the op's result as the caller sees it (no batch axis for unbatched input;
        computed once per spec, which the dispatch asks for on every call)."""
        if self.op in WEIGHT_GRAD_OPS:
            return self.weight_shape
        if self.op in BIAS_GRAD_OPS:
            return (self.out_channels,)
        shape = self.conv_output_shape
        return shape[1:] if self.unbatched else shape

    @property
    def flops(self) -> int:
        """Multiply-adds x 2 (padding taps counted, bias not); the inserted zeros of a transposed
        convolution are not counted, so an op and its adjoint have the same count."""
        kh, kw = self.kernel_size
        if self.lhs_dilation != (1, 1) or self.transposed_weight:  # every input pixel meets every tap
            h, w = self.in_size
            return 2 * self.batch * self.in_channels * h * w * self.out_per_group * kh * kw
        oh, ow = self.out_size
        return 2 * self.batch * self.out_channels * oh * ow * self.in_per_group * kh * kw

    @property
    def min_bytes(self) -> int:
        """Bytes that must cross memory at least once: input, weight, bias read; output written."""
        n_elems = (
            int(np.prod(self.input_shape))
            + int(np.prod(self.weight_shape))
            + (self.out_channels if self.has_bias else 0)
            + int(np.prod(self.conv_output_shape))
        )
        return n_elems * self.dtype.itemsize


def _int(op: str, name: str, value: Any) -> int:
    if type(value) is int:  # the common case, first (bool is a subclass, not int itself)
        return value
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be an int, got bool ({value!r})")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__} ({value!r})") from None


def _pair(op: str, name: str, value: Any) -> tuple[int, int]:
    """An int or a sequence of two ints -> a pair of Python ints."""
    if type(value) is int:
        return (value, value)
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        return value
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
    """``(top, bottom, left, right)`` from every padding form: an int, ``(pH, pW)``,
    ``((top, bottom), (left, right))`` (JAX's form), ``'valid'`` or ``'same'``."""
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
        raise ValueError(
            f"{op}: padding must be an int, a pair of ints, ((top, bottom), (left, right)), 'valid' or 'same', "
            f"got {value!r}"
        )
    if type(value) is not int and _is_pair_of_pairs(value):
        (pt, pb), (pl, pr) = (_pair(op, "padding", side) for side in value)
        pads = (pt, pb, pl, pr)
    else:
        ph, pw = _pair(op, "padding", value)
        pads = (ph, ph, pw, pw)
    if min(pads) < 0:
        shown = (pads[0], pads[2]) if pads[0::2] == pads[1::2] else ((pads[0], pads[1]), (pads[2], pads[3]))
        raise ValueError(f"{op}: padding must be >= 0, got {shown}")
    return pads


def _is_pair_of_pairs(value: Any) -> bool:
    """Whether ``value`` is a sequence of two sequences (``((top, bottom), (left, right))``)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)) or len(value) != 2:
        return False
    return all(isinstance(v, (Sequence, np.ndarray)) and not isinstance(v, (str, bytes)) for v in value)


def classify(op: str, arrays: dict[str, Any], optional: tuple[str, ...] = ("bias",)) -> str:
    """Kind of the arrays in ``arrays`` (name -> array or None); all must live on one side.

    Raises TypeError for a non-array, for host arrays mixed with device arrays (naming which
    argument lives where), and for torch tensors mixed with other kinds (the result is a tensor
    only when every argument is). Device arrays of other libraries may be mixed; the first one
    given decides the kind of the result.
    """
    kinds = {}
    for name, x in arrays.items():
        if x is None and name in optional:
            continue
        kind = _arrays.array_kind(x)
        if kind is None:
            raise TypeError(
                f"{op}: {name} must be a numpy.ndarray, a cupy.ndarray, a torch.Tensor, a CUDA device array "
                f"(__cuda_array_interface__) or a DLPack array, got {type(x).__module__}.{type(x).__qualname__}"
            )
        kinds[name] = kind
    first_name, first_kind = next(iter(kinds.items()))
    on_host = first_kind in _arrays.HOST_KINDS
    torch = first_kind in _arrays.TORCH_KINDS
    for name, kind in kinds.items():
        if (kind in _arrays.HOST_KINDS) != on_host:
            raise TypeError(
                f"{op}: {first_name} is {_arrays.describe_kind(first_kind)} but {name} is "
                f"{_arrays.describe_kind(kind)}; all arrays must live on the same device"
            )
        if (kind in _arrays.TORCH_KINDS) != torch:
            raise TypeError(
                f"{op}: {first_name} is {_arrays.describe_kind(first_kind)} but {name} is "
                f"{_arrays.describe_kind(kind)}; pass torch tensors for all arrays or for none"
            )
    return first_kind


def _check_dtypes(op: str, kind: str, dtypes: dict[str, np.dtype]) -> np.dtype:
    supported = CPU_DTYPES if kind in _arrays.HOST_KINDS else CUDA_DTYPES
    values = iter(dtypes.values())
    first = next(values)
    if first in supported and all(dt == first for dt in values):  # the common case, checked first
        return first
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


def _facts(op: str, arrays: dict[str, Any], optional: tuple[str, ...] = ("bias",)
           ) -> tuple[str, dict[str, tuple], np.dtype]:
    """(kind, shapes, dtype) of the arrays: :func:`classify`'s kind, each array's shape, and
    their common dtype (:func:`_check_dtypes`), each array's kind looked up once (this runs on
    every call)."""
    fast = _same_plain_kind(arrays, optional)
    if fast is not None:
        return fast
    kinds = {}
    for name, x in arrays.items():
        if x is not None or name not in optional:
            kinds[name] = _arrays.array_kind(x)
    kind = next(iter(kinds.values()))
    if kind is None or any(k != kind for k in kinds.values()):
        kind = classify(op, arrays, optional)  # raises, or names the kind of an allowed mix
    shapes = {name: _arrays.array_shape(arrays[name], k) for name, k in kinds.items()}
    dtypes = {name: _arrays.array_dtype(arrays[name], k) for name, k in kinds.items()}
    return kind, shapes, _check_dtypes(op, kind, dtypes)


def _same_plain_kind(arrays: dict[str, Any], optional: tuple[str, ...]
                     ) -> tuple[str, dict[str, tuple], np.dtype] | None:
    """:func:`_facts` of the common call, else None: every array given of one NumPy or CuPy
    type (whose shape and dtype are its attributes) and of one supported dtype."""
    kind = dtype = None
    shapes = {}
    for name, x in arrays.items():
        if x is None:
            if name in optional:
                continue
            return None
        k = _arrays._KIND_OF_TYPE.get(type(x))
        if k is not _arrays.NUMPY and k is not _arrays.CUPY:
            return None
        if kind is None:
            kind, dtype = k, x.dtype
        elif k is not kind or x.dtype != dtype:
            return None
        shapes[name] = x.shape
    if kind is None or dtype not in (CPU_DTYPES if kind is _arrays.NUMPY else CUDA_DTYPES):
        return None
    return kind, shapes, dtype


def _size(op: str, name: str, value: Any, lengths: tuple[int, ...], what: str) -> tuple[int, ...]:
    """A shape given as a sequence of ints (``input_size``, ``weight_size``)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise TypeError(f"{op}: {name} must be a sequence of ints {what}, got {type(value).__name__} ({value!r})")
    items = tuple(value)
    if len(items) not in lengths:
        raise ValueError(f"{op}: {name} must have {' or '.join(map(str, lengths))} entries {what}, got {items!r}")
    size = tuple(_int(op, name, v) for v in items)
    if min(size, default=0) < 0:
        raise ValueError(f"{op}: {name} must not be negative, got {size}")
    return size


def _input_shape(op: str, name: str, in_shape: tuple[int, ...]) -> tuple[bool, int, int, int, int]:
    if len(in_shape) not in (3, 4):
        raise ValueError(
            f"{op}: {name} must be 3-D (C_in, H, W) or 4-D (N, C_in, H, W), got {len(in_shape)}-D shape {in_shape}"
        )
    unbatched = len(in_shape) == 3
    return (unbatched,) + ((1,) + tuple(in_shape) if unbatched else tuple(in_shape))  # type: ignore[return-value]


def _groups(op: str, groups: Any) -> int:
    groups = _int(op, "groups", groups)
    if groups < 1:
        raise ValueError(f"{op}: groups must be a positive integer, got {groups}")
    return groups


def _forward_geometry(
    op: str, in_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: Any, padding: Any, dilation: Any,
    groups: Any, in_name: str = "input", w_name: str = "weight",
) -> dict[str, Any]:
    """Validated fields of the ConvSpec of ``conv2d`` on arrays of these shapes."""
    unbatched, batch, c_in, h, w = _input_shape(op, in_name, in_shape)
    if len(w_shape) != 4:
        raise ValueError(
            f"{op}: {w_name} must be 4-D (C_out, C_in/groups, kH, kW), got {len(w_shape)}-D shape {tuple(w_shape)}"
        )
    c_out, w_cin, kh, kw = w_shape
    if min(w_shape) < 1:
        raise ValueError(f"{op}: {w_name} must have no zero-size dimension, got shape {tuple(w_shape)}")
    groups = _groups(op, groups)
    if c_in % groups:
        raise ValueError(f"{op}: in_channels ({c_in}) is not divisible by groups ({groups})")
    if c_out % groups:
        raise ValueError(f"{op}: out_channels ({w_name}.shape[0] = {c_out}) is not divisible by groups ({groups})")
    if w_cin * groups != c_in:
        raise ValueError(
            f"{op}: {w_name}.shape[1] * groups ({w_cin} * {groups} = {w_cin * groups}) must equal "
            f"in_channels ({c_in}); {w_name} must have shape (C_out, C_in/groups, kH, kW) = "
            f"({c_out}, {c_in // groups}, {kh}, {kw})"
        )
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
    return dict(
        batch=batch, in_channels=c_in, in_size=(h, w), out_channels=c_out, kernel_size=(kh, kw), stride=stride_,
        padding=pad, dilation=dilation_, groups=groups, out_size=out_size, unbatched=unbatched,
    )


def _check_grad_output(op: str, g_shape: tuple[int, ...], geo: dict[str, Any], source: str) -> None:
    want = (geo["batch"], geo["out_channels"]) + geo["out_size"]
    if geo["unbatched"]:
        want = want[1:]
    if tuple(g_shape) != want:
        raise ValueError(f"{op}: grad_output has shape {tuple(g_shape)}, expected {want} (the conv2d output {source})")


def _transposed(
    op: str, geo: dict[str, Any], output_padding: tuple[int, int], out_size: tuple[int, int], **fields: Any
) -> ConvSpec:
    """The spec of a transposed convolution, as the stride-1 convolution the kernels compute.

    ``geo`` describes the *adjoint* ``conv2d`` (from the result to this op's input): its output
    is this op's input, its input size is ``out_size``.
    """
    (kh, kw), (dh, dw) = geo["kernel_size"], geo["dilation"]
    pt, pb, pl, pr = geo["padding"]
    oph, opw = output_padding
    pad = (dh * (kh - 1) - pt, dh * (kh - 1) - pb + oph, dw * (kw - 1) - pl, dw * (kw - 1) - pr + opw)
    return ConvSpec(
        op=op, batch=geo["batch"], in_channels=geo["out_channels"], in_size=geo["out_size"],
        out_channels=geo["in_channels"], kernel_size=(kh, kw), stride=(1, 1), padding=pad,
        dilation=(dh, dw), groups=geo["groups"], out_size=out_size, unbatched=geo["unbatched"],
        lhs_dilation=geo["stride"], transposed_weight=True, **fields,
    )


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
    if type(stride) is int and type(padding) is int and type(dilation) is int and type(groups) is int:
        # the common call (NumPy or CuPy arrays of one type, integer arguments): its spec found
        # by the arrays' shapes and dtypes alone, 1 us instead of 3 (every array's kind, shape and
        # dtype checked below, once per geometry)
        kind = _arrays._KIND_OF_TYPE.get(type(input))
        if ((kind is _arrays.NUMPY or kind is _arrays.CUPY) and type(weight) is type(input)
                and (bias is None or type(bias) is type(input))):
            key = (op, kind, input.shape, input.dtype, weight.shape, weight.dtype,
                   None if bias is None else (bias.shape, bias.dtype), stride, padding, dilation, groups)
            spec = _PLAIN_SPECS.get(key)
            return spec or _remember(key, _conv2d_spec(input, weight, bias, stride, padding, dilation, groups, op))
    return _conv2d_spec(input, weight, bias, stride, padding, dilation, groups, op)


def _remember(key: tuple, spec: ConvSpec) -> ConvSpec:
    """``spec``, kept as the spec of the common calls of ``key`` (op, the arrays' kind, shapes and
    dtypes, the plain arguments: see :func:`_plain_call`), validated once."""
    if len(_PLAIN_SPECS) >= _SPEC_CACHE_SIZE:
        _PLAIN_SPECS.clear()
    _PLAIN_SPECS[key] = spec
    return spec


def _plain_call(arrays: tuple, arguments: tuple, bias: Any = None) -> str | None:
    """The kind of a gradient's or transposed convolution's common call, else None: arrays (and
    ``bias`` where it is not None) of one NumPy or CuPy type, and arguments that are ints,
    strings or tuples of ints (shapes): values no bool or float shares a key with, so that the
    call's key (see :func:`_remember`) stands for what full validation would find."""
    first = arrays[0]
    kind = _arrays._KIND_OF_TYPE.get(type(first))
    if kind is not _arrays.NUMPY and kind is not _arrays.CUPY:
        return None
    for a in arrays:
        if type(a) is not type(first):
            return None
    if bias is not None and type(bias) is not type(first):
        return None
    for a in arguments:
        t = type(a)
        if t is not int and t is not str and (t is not tuple or not all(type(v) is int for v in a)):
            return None
    return kind


def _conv2d_spec(input, weight, bias, stride, padding, dilation, groups, op) -> ConvSpec:
    arrays = {"input": input, "weight": weight, "bias": bias}
    kind, shapes, dtype = _facts(op, arrays)
    meta = (op, kind, dtype, shapes["input"], shapes["weight"], shapes.get("bias"), stride, padding, dilation, groups)
    return _cached(meta[:6], (stride, padding, dilation, groups), lambda: _conv2d_spec_from(*meta))


def _cached(validated: tuple, arguments: tuple, build: Callable[[], ConvSpec]) -> ConvSpec:
    """``build()``, or the spec it gave before for the same ``validated`` facts (op, kind, dtype,
    array shapes) and ``arguments`` (compared with their types): a network calls each layer's
    geometry over and over, and validates it once. An unhashable argument (a NumPy array) is
    validated the same way, not cached; a build that raises caches nothing."""
    try:
        key = (validated, tuple(map(_typed_key, arguments)))
        hash(key)
    except TypeError:
        return build()
    spec = _SPEC_CACHE.get(key)
    if spec is None:
        spec = build()
        if len(_SPEC_CACHE) >= _SPEC_CACHE_SIZE:
            _SPEC_CACHE.clear()
        _SPEC_CACHE[key] = spec
    return spec


#: Specs are immutable, so equal arguments share one. Keys carry the argument types (1, 1.0 and
#: True are equal keys otherwise, and only one of them is valid).
_SPEC_CACHE: dict = {}
_SPEC_CACHE_SIZE = 1024
#: :func:`conv2d_spec`'s specs of the common call, by array type, shapes, dtypes and the integer
#: arguments (``type(x) is int``: no bool or float shares a key with an int).
_PLAIN_SPECS: dict = {}


def _typed_key(value: Any) -> Any:
    if type(value) is int:  # the common case, first
        return (int, value)
    if isinstance(value, (tuple, list)):
        return (type(value), tuple(map(_typed_key, value)))
    return (type(value), value)


def _conv2d_spec_from(op, kind, dtype, in_shape, w_shape, b_shape, stride, padding, dilation, groups) -> ConvSpec:
    geo = _forward_geometry(op, in_shape, w_shape, stride, padding, dilation, groups)
    c_out = geo["out_channels"]
    if b_shape is not None and b_shape != (c_out,):
        raise ValueError(f"{op}: bias must have shape (out_channels,) = ({c_out},), got {b_shape}")
    return ConvSpec(op=op, dtype=dtype, has_bias=b_shape is not None, kind=kind, **geo)


def conv2d_input_spec(
    input_size: Any, weight: Any, grad_output: Any, stride: IntPair = 1, padding: Padding = 0,
    dilation: IntPair = 1, groups: int = 1, *, op: str = "conv2d_input",
) -> ConvSpec:
    """Validate the arguments of :func:`nbconv.grad.conv2d_input` (``op`` names the caller in errors)."""
    arguments = (input_size, stride, padding, dilation, groups)
    kind = _plain_call((grad_output, weight), arguments)
    if kind is not None:
        key = (op, kind, grad_output.shape, grad_output.dtype, weight.shape, weight.dtype, *arguments)
        return _PLAIN_SPECS.get(key) or _remember(key, _conv2d_input_spec(input_size, weight, grad_output,
                                                                          *arguments[1:], op))
    return _conv2d_input_spec(input_size, weight, grad_output, stride, padding, dilation, groups, op)


def _conv2d_input_spec(input_size, weight, grad_output, stride, padding, dilation, groups, op) -> ConvSpec:
    arrays = {"grad_output": grad_output, "weight": weight}
    kind, shapes, dtype = _facts(op, arrays, optional=())
    return _cached((op, kind, dtype, shapes["grad_output"], shapes["weight"]),
                   (input_size, stride, padding, dilation, groups),
                   lambda: _conv2d_input_spec_from(op, kind, dtype, shapes, input_size, stride, padding, dilation,
                                                   groups))


def _conv2d_input_spec_from(op, kind, dtype, shapes, input_size, stride, padding, dilation, groups) -> ConvSpec:
    in_shape = _size(op, "input_size", input_size, (3, 4), "(N, C_in, H, W) or (C_in, H, W)")
    geo = _forward_geometry(op, in_shape, shapes["weight"], stride, padding, dilation, groups, in_name="input_size")
    _check_grad_output(op, shapes["grad_output"], geo, f"for input_size {in_shape}")
    (h, w), (kh, kw), (dh, dw), (sh, sw) = geo["in_size"], geo["kernel_size"], geo["dilation"], geo["stride"]
    pt, pb, pl, pr = geo["padding"]
    # the rows / columns a strided conv2d never reached: conv_transpose2d's output_padding
    output_padding = ((h + pt + pb - dh * (kh - 1) - 1) % sh, (w + pl + pr - dw * (kw - 1) - 1) % sw)
    return _transposed(op, geo, output_padding, (h, w), dtype=dtype, has_bias=False, kind=kind)


def forward_spec(op: str, in_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: Any, padding: Any,
                 dilation: Any, groups: Any, like: ConvSpec) -> ConvSpec:
    """The forward ``conv2d`` geometry behind a gradient's spec ``like`` (already validated), for
    what works in forward terms (padding modes)."""
    geo = _forward_geometry(op, in_shape, w_shape, stride, padding, dilation, groups)
    return ConvSpec(op=op, dtype=like.dtype, has_bias=False, kind=like.kind, **geo)


def conv_transpose2d_spec(
    input: Any, weight: Any, bias: Any = None, stride: IntPair = 1, padding: Padding = 0,
    output_padding: IntPair = 0, groups: int = 1, dilation: IntPair = 1, *, op: str = "conv_transpose2d",
) -> ConvSpec:
    """Validate the arguments of :func:`nbconv.conv_transpose2d` (``op`` names the caller in errors)."""
    arguments = (stride, padding, output_padding, groups, dilation)
    kind = _plain_call((input, weight), arguments, bias)
    if kind is not None:
        key = (op, kind, input.shape, input.dtype, weight.shape, weight.dtype,
               None if bias is None else (bias.shape, bias.dtype), *arguments)
        return _PLAIN_SPECS.get(key) or _remember(key, _conv_transpose2d_spec(input, weight, bias, *arguments, op))
    return _conv_transpose2d_spec(input, weight, bias, stride, padding, output_padding, groups, dilation, op)


def _conv_transpose2d_spec(input, weight, bias, stride, padding, output_padding, groups, dilation, op) -> ConvSpec:
    arrays = {"input": input, "weight": weight, "bias": bias}
    kind, shapes, dtype = _facts(op, arrays)
    return _cached((op, kind, dtype, shapes["input"], shapes["weight"], shapes.get("bias")),
                   (stride, padding, output_padding, groups, dilation),
                   lambda: _conv_transpose2d_spec_from(op, kind, dtype, shapes, bias is not None, stride, padding,
                                                       output_padding, groups, dilation))


def _conv_transpose2d_spec_from(op, kind, dtype, shapes, has_bias, stride, padding, output_padding, groups,
                                dilation) -> ConvSpec:
    unbatched, batch, c_in, h, w = _input_shape(op, "input", shapes["input"])
    w_shape = shapes["weight"]
    if len(w_shape) != 4:
        raise ValueError(f"{op}: weight must be 4-D (C_in, C_out/groups, kH, kW), got {len(w_shape)}-D shape {w_shape}")
    if min(w_shape) < 1:
        raise ValueError(f"{op}: weight must have no zero-size dimension, got shape {w_shape}")
    groups = _groups(op, groups)
    if c_in % groups:
        raise ValueError(f"{op}: in_channels ({c_in}) is not divisible by groups ({groups})")
    if w_shape[0] != c_in:
        raise ValueError(
            f"{op}: weight.shape[0] ({w_shape[0]}) must equal in_channels ({c_in}); conv_transpose2d's weight "
            f"has shape (C_in, C_out/groups, kH, kW)"
        )
    c_out, kh, kw = w_shape[1] * groups, w_shape[2], w_shape[3]
    if has_bias and shapes["bias"] != (c_out,):
        raise ValueError(
            f"{op}: bias must have shape (out_channels,) = ({c_out},) (weight.shape[1] * groups), got {shapes['bias']}"
        )
    stride_ = _positive_pair(op, "stride", stride)
    dilation_ = _positive_pair(op, "dilation", dilation)
    pad = _padding(op, padding, (kh, kw), stride_, dilation_)
    opad = _pair(op, "output_padding", output_padding)
    for o, s_, d in zip(opad, stride_, dilation_):
        if o < 0 or (o >= s_ and o >= d):
            raise ValueError(
                f"{op}: output_padding must be >= 0 and smaller than stride or dilation, got output_padding "
                f"{opad}, stride {stride_}, dilation {dilation_}"
            )
    out_size = tuple(
        (n - 1) * s_ - p0 - p1 + d * (k - 1) + o + 1
        for n, s_, p0, p1, d, k, o in zip((h, w), stride_, pad[0::2], pad[1::2], dilation_, (kh, kw), opad)
    )
    if min(out_size) < 1:
        raise ValueError(
            f"{op}: the output size {out_size} is not positive (input {(h, w)}, stride {stride_}, padding "
            f"{pad[0::2]} near / {pad[1::2]} far side, dilation {dilation_}, kernel {(kh, kw)})"
        )
    # the adjoint conv2d, from this op's output (N, C_out, out_size) to its input
    geo = dict(
        batch=batch, in_channels=c_out, in_size=out_size, out_channels=c_in, kernel_size=(kh, kw), stride=stride_,
        padding=pad, dilation=dilation_, groups=groups, out_size=(h, w), unbatched=unbatched,
    )
    return _transposed(op, geo, opad, out_size, dtype=dtype, has_bias=has_bias, kind=kind)


def conv2d_weight_spec(
    input: Any, weight_size: Any, grad_output: Any, stride: IntPair = 1, padding: Padding = 0,
    dilation: IntPair = 1, groups: int = 1, *, op: str = "conv2d_weight",
) -> ConvSpec:
    """Validate the arguments of :func:`nbconv.grad.conv2d_weight` (``op`` names the caller in errors)."""
    arguments = (weight_size, stride, padding, dilation, groups)
    kind = _plain_call((input, grad_output), arguments)
    if kind is not None:
        key = (op, kind, input.shape, input.dtype, grad_output.shape, grad_output.dtype, *arguments)
        return _PLAIN_SPECS.get(key) or _remember(key, _conv2d_weight_spec(input, weight_size, grad_output,
                                                                           *arguments[1:], op))
    return _conv2d_weight_spec(input, weight_size, grad_output, stride, padding, dilation, groups, op)


def _conv2d_weight_spec(input, weight_size, grad_output, stride, padding, dilation, groups, op) -> ConvSpec:
    arrays = {"input": input, "grad_output": grad_output}
    kind, shapes, dtype = _facts(op, arrays, optional=())
    return _cached((op, kind, dtype, shapes["input"], shapes["grad_output"]),
                   (weight_size, stride, padding, dilation, groups),
                   lambda: _conv2d_weight_spec_from(op, kind, dtype, shapes, weight_size, stride, padding, dilation,
                                                    groups))


def _conv2d_weight_spec_from(op, kind, dtype, shapes, weight_size, stride, padding, dilation, groups) -> ConvSpec:
    w_shape = _size(op, "weight_size", weight_size, (4,), "(C_out, C_in/groups, kH, kW)")
    geo = _forward_geometry(
        op, shapes["input"], w_shape, stride, padding, dilation, groups, w_name="weight_size"
    )
    _check_grad_output(op, shapes["grad_output"], geo, f"of input {shapes['input']} and weight_size {w_shape}")
    return ConvSpec(op=op, dtype=dtype, has_bias=False, kind=kind, **geo)


def conv2d_bias_spec(grad_output: Any, *, op: str = "conv2d_bias") -> ConvSpec:
    """Validate the argument of :func:`nbconv.grad.conv2d_bias` (a sum over N, H and W)."""
    kind = _plain_call((grad_output,), ())
    if kind is not None:
        key = (op, kind, grad_output.shape, grad_output.dtype)
        return _PLAIN_SPECS.get(key) or _remember(key, _conv2d_bias_spec(grad_output, op))
    return _conv2d_bias_spec(grad_output, op)


def _conv2d_bias_spec(grad_output, op) -> ConvSpec:
    kind, shapes, dtype = _facts(op, {"grad_output": grad_output}, optional=())
    return _cached((op, kind, dtype, shapes["grad_output"]), (), lambda: _conv2d_bias_spec_from(op, kind, dtype,
                                                                                             shapes["grad_output"]))


def _conv2d_bias_spec_from(op, kind, dtype, gy_shape) -> ConvSpec:
    unbatched, batch, c, h, w = _input_shape(op, "grad_output", gy_shape)
    return ConvSpec(
        op=op, batch=batch, in_channels=c, in_size=(h, w), out_channels=c, kernel_size=(1, 1), stride=(1, 1),
        padding=(0, 0, 0, 0), dilation=(1, 1), groups=c, out_size=(h, w), dtype=dtype, has_bias=False,
        unbatched=unbatched, kind=kind,
    )
