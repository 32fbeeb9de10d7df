"""Same numbers as torch.nn.functional.conv2d (only when PyTorch is installed)."""

from __future__ import annotations

import numpy as np
import pytest

import nbconv
from cases import CASES, random_arrays
from nbconv._shapes import EXTRA_SHAPES, STANDARD_SHAPES

torch = pytest.importorskip("torch")


def torch_conv2d(x, w, b, **kw):
    t = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return torch.nn.functional.conv2d(t(x), t(w), t(b), **kw).numpy()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_torch(case, dtype):
    x, w, b = random_arrays(case, dtype)
    got = nbconv.conv2d(x, w, b, **case.conv_args())
    want = torch_conv2d(x, w, b, **case.conv_args())
    assert got.shape == want.shape
    rtol = 1e-4 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("shape", STANDARD_SHAPES + EXTRA_SHAPES, ids=lambda s: s.name)
def test_bench_shapes_match_torch(shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape.input_shape(1)).astype(np.float32)
    w = rng.standard_normal(shape.weight_shape()).astype(np.float32)
    np.testing.assert_allclose(
        nbconv.conv2d(x, w, **shape.conv_args()), torch_conv2d(x, w, None, **shape.conv_args()), rtol=1e-4, atol=1e-4
    )
