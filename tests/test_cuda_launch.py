"""Launch arithmetic of the CUDA kernels: plain functions, no GPU needed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nbconv._spec import conv2d_spec

pytestmark = pytest.mark.cuda


def spec_for(x_shape, w_shape, dtype=np.float32, **kw):
    from numba import cuda

    return conv2d_spec(cuda.device_array(x_shape, dtype), cuda.device_array(w_shape, dtype), **kw)


def test_choose_oc_block():
    from nbconv.cuda._launch import choose_oc_block

    assert [choose_oc_block(n) for n in (1, 2, 3, 4, 5, 16, 128)] == [1, 2, 4, 4, 4, 4, 4]


def test_choose_tile():
    from nbconv.cuda._launch import choose_tile

    assert choose_tile((7, 7)) == (8, 8)
    assert choose_tile((112, 5)) == (16, 8)
    assert choose_tile((9, 9)) == (16, 16)


@pytest.mark.parametrize(
    "x_shape, w_shape, kw",
    [
        ((8, 32, 112, 112), (32, 1, 3, 3), dict(padding=1, groups=32)),
        ((8, 960, 7, 7), (960, 1, 3, 3), dict(padding=1, groups=960)),
        ((8, 96, 27, 27), (256, 48, 5, 5), dict(padding=2, groups=2)),
        ((3, 6, 20, 33), (9, 2, 3, 2), dict(stride=(2, 3), groups=3)),
    ],
)
def test_grid_covers_every_output_once(x_shape, w_shape, kw):
    from nbconv.cuda._launch import forward_launch_config

    spec = spec_for(x_shape, w_shape, **kw)
    cfg = forward_launch_config(spec)
    tw, th = cfg.block
    assert cfg.key.tile == (th, tw)
    assert cfg.tiles == (math.ceil(spec.out_size[0] / th), math.ceil(spec.out_size[1] / tw))
    assert cfg.n_oc_blocks * cfg.key.oc_block >= spec.out_per_group > (cfg.n_oc_blocks - 1) * cfg.key.oc_block
    assert cfg.grid == spec.batch * spec.groups * cfg.n_oc_blocks * cfg.tiles[0] * cfg.tiles[1]
    assert cfg.grid < 2**31 - 1
    assert th * tw <= 1024


def test_halo_tile_and_shared_memory():
    from nbconv.cuda._forward import ForwardKey

    key = ForwardKey((3, 3), (2, 2), (1, 1), (16, 16), 4, False, True, True)
    assert key.halo_tile == (15 * 2 + 3, 15 * 2 + 3)
    assert key.shared_bytes == 33 * 33 * 4
    assert key._replace(acc_double=True).shared_bytes == 33 * 33 * 8
    assert key._replace(stage_input=False).shared_bytes == 0


def test_huge_dilated_kernel_falls_back_to_global_reads():
    from nbconv.cuda._launch import SHARED_LIMIT_BYTES, forward_launch_config

    small = forward_launch_config(spec_for((1, 2, 64, 64), (2, 1, 3, 3), groups=2))
    assert small.key.stage_input and small.key.shared_bytes <= SHARED_LIMIT_BYTES
    huge = forward_launch_config(spec_for((1, 2, 200, 200), (2, 1, 31, 31), np.float64, dilation=4, groups=2))
    assert not huge.key.stage_input


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_huge_dilated_kernel_is_correct(dtype):
    """The global-read variant computes the same numbers (runs on the simulator too)."""
    import nbconv
    from cases import to_backend, to_host
    from nbconv.cuda._launch import forward_launch_config
    from reference import assert_conv_close

    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 2, 50, 230)).astype(dtype)
    w = rng.standard_normal((2, 1, 5, 31)).astype(dtype)
    args = dict(dilation=(12, 7), padding=(0, 50), groups=2)
    assert not forward_launch_config(spec_for(x.shape, w.shape, dtype, **args)).key.stage_input
    got = nbconv.conv2d(to_backend(x, "cuda"), to_backend(w, "cuda"), **args)
    assert_conv_close(to_host(got), x, w, **args)
