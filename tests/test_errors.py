"""One test per validation message; each runs on every backend and must say the same thing."""

from __future__ import annotations

import numpy as np
import pytest

import nbconv
from cases import BACKENDS, to_backend

F32 = np.float32


def arrays(x_shape=(1, 4, 8, 8), w_shape=(6, 2, 3, 3), b_shape=None, dtypes=(F32, F32, F32)):
    x = np.zeros(x_shape, dtypes[0])
    w = np.zeros(w_shape, dtypes[1])
    b = None if b_shape is None else np.zeros(b_shape, dtypes[2])
    return x, w, b


# (id, host arrays, keyword arguments, exception, message after "conv2d: ")
ERRORS = [
    ("cin_not_divisible", arrays((1, 5, 8, 8), (6, 2, 3, 3)), dict(groups=2), ValueError,
     r"in_channels \(5\) is not divisible by groups \(2\)"),
    ("weight_cin_mismatch", arrays((1, 4, 8, 8), (6, 3, 3, 3)), dict(groups=2), ValueError,
     r"weight.shape\[1\] \* groups \(3 \* 2 = 6\) must equal in_channels \(4\); weight must have shape "
     r"\(C_out, C_in/groups, kH, kW\) = \(6, 2, 3, 3\)"),
    ("cout_not_divisible", arrays((1, 4, 8, 8), (5, 2, 3, 3)), dict(groups=2), ValueError,
     r"out_channels \(weight.shape\[0\] = 5\) is not divisible by groups \(2\)"),
    ("groups_zero", arrays(), dict(groups=0), ValueError, r"groups must be a positive integer, got 0"),
    ("groups_negative", arrays(), dict(groups=-2), ValueError, r"groups must be a positive integer, got -2"),
    ("groups_float", arrays(), dict(groups=2.0), TypeError, r"groups must be an int, got float \(2.0\)"),
    ("groups_bool", arrays(), dict(groups=True), TypeError, r"groups must be an int, got bool"),
    ("input_2d", arrays((4, 8), (6, 2, 3, 3)), dict(groups=2), ValueError,
     r"input must be 3-D \(C_in, H, W\) or 4-D \(N, C_in, H, W\), got 2-D shape \(4, 8\)"),
    ("input_5d", arrays((1, 1, 4, 8, 8), (6, 2, 3, 3)), dict(groups=2), ValueError, r"input must be 3-D .* got 5-D"),
    ("weight_3d", arrays((1, 4, 8, 8), (6, 2, 3)), dict(groups=2), ValueError,
     r"weight must be 4-D \(C_out, C_in/groups, kH, kW\), got 3-D shape \(6, 2, 3\)"),
    ("weight_zero_size", arrays((1, 4, 8, 8), (6, 2, 0, 3)), dict(groups=2), ValueError,
     r"weight must have no zero-size dimension, got shape \(6, 2, 0, 3\)"),
    ("bias_shape", arrays(b_shape=(5,)), dict(groups=2), ValueError,
     r"bias must have shape \(out_channels,\) = \(6,\), got \(5,\)"),
    ("bias_2d", arrays(b_shape=(6, 1)), dict(groups=2), ValueError, r"bias must have shape .* got \(6, 1\)"),
    ("stride_zero", arrays(), dict(groups=2, stride=0), ValueError, r"stride must be >= 1, got \(0, 0\)"),
    ("stride_three", arrays(), dict(groups=2, stride=(1, 2, 3)), ValueError,
     r"stride must be an int or a pair of ints, got 3 values \(1, 2, 3\)"),
    ("stride_float", arrays(), dict(groups=2, stride=1.5), TypeError, r"stride must be an int or a pair of ints, got float"),
    ("dilation_zero", arrays(), dict(groups=2, dilation=(1, 0)), ValueError, r"dilation must be >= 1, got \(1, 0\)"),
    ("dilation_length", arrays(), dict(groups=2, dilation=[2]), ValueError,
     r"dilation must be an int or a pair of ints, got 1 values \(2,\)"),
    ("padding_negative", arrays(), dict(groups=2, padding=(1, -1)), ValueError, r"padding must be >= 0, got \(1, -1\)"),
    ("padding_unknown", arrays(), dict(groups=2, padding="full"), ValueError,
     r"padding must be an int, a pair of ints, \(\(top, bottom\), \(left, right\)\), 'valid' or 'same', got 'full'"),
    ("padding_float", arrays(), dict(groups=2, padding=0.5), TypeError, r"padding must be an int or a pair of ints, got float"),
    ("same_strided", arrays(), dict(groups=2, padding="same", stride=2), ValueError,
     r"padding='same' is not supported for strided convolutions \(stride=\(2, 2\)\)"),
    ("kernel_too_large", arrays((1, 4, 4, 8), (6, 2, 3, 3)), dict(groups=2, dilation=2), ValueError,
     r"dilated kernel size \(5, 5\) is larger than the padded input size \(4, 8\)"),
    ("dtype_mismatch", arrays(dtypes=(F32, np.float64, F32)), dict(groups=2), TypeError,
     r"input dtype \(float32\) and weight dtype \(float64\) must be the same"),
    ("bias_dtype_mismatch", arrays(b_shape=(6,), dtypes=(np.float64, np.float64, F32)), dict(groups=2), TypeError,
     r"input dtype \(float64\) and bias dtype \(float32\) must be the same"),
    ("dtype_integer", arrays(dtypes=(np.int32, np.int32, F32)), dict(groups=2), TypeError,
     r"input dtype int32 is not supported; supported dtypes are float32 and float64"),
    ("dtype_complex", arrays(dtypes=(np.complex64, np.complex64, F32)), dict(groups=2), TypeError,
     r"input dtype complex64 is not supported; supported dtypes are float32 and float64"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("host, kwargs, exc, message", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_error_message(backend, host, kwargs, exc, message):
    x, w, b = (to_backend(a, backend) for a in host)
    with pytest.raises(exc, match="^conv2d: " + message):
        nbconv.conv2d(x, w, b, **kwargs)


def test_float16_is_cuda_only():
    x, w, _ = arrays(dtypes=(np.float16, np.float16, F32))
    with pytest.raises(TypeError, match="^conv2d: input dtype float16 is supported on the CUDA backend only"):
        nbconv.conv2d(x, w, groups=2)


@pytest.mark.parametrize(
    "name, position, convert",
    [("input", 0, np.ndarray.tolist), ("weight", 1, np.ndarray.tolist), ("bias", 2, np.ndarray.tolist),
     ("input", 0, lambda a: None), ("weight", 1, lambda a: None)],  # bias=None means no bias
    ids=["input-list", "weight-list", "bias-list", "input-None", "weight-None"],
)
def test_non_array_argument(name, position, convert):
    args = list(arrays(b_shape=(6,)))
    args[position] = convert(args[position])
    with pytest.raises(TypeError, match=rf"^conv2d: {name} must be a numpy.ndarray, a cupy.ndarray, a torch.Tensor, a CUDA device array "
                                        r"\(__cuda_array_interface__\) or a DLPack array, got "):
        nbconv.conv2d(*args, groups=2)


@pytest.mark.cuda
@pytest.mark.parametrize("device_arg", ["input", "weight", "bias"])
def test_host_and_device_mixed(device_arg):
    names = ["input", "weight", "bias"]
    args = list(arrays(b_shape=(6,)))
    pos = names.index(device_arg)
    args[pos] = to_backend(args[pos], "cuda")
    first, other = ("input", device_arg) if device_arg != "input" else ("input", "weight")
    where_first = "Numba CUDA device array" if device_arg == "input" else r"numpy.ndarray \(host memory\)"
    with pytest.raises(TypeError, match=rf"^conv2d: {first} is a {where_first}.* but {other} is .*"
                       r"all arrays must live on the same device"):
        nbconv.conv2d(*args, groups=2)


def test_validation_runs_before_dispatch():
    """A bad call never reaches a kernel: the spec is refused even for an empty batch."""
    x, w, _ = arrays((0, 5, 8, 8), (6, 2, 3, 3))
    with pytest.raises(ValueError, match=r"^conv2d: in_channels \(5\)"):
        nbconv.conv2d(x, w, groups=2)


@pytest.mark.parametrize("stride", [True, 1.0, (1, 1.0), (1, np.float64(1))])
def test_a_cached_spec_does_not_let_an_equal_but_invalid_argument_through(stride):
    """Specs are cached per geometry; 1, 1.0 and True are equal keys, only 1 is valid."""
    x, w = np.ones((1, 2, 5, 5), np.float32), np.ones((2, 1, 3, 3), np.float32)
    assert nbconv.conv2d(x, w, stride=1, groups=2).shape == (1, 2, 3, 3)  # the valid one, cached
    with pytest.raises(TypeError, match="stride must be an int or a pair of ints"):
        nbconv.conv2d(x, w, stride=stride, groups=2)


@pytest.mark.parametrize("stride", [True, 1.0, (1, 1.0)])
def test_cached_gradient_specs_do_not_let_an_equal_but_invalid_argument_through(stride):
    """The gradient and transposed ops' specs are cached per geometry and argument types too."""
    x, w = np.ones((1, 2, 5, 5), np.float32), np.ones((2, 1, 3, 3), np.float32)
    gy = np.ones((1, 2, 3, 3), np.float32)
    calls = [lambda s: nbconv.grad.conv2d_input(x.shape, w, gy, stride=s, groups=2),
             lambda s: nbconv.grad.conv2d_weight(x, w.shape, gy, stride=s, groups=2),
             lambda s: nbconv.conv_transpose2d(gy, w, stride=s, groups=2)]
    for call in calls:
        call(1)  # the valid one, cached
        with pytest.raises(TypeError, match="stride must be an int or a pair of ints"):
            call(stride)
        with pytest.raises(TypeError, match="stride must be an int or a pair of ints"):
            call(stride)  # a refused call caches nothing


def test_gradient_spec_cache_returns_the_same_spec_per_geometry():
    from nbconv._spec import conv2d_input_spec, conv2d_weight_spec, conv_transpose2d_spec

    x, w = np.ones((1, 2, 5, 5), np.float32), np.ones((2, 1, 3, 3), np.float32)
    gy = np.ones((1, 2, 5, 5), np.float32)
    assert conv2d_input_spec(x.shape, w, gy, padding=1, groups=2) is conv2d_input_spec(x.shape, w, gy, padding=1,
                                                                                       groups=2)
    assert conv2d_input_spec(list(x.shape), w, gy, padding=1, groups=2) == conv2d_input_spec(
        np.array(x.shape), w, gy, padding=1, groups=2)  # a list and an array (unhashable): the same problem
    a = conv2d_weight_spec(x, (2, 1, 3, 3), gy, padding=1, groups=2)
    assert conv2d_weight_spec(x, (2, 1, 3, 3), gy, padding=1, groups=2) is a
    assert conv2d_weight_spec(x, (2, 1, 1, 1), gy, groups=2) != a  # another weight size: another problem
    t = conv_transpose2d_spec(x, w, None, stride=2, output_padding=1, groups=2)
    assert conv_transpose2d_spec(x, w, None, stride=2, output_padding=1, groups=2) is t
    assert conv_transpose2d_spec(x, w, np.ones(2, np.float32), stride=2, output_padding=1, groups=2).has_bias
    assert conv_transpose2d_spec(x, w, None, stride=2, groups=2).out_size != t.out_size
    with pytest.raises(ValueError, match="output_padding must be >= 0 and smaller than stride"):
        conv_transpose2d_spec(x, w, None, stride=2, output_padding=2, groups=2)


def test_spec_cache_returns_the_same_spec_and_takes_unhashable_arguments():
    from nbconv._spec import conv2d_spec

    x, w = np.ones((1, 2, 5, 5), np.float32), np.ones((2, 1, 3, 3), np.float32)
    assert conv2d_spec(x, w, padding=1, groups=2) is conv2d_spec(x, w, padding=1, groups=2)
    assert conv2d_spec(x, w, padding=np.array([1, 1]), groups=2) == conv2d_spec(x, w, padding=1, groups=2)
    assert conv2d_spec(x, w, padding=[1, 1], groups=2) == conv2d_spec(x, w, padding=(1, 1), groups=2)


def test_the_common_calls_spec_is_found_by_shapes_and_dtypes_and_checks_every_other_call():
    """NumPy arrays of one type and integer arguments find their spec by the arrays' shapes and
    dtypes (the same object each time); a call that differs in an array's dtype or type, or in an
    argument's type, is validated in full."""
    from nbconv._spec import conv2d_spec

    x, w, b = np.ones((1, 4, 6, 6), np.float32), np.ones((4, 2, 3, 3), np.float32), np.ones(4, np.float32)
    spec = conv2d_spec(x, w, b, 1, 1, 1, 2)
    assert conv2d_spec(x.copy(), w.copy(), b.copy(), 1, 1, 1, 2) is spec
    assert spec.has_bias and conv2d_spec(x, w, None, 1, 1, 1, 2) is not spec
    assert conv2d_spec(x.astype(np.float64), w.astype(np.float64), None, 1, 1, 1, 2).dtype == np.float64
    with pytest.raises(TypeError, match=r"dtype \(float32\) and weight dtype \(float64\) must be the same"):
        conv2d_spec(x, w.astype(np.float64), b, 1, 1, 1, 2)
    with pytest.raises(TypeError, match="bias"):
        conv2d_spec(x, w, [1.0] * 4, 1, 1, 1, 2)
    with pytest.raises(TypeError, match="groups must be an int"):
        conv2d_spec(x, w, b, 1, 1, 1, 2.0)
    with pytest.raises(ValueError, match="not divisible by groups"):
        conv2d_spec(x, w, b, 1, 1, 1, 3)
    with pytest.raises(ValueError, match="not divisible by groups"):
        conv2d_spec(x, w, b, 1, 1, 1, 3)  # a refused call caches nothing


def test_a_spec_hashes_its_fields_once_and_pickles_without_the_hash():
    """Specs are dictionary keys on every call: the hash of their fields is kept after the first
    use, equal specs hash alike, and a pickle carries the fields alone (a string's hash differs
    from one process to another), so an unpickled spec hashes afresh to the same value here."""
    import dataclasses
    import pickle

    from nbconv._spec import conv2d_spec

    spec = conv2d_spec(np.ones((1, 4, 6, 6), np.float32), np.ones((4, 2, 3, 3), np.float32), None, groups=2)
    fields = tuple(getattr(spec, f.name) for f in dataclasses.fields(spec))
    assert hash(spec) == hash(fields) and spec.__dict__["_hash"] == hash(fields)
    copy = dataclasses.replace(spec)
    assert copy == spec and "_hash" not in copy.__dict__ and hash(copy) == hash(spec)
    state = pickle.dumps(spec)
    assert b"_hash" not in state
    back = pickle.loads(state)
    assert back == spec and "_hash" not in back.__dict__ and hash(back) == hash(spec)
    other = dataclasses.replace(spec, groups=4, in_channels=8)
    assert other != spec and hash(other) == hash(tuple(getattr(other, f.name) for f in dataclasses.fields(other)))
