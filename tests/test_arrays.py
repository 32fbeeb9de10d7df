"""Layouts, read-only and untouched inputs, N=0, unbatched input and ``out=``, on every backend."""

from __future__ import annotations

import numpy as np
import pytest
from cases import (
    BACKENDS,
    Case,
    every_other_column,
    permuted,
    random_arrays,
    to_backend,
    to_host,
)
from reference import assert_conv_close

import nbconv

CASE = Case(2, 4, (9, 8), 6, (3, 2), (1, 2), 1, 1, 2)


def _strided_view(a, backend):
    """A non-contiguous view holding the same values as ``a`` (every other column of a wider array)."""
    wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    wide[..., ::2] = a
    return every_other_column(to_backend(wide, backend))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["fortran", "strided", "transposed_weight"])
def test_any_layout(backend, layout):
    x, w, b = random_arrays(CASE, np.float32)
    if layout == "fortran":
        xd, wd = to_backend(np.asfortranarray(x), backend), to_backend(np.asfortranarray(w), backend)
    elif layout == "strided":
        xd, wd = _strided_view(x, backend), _strided_view(w, backend)
    else:  # weight stored as (C_out, kW, kH, C_in/g) and viewed back with transpose
        stored = to_backend(np.ascontiguousarray(w.transpose(0, 3, 2, 1)), backend)
        xd, wd = to_backend(x, backend), permuted(stored, (0, 3, 2, 1), backend)
    got = nbconv.conv2d(xd, wd, to_backend(b, backend), **CASE.conv_args())
    assert_conv_close(to_host(got), x, w, b, **CASE.conv_args())


def test_read_only_inputs_cpu():
    x, w, b = random_arrays(CASE, np.float64)
    for a in (x, w, b):
        a.setflags(write=False)
    assert_conv_close(nbconv.conv2d(x, w, b, **CASE.conv_args()), x, w, b, **CASE.conv_args())


@pytest.mark.parametrize("backend", BACKENDS)
def test_inputs_not_modified(backend):
    x, w, b = random_arrays(CASE, np.float64)
    xd, wd, bd = (to_backend(a, backend) for a in (x, w, b))
    nbconv.conv2d(xd, wd, bd, **CASE.conv_args())
    for before, after in ((x, xd), (w, wd), (b, bd)):
        np.testing.assert_array_equal(to_host(after), before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    x = np.zeros((0, 4, 9, 8), np.float32)
    _, w, b = random_arrays(CASE, np.float32)
    got = nbconv.conv2d(to_backend(x, backend), to_backend(w, backend), to_backend(b, backend), **CASE.conv_args())
    assert got.shape == (0, 6, 9, 5)
    assert got.dtype == np.float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_unbatched(backend):
    x, w, b = random_arrays(CASE, np.float32)
    got = nbconv.conv2d(to_backend(x[1], backend), to_backend(w, backend), to_backend(b, backend), **CASE.conv_args())
    assert got.shape == (6, 9, 5)
    assert_conv_close(to_host(got), x[1], w, b, **CASE.conv_args())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("unbatched", [False, True])
def test_out_is_written_and_returned(backend, unbatched):
    x, w, b = random_arrays(CASE, np.float32)
    if unbatched:
        x = x[0]
    out = to_backend(np.full((2, 6, 9, 5)[unbatched:], np.nan, np.float32), backend)
    got = nbconv.conv2d(to_backend(x, backend), to_backend(w, backend), to_backend(b, backend), **CASE.conv_args(), out=out)
    assert got is out
    assert_conv_close(to_host(out), x, w, b, **CASE.conv_args())


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_non_contiguous(backend):
    x, w, b = random_arrays(CASE, np.float64)
    big = to_backend(np.full((2, 6, 9, 10), np.nan), backend)
    out = every_other_column(big)
    nbconv.conv2d(to_backend(x, backend), to_backend(w, backend), to_backend(b, backend), **CASE.conv_args(), out=out)
    host = to_host(big)
    assert_conv_close(host[..., ::2], x, w, b, **CASE.conv_args())
    assert np.isnan(host[..., 1::2]).all(), "wrote outside the out view"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda o: np.empty((2, 6, 9, 6), np.float32), r"out has shape \(2, 6, 9, 6\), expected \(2, 6, 9, 5\)"),
        (lambda o: np.empty((2, 6, 9, 5), np.float64), r"out has dtype float64, expected float32"),
    ],
    ids=["shape", "dtype"],
)
def test_out_wrong_shape_or_dtype(backend, bad, message):
    x, w, b = (to_backend(a, backend) for a in random_arrays(CASE, np.float32))
    with pytest.raises(ValueError, match="^conv2d: " + message):
        nbconv.conv2d(x, w, b, **CASE.conv_args(), out=to_backend(bad(None), backend))


