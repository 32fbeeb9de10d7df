"""Fixtures shared by the tests of the generated CPU kernels."""

from __future__ import annotations

import pytest


@pytest.fixture
def generated_for_small_calls(monkeypatch):
    """The public ops take the generated kernels from a size on (``MIN_GENERATED_MACS``, and
    ``MIN_KIND_MACS`` for the depthwise kernels compiled once per kind); the
    small cases of a test module marked with this fixture must reach them too."""
    import nbconv.cpu._launch as launch  # after the root conftest has set up Numba

    monkeypatch.setattr(launch, "MIN_GENERATED_MACS", 0)
    monkeypatch.setattr(launch, "MIN_KIND_MACS", 0)


@pytest.fixture(params=["own", "blas"])
def products(request, monkeypatch):
    """Run a test of the kernels whose sums are matrix products (``_pointwise``, ``_im2col``) once
    with their own products and once with NumPy's BLAS for every size, whatever the target
    prefers (skipped where no OpenBLAS with 64-bit integers is found)."""
    from nbconv.cpu import _blas

    if request.param == "blas":
        if _blas.gemm_functions() is None:
            pytest.skip("no OpenBLAS with 64-bit integers beside NumPy")
        monkeypatch.setattr(_blas, "MIN_MACS", 0)
        monkeypatch.setattr(_blas, "takes_product", lambda terms, pixels: True)
        monkeypatch.setattr(_blas, "faster_than_own_blocks", lambda: True)
    else:
        monkeypatch.setattr(_blas, "for_products", lambda: None)
    return request.param
