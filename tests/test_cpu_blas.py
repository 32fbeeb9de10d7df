"""NumPy's OpenBLAS called from inside the CPU kernels' tasks (``nbconv.cpu._blas``): the
``gemm`` intrinsic against NumPy, the thread count set to one and given back, the switch in the
environment, and results that depend neither on the thread count nor on the batch."""

from __future__ import annotations

import subprocess
import sys
import threading

import numba
import numpy as np
import pytest
from cases import at_each_thread_count

import nbconv
from nbconv.cpu import _blas

FOUND = _blas.gemm_functions()
needs_blas = pytest.mark.skipif(FOUND is None, reason="no OpenBLAS with 64-bit integers beside NumPy")


def _numpy_has_scipy_openblas() -> bool:
    try:
        info = np.show_config(mode="dicts")
    except TypeError:  # NumPy before 1.26
        return False
    return info.get("Build Dependencies", {}).get("blas", {}).get("name") == "scipy-openblas"


@pytest.mark.skipif(not _numpy_has_scipy_openblas(), reason="this NumPy was not built with scipy-openblas")
def test_numpys_wheel_blas_is_found():
    assert FOUND is not None and FOUND.sgemm and FOUND.dgemm


@numba.njit
def _product(fn, m, n, k, a, a0, lda, b, b0, ldb, beta, c, c0, ldc):
    _blas.gemm(fn, m, n, k, a, a0, lda, b, b0, ldb, beta, c, c0, ldc)


@needs_blas
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_gemm_on_blocks_inside_larger_arrays(dtype, beta):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((9, 11)).astype(dtype)  # rows 2..6, columns 1..8 used: 5 x 7
    b = rng.standard_normal((10, 13)).astype(dtype)  # rows 3..9, columns 4..10: 7 x 6
    c = rng.standard_normal((8, 12)).astype(dtype)  # rows 1..5, columns 2..7: 5 x 6
    before = c.copy()
    _product(FOUND.address(dtype), 5, 6, 7, a.ravel(), 2 * 11 + 1, 11, b.ravel(), 3 * 13 + 4, 13, beta,
             c.ravel(), 1 * 12 + 2, 12)
    want = before.copy()
    want[1:6, 2:8] = beta * before[1:6, 2:8] + a[2:7, 1:8].astype(np.float64) @ b[3:10, 4:10]
    np.testing.assert_allclose(c, want, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)
    mask = np.ones(c.shape, bool)
    mask[1:6, 2:8] = False
    assert np.array_equal(c[mask], before[mask])  # nothing outside the block written