def test_out_wrong_kind():
    from numba import cuda

    x, w, b = random_arrays(CASE, np.float32)
    with pytest.raises(ValueError, match=r"^conv2d: out must be a numpy.ndarray \(host memory\) like the result, got a Numba"):
        nbconv.conv2d(x, w, b, **CASE.conv_args(), out=cuda.device_array((2, 6, 9, 5), np.float32))
    dx, dw, db = (to_backend(a, "cuda") for a in (x, w, b))
    with pytest.raises(ValueError, match=r"^conv2d: out must be a Numba CUDA device array .* got a numpy.ndarray"):
        nbconv.conv2d(dx, dw, db, **CASE.conv_args(), out=np.empty((2, 6, 9, 5), np.float32))
    with pytest.raises(ValueError, match=r"^conv2d: out must be .* got list"):
        nbconv.conv2d(x, w, b, **CASE.conv_args(), out=[])


def test_out_read_only():
    x, w, b = random_arrays(CASE, np.float32)
    out = np.empty((2, 6, 9, 5), np.float32)
    out.setflags(write=False)
    with pytest.raises(ValueError, match="^conv2d: out is read-only"):
        nbconv.conv2d(x, w, b, **CASE.conv_args(), out=out)


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_overlapping_input(backend):
    # 1x1 depthwise, stride 1: the output has the input's shape, so out=input would be accepted
    x = to_backend(np.ones((1, 3, 4, 4), np.float32), backend)
    w = to_backend(np.ones((3, 1, 1, 1), np.float32), backend)
    with pytest.raises(ValueError, match="^conv2d: out overlaps input in memory"):
        nbconv.conv2d(x, w, groups=3, out=x)
    flat = to_backend(np.ones(48, np.float32), backend)
    out, w_inside_out = flat.reshape(1, 3, 4, 4), flat[45:48].reshape(3, 1, 1, 1)
    with pytest.raises(ValueError, match="^conv2d: out overlaps weight in memory"):
        nbconv.conv2d(x, w_inside_out, groups=3, out=out)
    # disjoint halves of one buffer are fine
    flat = to_backend(np.zeros(96, np.float32), backend)
    nbconv.conv2d(x, w, groups=3, out=flat[48:].reshape(1, 3, 4, 4))
    np.testing.assert_array_equal(to_host(flat)[:48], 0)
    np.testing.assert_array_equal(to_host(flat)[48:], 1)


@pytest.mark.parametrize(
    "batch, groups, out_per_group, threads, expected",
    [(8, 32, 4, 2, 4), (1, 2, 128, 2, 32), (8, 2, 128, 2, 128), (1, 1, 3, 2, 1), (1, 960, 1, 2, 1), (2, 1, 7, 4, 1)],
)
def test_cpu_oc_block_choice(batch, groups, out_per_group, threads, expected):
    from nbconv.cpu._launch import choose_oc_block

    ocb = choose_oc_block(batch, groups, out_per_group, threads)
    assert ocb == expected
    blocks = -(-out_per_group // ocb)
    assert batch * groups * blocks >= min(4 * threads, batch * groups * out_per_group)
