"""Backend choice by array kind, and what ``import nbconv`` must not do."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import nbconv
from nbconv import _arrays


def test_import_touches_neither_cupy_nor_torch_nor_cuda():
    code = (
        "import sys, nbconv; "
        "bad = [m for m in ('cupy', 'torch', 'numba.cuda', 'cuda', 'numba_cuda') if m in sys.modules]; "
        "assert not bad, bad; print(nbconv.__version__)"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == nbconv.__version__


def test_numpy_in_numpy_out():
    x = np.ones((1, 2, 4, 4), np.float32)
    w = np.ones((2, 1, 3, 3), np.float32)
    y = nbconv.conv2d(x, w, groups=2, padding=1)
    assert type(y) is np.ndarray and y.dtype == np.float32


@pytest.mark.cuda
def test_numba_in_numba_out():
    from numba import cuda

    x = cuda.to_device(np.ones((1, 2, 4, 4), np.float32))
    w = cuda.to_device(np.ones((2, 1, 3, 3), np.float32))
    y = nbconv.conv2d(x, w, groups=2, padding=1)
    assert _arrays.array_kind(y) == _arrays.NUMBA
    assert y.shape == (1, 2, 4, 4)
    np.testing.assert_array_equal(y.copy_to_host()[0, 0, 1:3, 1:3], 9)


def test_array_kind_without_gpu_libraries():
    assert _arrays.array_kind(np.zeros(1)) == _arrays.NUMPY
    assert _arrays.array_kind([1.0]) is None
    assert _arrays.array_kind(1.0) is None

    class CAI:
        __cuda_array_interface__ = {"shape": (2, 3), "typestr": "<f4", "data": (0, False), "version": 3}

    assert _arrays.array_kind(CAI()) == _arrays.CAI
    assert _arrays.array_shape(CAI(), _arrays.CAI) == (2, 3)
    assert _arrays.array_dtype(CAI(), _arrays.CAI) == np.float32


def test_cuda_array_interface_mixed_with_host_is_refused():
    class CAI:
        dtype = np.dtype(np.float32)
        shape = (6, 2, 3, 3)
        __cuda_array_interface__ = {"shape": (6, 2, 3, 3), "typestr": "<f4", "data": (0, False), "version": 3}

    with pytest.raises(TypeError, match=r"^conv2d: input is a numpy.ndarray \(host memory\) but weight is a "
                                        r"__cuda_array_interface__ object"):
        nbconv.conv2d(np.zeros((1, 4, 8, 8), np.float32), CAI(), groups=2)


@pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", reason="CuPy needs a real GPU")
def test_cupy_in_cupy_out():
    cupy = pytest.importorskip("cupy")
    x = cupy.ones((1, 2, 4, 4), cupy.float32)
    w = cupy.ones((2, 1, 3, 3), cupy.float32)
    y = nbconv.conv2d(x, w, groups=2, padding=1)
    assert isinstance(y, cupy.ndarray)
    assert float(y[0, 0, 1, 1]) == 9.0


def _facts_or_error(arrays, fast: bool, monkeypatch):
    from nbconv import _spec

    with monkeypatch.context() as m:
        if not fast:
            m.setattr(_spec, "_same_plain_kind", lambda arrays, optional: None)
        try:
            return _spec._facts("conv2d", arrays)
        except (TypeError, ValueError) as e:
            return type(e), str(e)


@pytest.mark.parametrize("case", ["plain", "bias", "float64", "float16", "mixed dtypes", "int", "list", "memmap",
                                  "missing weight"])
def test_validation_fast_path_agrees_with_the_full_one(case, monkeypatch, tmp_path):
    """Validation's shortcut for the common call (NumPy arrays of one supported dtype) gives
    what the full path gives, and leaves everything else (errors included) to it."""
    x = np.ones((1, 2, 5, 5), np.float32)
    w = np.ones((2, 1, 3, 3), np.float32)
    b = np.ones(2, np.float32)
    arrays = {
        "plain": dict(input=x, weight=w, bias=None),
        "bias": dict(input=x, weight=w, bias=b),
        "float64": dict(input=x.astype(np.float64), weight=w.astype(np.float64), bias=None),
        "float16": dict(input=x.astype(np.float16), weight=w.astype(np.float16), bias=None),
        "mixed dtypes": dict(input=x, weight=w.astype(np.float64), bias=None),
        "int": dict(input=x.astype(np.int32), weight=w.astype(np.int32), bias=None),
        "list": dict(input=x.tolist(), weight=w, bias=None),
        "memmap": dict(input=np.lib.format.open_memmap(tmp_path / "x.npy", "w+", np.float32, x.shape), weight=w,
                       bias=None),
        "missing weight": dict(input=x, weight=None, bias=None),
    }[case]
    _arrays.array_kind(arrays["input"])  # the type learnt, as after a first call
    want = _facts_or_error(arrays, False, monkeypatch)
    assert _facts_or_error(arrays, True, monkeypatch) == want
    from nbconv import _spec

    taken = _spec._same_plain_kind(arrays, ("bias",)) is not None
    assert taken == (case in ("plain", "bias", "float64", "memmap")), "the shortcut takes exactly the common calls"


def test_large_numpy_results_start_at_a_cache_line():
    """Results of ``ALIGNED_BYTES`` or more start at a multiple of 64 bytes (views of a buffer a
    line longer), C-contiguous and writeable, with the dtype and shape asked for; smaller ones
    are NumPy's own arrays."""
    from nbconv import _dispatch

    for shape, dtype in (((3, 5, 37, 41), np.float32), ((2, 8, 64, 64), np.float64), ((4, 4096), np.float32)):
        a = _dispatch.numpy_empty(shape, dtype)
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
        assert a.ctypes.data % _dispatch.ALIGNMENT == 0
    small = _dispatch.numpy_empty((2, 3), np.float32)
    assert small.base is None and small.shape == (2, 3)
    x = np.ones((1, 16, 64, 64), np.float32)
    y = nbconv.conv2d(x, np.ones((16, 1, 3, 3), np.float32), padding=1, groups=16)
    assert y.ctypes.data % 64 == 0 and y[0, 0, 5, 5] == 9.0