@needs_blas
def test_single_threaded_sets_one_thread_and_gives_the_count_back():
    start = FOUND.get_threads()
    FOUND.set_threads(2)
    try:
        with _blas.single_threaded(FOUND):
            assert FOUND.get_threads() == 1
            with _blas.single_threaded(FOUND):  # nested, as concurrent callers are
                assert FOUND.get_threads() == 1
            assert FOUND.get_threads() == 1
        assert FOUND.get_threads() == 2
        barrier = threading.Barrier(4)

        def hold():
            with _blas.single_threaded(FOUND):
                barrier.wait()

        threads = [threading.Thread(target=hold) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert FOUND.get_threads() == 2
    finally:
        FOUND.set_threads(start)


def test_the_environment_turns_it_off():
    code = "from nbconv.cpu import _blas; print(_blas.gemm_functions())"
    out = subprocess.run([sys.executable, "-c", code], env={**__import__("os").environ, "NBCONV_BLAS": "0"},
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "None"


def test_the_split_depends_on_the_sizes_only():
    assert _blas.product_split(1024, 2048, 49) == (49, 4)  # parts of 256 rows; a 7 x 7 plane whole
    rows, inner, columns = 512, 256, 784
    chunk, parts = _blas.product_split(rows, inner, columns)
    assert parts == 2 and chunk % 64 == 0 and 256 <= chunk <= columns
    one, two = at_each_thread_count(lambda: _blas.product_split(rows, inner, columns))
    assert one == two


@needs_blas
@pytest.mark.parametrize("layer", [
    dict(c_in=96, c_out=160, side=15, k=1, stride=1, padding=0),  # pointwise: 160 rows, 225 pixels
    dict(c_in=300, c_out=520, side=9, k=1, stride=2, padding=0),  # strided pointwise: 3 parts of rows
    dict(c_in=48, c_out=96, side=12, k=2, stride=2, padding=0),  # im2col: ConvNeXt's downsampling
    dict(c_in=3, c_out=24, side=40, k=3, stride=2, padding=1),  # im2col: a stem
])
def test_same_bits_whatever_the_thread_count_or_the_batch(layer):
    rng = np.random.default_rng(2)
    k = layer["k"]
    x = rng.standard_normal((3, layer["c_in"], layer["side"], layer["side"])).astype(np.float32)
    w = rng.standard_normal((layer["c_out"], layer["c_in"], k, k)).astype(np.float32)
    b = rng.standard_normal(layer["c_out"]).astype(np.float32)
    args = dict(stride=layer["stride"], padding=layer["padding"])
    one, two = at_each_thread_count(lambda: nbconv.conv2d(x, w, b, **args))
    assert np.array_equal(one, two)
    alone = nbconv.conv2d(x[1:2], w, b, **args)
    assert np.array_equal(alone[0], two[1])
    from reference import assert_conv_close

    assert_conv_close(two, x, w, b, **args)


@pytest.mark.parametrize("bits, registers, called", [(256, 16, True), (128, 16, True), (512, 32, False)])
def test_the_products_call_the_blas_only_where_it_beats_the_own_blocks(bits, registers, called, monkeypatch):
    """AVX2 and narrower: the BLAS (faster than 12 sums in registers); AVX-512: the own blocks of
    24 sums (faster than NumPy's OpenBLAS on Zen 5, ``docs/performance.md``)."""
    from nbconv.cpu import _target

    monkeypatch.setattr(_blas, "target", lambda: _target.Target("cpu", "", bits, registers))
    monkeypatch.setattr(_blas, "gemm_functions", lambda: "the BLAS")
    assert _blas.for_products() == ("the BLAS" if called else None)
    monkeypatch.setattr(_blas, "gemm_functions", lambda: None)
    assert _blas.for_products() is None


@pytest.mark.parametrize("c_in, groups, hw, called", [
    (256, 1, 14, True),   # 256 terms: the BLAS on any plane
    (192, 1, 28, False),  # fewer on planes of 14 x 14 to 55 x 55: the own blocks
    (256, 1, 28, False),  # on planes of 28 x 28 to 55 x 55 from 512
    (512, 1, 28, True),
    (128, 1, 9, True),    # on planes under 14 x 14 the BLAS from 128
    (128, 1, 7, False),   # but 7 x 7 (runs of three vectors and a pixel): the own blocks
    (96, 1, 13, False),
    (96, 1, 56, True),    # on 56 x 56 and more from 96
    (64, 1, 56, False),
    (80, 4, 28, False),   # a grouped 1x1 layer of 20 channels per group
    (8, 1, 4, False),     # under MIN_MACS
])
def test_1x1_products_take_the_blas_by_terms_and_plane(c_in, groups, hw, called, monkeypatch):
    """Which 1x1 products go to the BLAS on a target where it is used (AVX2:
    ``_blas.takes_product``), checked by the call itself, and the result either way."""
    from nbconv.cpu import _pointwise

    if _blas.gemm_functions() is None:
        pytest.skip("no OpenBLAS with 64-bit integers beside NumPy")
    monkeypatch.setattr(_blas, "faster_than_own_blocks", lambda: True)
    calls = []
    real = _pointwise._forward_blas
    monkeypatch.setattr(_pointwise, "_forward_blas", lambda *a: (calls.append(a), real(*a))[1])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, c_in, hw, hw)).astype(np.float32)
    w = rng.standard_normal((c_in, c_in // groups, 1, 1)).astype(np.float32)
    got = nbconv.conv2d(x, w, groups=groups)
    assert bool(calls) == called
    from reference import assert_conv_close

    assert_conv_close(got, x, w, None, groups=groups)
