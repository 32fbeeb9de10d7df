"""PyTorch tensors and other DLPack arrays go in and come back as the same kind, without copies:
CPU tensors through the NumPy path here (CUDA tensors through ``__cuda_array_interface__`` when
there is a GPU), for every op and ``out=``; mixing tensors with other kinds is a TypeError."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest
from cases import Case, HostDLPack, random_arrays
from reference import assert_conv_close

import nbconv

torch = pytest.importorskip("torch")

CASE = Case(2, 4, (9, 8), 6, (3, 2), (1, 2), 1, 1, 2)
ARGS = CASE.conv_args()
CUDA = pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a GPU and PyTorch built for CUDA")])


def _tensors(dtype=np.float64, device="cpu"):
    x, w, b = random_arrays(CASE, dtype)
    return (x, w, b), tuple(torch.from_numpy(a).to(device) for a in (x, w, b))


def _ops(x, w, b, gy):
    """Each op's call on (x, w, b, gy) of one kind, by name."""
    return {
        "conv2d": lambda out=None: nbconv.conv2d(x, w, b, **ARGS, out=out),
        "conv_transpose2d": lambda out=None: nbconv.conv_transpose2d(gy, w, None, stride=ARGS["stride"],
                                                                      padding=ARGS["padding"], groups=CASE.groups,
                                                                      output_padding=(0, 1), out=out),
        "conv2d_input": lambda out=None: nbconv.grad.conv2d_input(tuple(x.shape), w, gy, **ARGS, out=out),
        "conv2d_weight": lambda out=None: nbconv.grad.conv2d_weight(x, tuple(w.shape), gy, **ARGS, out=out),
        "conv2d_bias": lambda out=None: nbconv.grad.conv2d_bias(gy, out=out),
    }


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("op", ["conv2d", "conv_transpose2d", "conv2d_input", "conv2d_weight", "conv2d_bias"])
def test_tensors_in_tensors_out(op, device):
    """Same values as the NumPy path, a tensor on the input's device, and ``out=`` a tensor."""
    (x, w, b), (tx, tw, tb) = _tensors(device=device)
    gy = np.random.default_rng(1).standard_normal(nbconv.conv2d(x, w, b, **ARGS).shape)
    want = _ops(x, w, b, gy)[op]()
    calls = _ops(tx, tw, tb, torch.from_numpy(gy).to(device))
    got = calls[op]()
    assert isinstance(got, torch.Tensor) and got.device.type == device and got.dtype == torch.float64
    # the same kernels on the CPU; on a GPU other ones, summing in another order
    same = np.testing.assert_array_equal if device == "cpu" else _close
    same(got.cpu().numpy(), want)
    out = torch.full(tuple(got.shape), float("nan"), dtype=torch.float64, device=device)
    assert calls[op](out=out) is out
    same(out.cpu().numpy(), want)


def _close(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * float(np.max(np.abs(want))))


def test_tensors_that_require_grad_and_strided_views():
    """A leaf that requires grad is read (nbconv records no autograd history), a strided view is
    read where it lies, and the inputs are left as they were."""
    (x, w, b), (tx, tw, tb) = _tensors(np.float32)
    tw.requires_grad_(True)
    wide = torch.zeros(tx.shape[:-1] + (2 * tx.shape[-1],))
    wide[..., ::2] = tx
    got = nbconv.conv2d(wide[..., ::2], tw, tb, **ARGS)
    assert not got.requires_grad
    assert_conv_close(got.numpy(), x, w, b, **ARGS)
    np.testing.assert_array_equal(tw.detach().numpy(), w)


def test_out_is_written_in_place():
    (_, _, _), (tx, tw, tb) = _tensors()
    out = torch.empty(tuple(nbconv.conv2d(tx, tw, tb, **ARGS).shape), dtype=torch.float64)
    ptr = out.data_ptr()
    nbconv.conv2d(tx, tw, tb, **ARGS, out=out)
    assert out.data_ptr() == ptr and torch.isfinite(out).all()


@pytest.mark.parametrize("mix", ["numpy weight", "numpy bias", "numpy out"])
def test_tensors_mixed_with_other_kinds(mix):
    (x, w, _), (tx, tw, tb) = _tensors()
    if mix == "numpy weight":
        with pytest.raises(TypeError, match=r"^conv2d: input is a torch.Tensor \(host memory\) but weight is a "
                                            r"numpy.ndarray .*torch tensors for all arrays or for none"):
            nbconv.conv2d(tx, w, tb, **ARGS)
    elif mix == "numpy bias":
        with pytest.raises(TypeError, match=r"^conv2d: input is a numpy.ndarray .* but bias is a torch.Tensor"):
            nbconv.conv2d(x, w, tb, **ARGS)
    else:
        with pytest.raises(ValueError, match=r"^conv2d: out must be a torch.Tensor \(host memory\) like the result"):
            nbconv.conv2d(tx, tw, tb, **ARGS, out=np.empty((2, 6, 9, 5)))


def test_unsupported_tensor_dtypes():
    (_, _, _), (tx, tw, tb) = _tensors()
    with pytest.raises(TypeError, match=r"^conv2d: input dtype object is not supported"):
        nbconv.conv2d(tx.to(torch.bfloat16), tw, tb, **ARGS)
    with pytest.raises(TypeError, match="float16 is supported on the CUDA backend only"):
        nbconv.conv2d(tx.half(), tw.half(), tb.half(), **ARGS)


def test_other_dlpack_arrays_come_back_as_numpy():
    x, w, b = random_arrays(CASE, np.float32)
    got = nbconv.conv2d(HostDLPack(x), HostDLPack(w), HostDLPack(b), **ARGS)
    assert type(got) is np.ndarray
    assert_conv_close(got, x, w, b, **ARGS)
    assert_conv_close(nbconv.conv2d(x, HostDLPack(w), b, **ARGS), x, w, b, **ARGS)


def test_module_example_matches_torch_conv2d(capsys):
    """examples/torch_module.py: a torch.nn.Conv2d subclass whose forward and backward are nbconv's
    gives torch's outputs and gradients (float64)."""
    path = pathlib.Path(__file__).resolve().parent.parent / "examples" / "torch_module.py"
    spec = importlib.util.spec_from_file_location("torch_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main() == 0, capsys.readouterr().out
