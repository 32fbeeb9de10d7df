"""A ``torch.nn.Module`` whose grouped convolution is nbconv's, forward and backward.

PyTorch tensors go into ``nbconv.conv2d`` and ``nbconv.grad`` as they are and come back as
tensors on the same device (CPU tensors through NumPy, CUDA tensors through
``__cuda_array_interface__``), without a copy. nbconv records no autograd history of its own, so
the layer wraps the ops in a ``torch.autograd.Function`` whose backward calls ``nbconv.grad``.

    python examples/torch_module.py     # checks the layer against torch.nn.Conv2d
"""

from __future__ import annotations

import torch

import nbconv


class _Conv2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(x, weight)
        ctx.args = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
        return nbconv.conv2d(x, weight, bias, **ctx.args)

    @staticmethod
    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        gy = grad_output.contiguous()
        gx = nbconv.grad.conv2d_input(x.shape, weight, gy, **ctx.args) if ctx.needs_input_grad[0] else None
        gw = nbconv.grad.conv2d_weight(x, weight.shape, gy, **ctx.args) if ctx.needs_input_grad[1] else None
        gb = nbconv.grad.conv2d_bias(gy) if ctx.needs_input_grad[2] else None
        return gx, gw, gb, None, None, None, None


class NbconvConv2d(torch.nn.Conv2d):
    """``torch.nn.Conv2d`` (same parameters, initialisation and state_dict keys) computed by nbconv."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros":
            raise ValueError("this example handles padding_mode='zeros' only")
        return _Conv2dFunction.apply(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def main() -> int:
    torch.manual_seed(0)
    layer = NbconvConv2d(32, 64, 3, padding=1, groups=8, dtype=torch.float64)
    reference = torch.nn.Conv2d(32, 64, 3, padding=1, groups=8, dtype=torch.float64)
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(4, 32, 14, 14, dtype=torch.float64, requires_grad=True)
    y, y_ref = layer(x), reference(x)
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, layer.weight, layer.bias), gy)
    grads_ref = torch.autograd.grad(y_ref, (x, reference.weight, reference.bias), gy)
    errors = [float((a - b).detach().abs().max()) for a, b in zip((y, *grads), (y_ref, *grads_ref))]
    print("max |nbconv - torch| for y, dx, dw, db:", " ".join(f"{e:.1e}" for e in errors))
    return 0 if max(errors) < 1e-10 else 1


if __name__ == "__main__":
    raise SystemExit(main())