def _spec_or_error(make, shortcut: bool, monkeypatch):
    from nbconv import _spec

    with monkeypatch.context() as m:
        if not shortcut:
            m.setattr(_spec, "_plain_call", lambda *args: None)
        try:
            return make()
        except (TypeError, ValueError) as e:
            return type(e), str(e)


@pytest.mark.parametrize("op", ["conv2d_input", "conv2d_weight", "conv_transpose2d", "conv2d_bias"])
def test_gradient_validation_shortcut_agrees_with_the_full_one(op, monkeypatch):
    """The validation of the gradients and the transposed convolution takes a shortcut for the
    common call (arrays of one NumPy or CuPy type; ints, strings and tuples of ints): a spec kept
    per op, shapes, dtypes and arguments. Each call gives what full validation gives, the first
    time and from the shortcut's store, errors included, and an argument equal to a stored one
    but of another type (1.0, True, a list) is not taken for it."""
    from nbconv import _spec

    x, w, gy = np.ones((2, 4, 6, 6), np.float32), np.ones((4, 2, 3, 3), np.float32), np.ones((2, 4, 6, 6), np.float32)
    b = np.ones(4, np.float32)
    calls = {
        "conv2d_input": [
            lambda: _spec.conv2d_input_spec((2, 4, 6, 6), w, gy, 1, 1, 1, 2),
            lambda: _spec.conv2d_input_spec((2, 4, 6, 6), w, gy, 1, "same", 1, 2),
            lambda: _spec.conv2d_input_spec((2, 4, 6, 6), w, gy, 1.0, 1, 1, 2),
            lambda: _spec.conv2d_input_spec((2, 4, 6, 6.0), w, gy, 1, 1, 1, 2),
            lambda: _spec.conv2d_input_spec([2, 4, 6, 6], w, gy, 1, 1, 1, 2),
            lambda: _spec.conv2d_input_spec((2, 4, 6, 6), w, gy, 1, True, 1, 2),
            lambda: _spec.conv2d_input_spec((2, 4, 6, 6), w, gy, 1, 1, 1, 3),
            lambda: _spec.conv2d_input_spec((2, 4, 6, 6), w.astype(np.float64), gy, 1, 1, 1, 2),
            lambda: _spec.conv2d_input_spec((2, 4, 6, 6), None, gy, 1, 1, 1, 2),
        ],
        "conv2d_weight": [
            lambda: _spec.conv2d_weight_spec(x, (4, 2, 3, 3), gy, 1, 1, 1, 2),
            lambda: _spec.conv2d_weight_spec(x, (4, 2, 3, 3), gy, 1, "same", 1, 2),
            lambda: _spec.conv2d_weight_spec(x, (4, 2, 3, 3.0), gy, 1, 1, 1, 2),
            lambda: _spec.conv2d_weight_spec(x, (4, 2, 3, 3), gy, 1, 1, 1, 2.0),
            lambda: _spec.conv2d_weight_spec(x, (4, 2, 3, 3), None, 1, 1, 1, 2),
            lambda: _spec.conv2d_weight_spec(x, (4, 2, 3, 3), gy[:, :, :5], 1, 1, 1, 2),
        ],
        "conv_transpose2d": [
            lambda: _spec.conv_transpose2d_spec(x, w, b[:4], 2, 1, 1, 2, 1),
            lambda: _spec.conv_transpose2d_spec(x, w, None, 2, 1, 1, 2, 1),
            lambda: _spec.conv_transpose2d_spec(x, w, b[:4], 2, 1, 1.0, 2, 1),
            lambda: _spec.conv_transpose2d_spec(x, w, b[:4], 2, 1, 2, 2, 1),
            lambda: _spec.conv_transpose2d_spec(x, w, b[:3], 2, 1, 1, 2, 1),
            lambda: _spec.conv_transpose2d_spec(x, w, b.tolist(), 2, 1, 1, 2, 1),
        ],
        "conv2d_bias": [
            lambda: _spec.conv2d_bias_spec(gy),
            lambda: _spec.conv2d_bias_spec(gy[0]),
            lambda: _spec.conv2d_bias_spec(gy[0, 0]),
            lambda: _spec.conv2d_bias_spec(gy.astype(np.int32)),
            lambda: _spec.conv2d_bias_spec(None),
        ],
    }[op]
    for make in calls:
        want = _spec_or_error(make, False, monkeypatch)
        for _ in range(2):  # validated, then from the store
            assert _spec_or_error(make, True, monkeypatch) == want
    assert not isinstance(_spec_or_error(calls[0], True, monkeypatch), tuple), "the first call is valid"
    assert any(isinstance(_spec_or_error(make, True, monkeypatch), tuple) for make in calls), "and some are not"
