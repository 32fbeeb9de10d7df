"""Scratch buffers kept between calls (``nbconv.cpu._scratch``): reused per geometry and Python
thread, bounded, and nothing of one call's input reaches the next call's results."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from cases import Case, random_arrays
from reference import assert_conv_close, conv2d_weight_reference

import nbconv
from nbconv._spec import conv2d_spec
from nbconv.cpu import _depthwise_lanes, _grouped, _outer, _rowblock, _scratch, _winograd, _winograd_wgrad

#: the small cases here must reach the generated kernels (``MIN_GENERATED_MACS``)
pytestmark = pytest.mark.usefixtures("generated_for_small_calls")


def test_reused_per_key_and_thread():
    _scratch.clear()
    made = []

    def make():
        made.append(np.zeros(4))
        return (made[-1],)

    first = _scratch.reused(("test", 1), make)
    assert _scratch.reused(("test", 1), make) is first and len(made) == 1
    assert _scratch.reused(("test", 2), make)[0] is not first[0]
    other = []
    thread = threading.Thread(target=lambda: other.append(_scratch.reused(("test", 1), make)))
    thread.start()
    thread.join()
    assert other[0][0] is not first[0] and len(made) == 3  # another Python thread: its own buffers


def test_kept_bytes_are_bounded(monkeypatch):
    _scratch.clear()
    monkeypatch.setattr(_scratch, "MAX_KEPT_BYTES", 3 * 800)
    for k in range(5):
        _scratch.reused(("test", k), lambda: (np.zeros(100),))  # 800 bytes each
    assert [k[1] for k in _scratch._kept()] == [2, 3, 4]  # the least recently used went first
    big = _scratch.reused(("test", "big"), lambda: (np.zeros(1000),))
    assert ("test", "big") not in _scratch._kept() and big[0].size == 1000  # too big: not kept
    _scratch.clear()


#: (case, path's applies): depthwise with channels in the lanes, row-blocked depthwise, output channels in
#: lanes (whole vectors, and packed groups of 8), columns in lanes (``_grouped``)
PATHS = [
    (Case(2, 16, (7, 7), 16, (3, 3), 1, 1, 1, 16), _depthwise_lanes.applies),
    (Case(2, 4, (9, 40), 4, (3, 3), 1, 1, 1, 4), _rowblock.applies),
    (Case(2, 32, (6, 9), 32, (3, 3), 1, 1, 1, 2), _outer.applies),
    (Case(1, 32, (6, 9), 32, (3, 3), 1, 1, 1, 4), _outer.applies),
    (Case(2, 4, (6, 9), 6, (3, 3), 1, 1, 1, 2), _grouped.applies),
]


@pytest.mark.parametrize("case,applies", PATHS, ids=[str(c) for c, _ in PATHS])
def test_a_call_after_a_nan_call(case, applies):
    """A call whose input is all NaN, then one with finite input of the same geometry: the
    second is exact (the padding the first left in the kept buffers is still zero)."""
    x, w, b = random_arrays(case, np.float32)
    assert applies(conv2d_spec(x, w, b, **case.conv_args()))
    assert np.isnan(nbconv.conv2d(np.full_like(x, np.nan), w, b, **case.conv_args())).all()
    assert_conv_close(nbconv.conv2d(x, w, b, **case.conv_args()), x, w, b, **case.conv_args())


@pytest.mark.parametrize("case", [PATHS[0][0], PATHS[2][0], PATHS[4][0]], ids=str)  # + _wgrad's
def test_weight_grad_after_a_nan_call(case):
    x, w, _ = random_arrays(case, np.float64)
    gy = np.random.default_rng(3).standard_normal(nbconv.conv2d(x, w, None, **case.conv_args()).shape)
    assert np.isnan(nbconv.grad.conv2d_weight(np.full_like(x, np.nan), w.shape, gy, **case.conv_args())).all()
    got = nbconv.grad.conv2d_weight(x, w.shape, gy, **case.conv_args())
    np.testing.assert_allclose(got, conv2d_weight_reference(x, w.shape, gy, **case.conv_args()), rtol=1e-11, atol=1e-11)


def test_winograd_calls_after_a_nan_call(monkeypatch):
    """The same for both Winograd kernels (their per-call buffers are kept too)."""
    monkeypatch.setattr(_winograd, "MIN_CHANNELS", 1)
    monkeypatch.setattr(_winograd, "MIN_TILES", 1)
    monkeypatch.setattr(_winograd_wgrad, "MIN_CHANNELS", 1)
    case = Case(3, 4, (9, 11), 16, (3, 3), 1, 1, 1, 1)  # both kernels compiled by their own tests (CI time)
    x, w, b = random_arrays(case, np.float64)
    spec = conv2d_spec(x, w, b, **case.conv_args())
    assert _winograd.applies(spec) and _winograd_wgrad.applies(spec)
    nan = np.full_like(x, np.nan)
    nbconv.conv2d(nan, w, b, **case.conv_args())
    assert_conv_close(nbconv.conv2d(x, w, b, **case.conv_args()), x, w, b, **case.conv_args())
    gy = np.random.default_rng(3).standard_normal(spec.output_shape)
    nbconv.grad.conv2d_weight(nan, w.shape, gy, **case.conv_args())
    got = nbconv.grad.conv2d_weight(x, w.shape, gy, **case.conv_args())
    want = conv2d_weight_reference(x, w.shape, gy, **case.conv_args())
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * np.abs(want).max())
