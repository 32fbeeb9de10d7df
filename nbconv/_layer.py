"""``nbconv.Conv2d``: a layer with ``torch.nn.Conv2d``'s constructor, initialisation and
state_dict, on NumPy (``device='cpu'``) or CuPy (``device='cuda'``) parameters.

Not an autograd framework: ``forward`` keeps its input, ``backward(grad_output)`` returns the
input gradient and leaves ``weight_grad`` / ``bias_grad`` on the layer.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Union

import numpy as np

from . import grad
from ._conv import conv2d
from ._padding_modes import check_mode
from ._spec import _int, _padding, _pair


def _host(a: Any) -> np.ndarray:
    """A host copy of a parameter from a state_dict: NumPy, CuPy or a torch tensor."""
    if hasattr(a, "detach"):  # torch.Tensor
        return a.detach().cpu().numpy()
    if hasattr(a, "get"):  # cupy.ndarray
        return a.get()
    return np.asarray(a)


class Conv2d:
    """A 2-D (grouped) convolution layer, ``torch.nn.Conv2d``'s constructor and defaults.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int or (int, int)
    stride, padding, dilation, groups
        As :func:`nbconv.conv2d` (``padding`` also ``'same'``, ``'valid'`` and
        ``((top, bottom), (left, right))``).
    bias : bool, default True
    padding_mode : 'zeros', 'reflect', 'replicate' or 'circular', default 'zeros'
        As :func:`nbconv.conv2d` (no padded copy of the input).
    dtype : float32 or float64 (float16 too on 'cuda'), default float32
    device : 'cpu' or 'cuda', default 'cpu'
        NumPy parameters (computed on the CPU) or CuPy parameters (on the current GPU).
    rng : numpy.random.Generator or int, optional
        For the initial weights: PyTorch's default, uniform in +-1/sqrt(fan_in) for both the
        weight and the bias (``kaiming_uniform_(a=sqrt(5))``), fan_in = C_in/groups * kH * kW.

    Attributes
    ----------
    weight : array, shape (out_channels, in_channels / groups, kH, kW)
    bias : array, shape (out_channels,), or None
    weight_grad, bias_grad : array or None
        Set by :meth:`backward` (each call replaces them).

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> layer = nbconv.Conv2d(4, 8, 3, padding=1, groups=4, rng=0)
    >>> layer
    Conv2d(4, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), groups=4)
    >>> y = layer(np.ones((2, 4, 5, 5), np.float32))
    >>> gx = layer.backward(np.ones_like(y))
    >>> y.shape, gx.shape, layer.weight_grad.shape
    ((2, 8, 5, 5), (2, 4, 5, 5), (8, 1, 3, 3))
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Union[int, tuple[int, int]],
        stride: Union[int, tuple[int, int]] = 1,
        padding: Any = 0,
        dilation: Union[int, tuple[int, int]] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        dtype: Any = np.float32,
        device: str = "cpu",
        rng: Optional[Union[np.random.Generator, int]] = None,
    ):
        op = "Conv2d"
        self.in_channels, self.out_channels = _int(op, "in_channels", in_channels), _int(op, "out_channels", out_channels)
        self.groups = _int(op, "groups", groups)
        self.kernel_size = _pair(op, "kernel_size", kernel_size)
        self.stride, self.dilation = _pair(op, "stride", stride), _pair(op, "dilation", dilation)
        for name, v in (("in_channels", self.in_channels), ("out_channels", self.out_channels),
                        ("groups", self.groups), ("kernel_size", min(self.kernel_size)),
                        ("stride", min(self.stride)), ("dilation", min(self.dilation))):
            if v < 1:
                raise ValueError(f"{op}: {name} must be positive, got {v}")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            from ._explain import explain

            e = explain(self.in_channels, self.out_channels, self.groups)
            raise ValueError(f"{op}: {e.problem}; allowed groups: {', '.join(map(str, e.valid_groups))}")
        _padding(op, padding, self.kernel_size, self.stride, self.dilation)  # validate now, not at the first call
        self.padding = padding if isinstance(padding, str) else (
            _pair(op, "padding", padding) if not _is_sides(padding) else tuple(tuple(p) for p in padding))
        self.padding_mode = check_mode(op, padding_mode)
        if device not in ("cpu", "cuda"):
            raise ValueError(f"{op}: device must be 'cpu' or 'cuda', got {device!r}")
        self.device, self.dtype = device, np.dtype(dtype)
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        fan_in = self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in)
        w_shape = (self.out_channels, self.in_channels // self.groups) + self.kernel_size
        self.weight = self._to_device(rng.uniform(-bound, bound, w_shape))
        self.bias = self._to_device(rng.uniform(-bound, bound, self.out_channels)) if bias else None
        self.weight_grad = self.bias_grad = None
        self._input = None

    def _to_device(self, a: np.ndarray) -> Any:
        a = np.ascontiguousarray(a, self.dtype)
        if self.device == "cuda":
            import cupy

            return cupy.asarray(a)
        return a

    def _args(self) -> dict:
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups,
                    padding_mode=self.padding_mode)

    def forward(self, input: Any) -> Any:
        """``conv2d(input, weight, bias, ...)``; keeps ``input`` for :meth:`backward`."""
        self._input = input
        return conv2d(input, self.weight, self.bias, **self._args())

    __call__ = forward

    def backward(self, grad_output: Any) -> Any:
        """The gradient of the last :meth:`forward`'s input; sets ``weight_grad`` and ``bias_grad``."""
        if self._input is None:
            raise RuntimeError("Conv2d.backward: call forward first")
        x = self._input
        self.weight_grad = grad.conv2d_weight(x, self.weight.shape, grad_output, **self._args())
        self.bias_grad = None if self.bias is None else grad.conv2d_bias(grad_output)
        return grad.conv2d_input(tuple(x.shape), self.weight, grad_output, **self._args())

    def state_dict(self) -> dict:
        """``{'weight': ..., 'bias': ...}`` (no bias key without a bias), the layer's own arrays."""
        return {"weight": self.weight} | ({} if self.bias is None else {"bias": self.bias})

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Copy ``weight`` (and ``bias``) from a state_dict: torch tensors (any device), NumPy or
        CuPy arrays of the layer's shapes; converted to the layer's dtype and device."""
        want = {"weight": tuple(self.weight.shape)} | ({} if self.bias is None else {"bias": (self.out_channels,)})
        if set(state) != set(want):
            raise KeyError(f"Conv2d.load_state_dict: expected keys {sorted(want)}, got {sorted(state)}")
        arrays = {k: _host(v) for k, v in state.items()}
        for k, shape in want.items():
            if arrays[k].shape != shape:
                raise ValueError(f"Conv2d.load_state_dict: {k} has shape {arrays[k].shape}, expected {shape}")
        self.weight = self._to_device(arrays["weight"])
        if self.bias is not None:
            self.bias = self._to_device(arrays["bias"])

    @classmethod
    def from_torch(cls, module: Any, *, dtype: Any = None, device: str = "cpu") -> "Conv2d":
        """An nbconv layer with a ``torch.nn.Conv2d``'s configuration and parameters (copied)."""
        layer = cls(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                    module.dilation, module.groups, module.bias is not None, module.padding_mode,
                    dtype=dtype or str(module.weight.dtype).removeprefix("torch."), device=device, rng=0)
        layer.load_state_dict(module.state_dict())
        return layer

    def __repr__(self) -> str:
        extra = "" if self.dilation == (1, 1) else f", dilation={self.dilation}"
        extra += "" if self.groups == 1 else f", groups={self.groups}"
        extra += "" if self.bias is not None else ", bias=False"
        extra += "" if self.padding_mode == "zeros" else f", padding_mode={self.padding_mode!r}"
        extra += "" if self.device == "cpu" else f", device={self.device!r}"
        pad = repr(self.padding)
        return (f"Conv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={pad}{extra})")


def _is_sides(padding: Any) -> bool:
    from ._spec import _is_pair_of_pairs

    return not isinstance(padding, (int, str)) and _is_pair_of_pairs(padding)
