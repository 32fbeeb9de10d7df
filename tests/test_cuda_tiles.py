"""The CUDA kernels by tiles: the weight gradient (nbconv/cuda/_wgrad_tiles.py) and the
convolution (nbconv/cuda/_conv_tiles.py) of layers with many channels per group. Which layers
take them, how their launches split the work, and their numbers against the NumPy reference
(under the simulator with small tiles, at full tile size on a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
from cases import SIMULATOR, to_backend, to_host
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import (
    assert_within_bound,
    conv2d_input_reference,
    conv2d_reference,
    conv2d_weight_reference,
    conv_transpose2d_reference,
)

import nbconv

pytestmark = pytest.mark.cuda


def _spec(x_shape, w_shape, dtype=np.float32, **kw):
    from compile_kernels import DeviceStandIn

    from nbconv._spec import conv2d_spec

    return conv2d_spec(DeviceStandIn(x_shape, dtype), DeviceStandIn(w_shape, dtype), **kw)


def test_choose_tile_rows():
    from nbconv.cuda._launch import choose_tile_rows

    assert [choose_tile_rows(n, (16, 64)) for n in (8, 12, 16, 17, 48, 64, 128, 1000)] == [16, 16, 16, 32, 64, 64,
                                                                                          64, 64]
    assert choose_tile_rows(9, (8, 8)) == 8


@settings(max_examples=200, deadline=None)
@given(tiles=st.integers(1, 5000), positions=st.integers(1, 10**7), step=st.sampled_from([4, 8, 16]))
def test_chunks_cover_every_position_once(tiles, positions, step):
    from nbconv.cuda._launch import MAX_GRID_YZ, REDUCE_TARGET_BLOCKS, TILES_MIN_STEPS, choose_tile_chunks

    p, chunk = choose_tile_chunks(tiles, positions, step)
    assert chunk % step == 0 and 1 <= p <= MAX_GRID_YZ
    assert (p - 1) * chunk < positions <= p * chunk  # no empty block, none left out
    assert p == 1 or chunk >= TILES_MIN_STEPS * step  # a block adds enough steps to pay for its partial
    assert tiles * p < REDUCE_TARGET_BLOCKS + tiles  # about the blocks the GPU is given, no more


def test_key_rejects_tiles_the_threads_cannot_load_evenly():
    from nbconv.cuda._wgrad_tiles import TileReduceKey

    TileReduceKey((3, 3), (1, 1), (1, 1), (64, 64, 16), (4, 4), False).check()
    for tile, micro in [((8, 16, 32), (2, 4)),  # 16 threads: not one position each of 32
                        ((8, 64, 4), (2, 4)),  # 64 threads: 16 rows of each slice a pass, 8 in the tile
                        ((10, 64, 16), (4, 4))]:  # rows not a multiple of a thread's
        with pytest.raises(ValueError, match="whole rows"):
            TileReduceKey((3, 3), (1, 1), (1, 1), tile, micro, False).check()


@pytest.mark.parametrize("x_shape, w_shape, kw, tiles", [
    ((8, 32, 112, 112), (32, 1, 3, 3), dict(padding=1, groups=32), False),  # depthwise: the pair kernel
    ((8, 64, 16, 16), (128, 1, 3, 3), dict(padding=1, groups=64), False),  # x2 multiplier: 2 outputs a group
    ((8, 128, 56, 56), (128, 4, 3, 3), dict(padding=1, groups=32), False),  # ResNeXt's 4 per group
    ((8, 256, 56, 56), (256, 8, 3, 3), dict(stride=2, padding=1, groups=32), True),
    ((8, 96, 27, 27), (256, 48, 5, 5), dict(padding=2, groups=2), True),  # AlexNet's groups
    ((8, 64, 28, 28), (64, 64, 3, 3), dict(padding=1), True),  # dense
    ((0, 64, 28, 28), (64, 64, 3, 3), dict(padding=1), False),  # no positions: nothing to split
])
def test_which_layers_take_the_tiles(x_shape, w_shape, kw, tiles):
    from nbconv.cuda._launch import tile_reduce_launch

    spec = _spec(x_shape, w_shape, **kw)
    cfg = tile_reduce_launch(spec)
    assert (cfg is not None) == tiles
    if cfg is None:
        return
    cfg.key.check()
    tm, tn, tk = cfg.key.tile
    positions = spec.batch * spec.out_size[0] * spec.out_size[1]
    assert cfg.m_tiles * tm >= spec.out_per_group > (cfg.m_tiles - 1) * tm
    assert cfg.grid[0] * tn >= spec.in_per_group * spec.kernel_size[0] * spec.kernel_size[1] > (cfg.grid[0] - 1) * tn
    assert cfg.grid[1] == spec.groups * cfg.m_tiles and cfg.grid[2] == cfg.n_part
    assert cfg.chunk % tk == 0 and (cfg.n_part - 1) * cfg.chunk < positions <= cfg.n_part * cfg.chunk
    assert cfg.block == cfg.key.thread_grid and not cfg.key.wide_index


def test_positions_past_2_to_the_32_are_decoded_in_64_bits():
    from nbconv.cuda._launch import tile_reduce_launch

    assert not tile_reduce_launch(_spec((1, 8, 60000, 60000), (8, 8, 1, 1))).key.wide_index
    assert tile_reduce_launch(_spec((2, 8, 46341, 46341), (8, 8, 1, 1))).key.wide_index  # 4.29e9 positions


# (N, C_in, H, W), (C_out, C_in/groups, kH, kW), conv arguments. Under the simulator a tile is 8
# output channels by 16 columns, 4 positions a step: the cases have a second, partly empty tile of
# rows and of columns, a last chunk that ends inside a step, and several chunks.
CASES = [
    ((2, 6, 7, 6), (24, 3, 3, 2), dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)),
    ((1, 3, 5, 5), (9, 3, 1, 1), dict()),
    ((2, 4, 5, 7), (16, 4, 3, 3), dict(padding=1)),  # 70 positions: 2 chunks of 36 and 34
    ((1, 8, 7, 7), (32, 2, 3, 3), dict(padding="same", groups=4, dilation=2)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=["float32", "float64", "float16"])
@pytest.mark.parametrize("x_shape, w_shape, kw", CASES)
def test_tiles_compute_the_weight_gradient(x_shape, w_shape, kw, dtype, monkeypatch):
    from nbconv.cuda import _launch

    if dtype != np.float32 and SIMULATOR and x_shape != CASES[0][0]:
        pytest.skip("the simulator is slow: float16 and float64 on the first case only")
    ran, launch = [], _launch._reduce_tiles
    monkeypatch.setattr(_launch, "_reduce_tiles", lambda *a: (ran.append(a[2]), launch(*a))[1])
    rng = np.random.default_rng(7)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = np.zeros(w_shape, dtype)
    gy = rng.standard_normal(conv2d_reference(x, w, **kw).shape).astype(dtype)
    got = to_host(nbconv.grad.conv2d_weight(to_backend(x, "cuda"), w_shape, to_backend(gy, "cuda"), **kw))
    assert ran, "the tile kernel did not run"
    if SIMULATOR and x_shape == CASES[2][0]:
        assert ran[0].n_part == 2 and ran[0].chunk == 36  # a last chunk that ends inside a step
    ref = conv2d_weight_reference(x, w_shape, gy, **kw)
    bound = conv2d_weight_reference(np.abs(x.astype(np.float64)), w_shape, np.abs(gy.astype(np.float64)), **kw)
    assert got.dtype == dtype and got.shape == w_shape
    assert_within_bound(got, ref, bound, gy.shape[0] * gy.shape[2] * gy.shape[3], dtype)
    again = to_host(nbconv.grad.conv2d_weight(to_backend(x, "cuda"), w_shape, to_backend(gy, "cuda"), **kw))
    np.testing.assert_array_equal(again, got)  # no atomics: the same bits every run


# ---- the convolution by tiles

def test_conv_key_rejects_tiles_the_threads_cannot_load_evenly():
    from nbconv.cuda._conv_tiles import ConvTileKey

    ConvTileKey((3, 3), (1, 1), (1, 1), (64, 64, 16), (4, 4), False, True).check()
    for tile, micro in [((16, 64, 8), (4, 8)),  # 32 threads: half a row of 64 positions
                        ((64, 64, 2), (4, 4)),  # 256 threads: 4 values of k a position, 2 staged
                        ((8, 16, 32), (2, 4)),  # 16 threads: not one weight column each of 32
                        ((8, 64, 4), (2, 4))]:  # 64 threads: 16 weight rows a pass, 8 in the tile
        with pytest.raises(ValueError, match="whole rows"):
            ConvTileKey((3, 3), (1, 1), (1, 1), tile, micro, False, True).check()


@pytest.mark.parametrize("x_shape, w_shape, kw, op, kind", [
    ((8, 96, 27, 27), (256, 48, 5, 5), dict(padding=2, groups=2), "forward", "ConvTileLaunch"),
    ((8, 96, 27, 27), (256, 48, 5, 5), dict(padding=2, groups=2), "input", "ConvTileLaunch"),  # 48 per group
    ((8, 64, 28, 28), (64, 64, 3, 3), dict(padding=1), "forward", "ConvTileLaunch"),
    ((8, 256, 28, 28), (256, 64, 1, 1), dict(groups=4), "forward", "ConvTileLaunch"),
    ((8, 512, 14, 14), (512, 16, 3, 3), dict(padding=1, groups=32), "forward", "PlaneLaunch"),  # 16 per group
    ((8, 32, 112, 112), (32, 1, 3, 3), dict(padding=1, groups=32), "forward", "PlaneLaunch"),
    ((8, 64, 28, 28), (64, 64, 3, 3), dict(stride=2, padding=1), "input", "phases ConvTileLaunch"),  # by phase
    ((8, 64, 28, 28), (64, 1, 3, 3), dict(stride=2, padding=1, groups=64), "input", "phases PlaneLaunch"),
    ((0, 64, 28, 28), (64, 64, 3, 3), dict(padding=1), "forward", "PlaneLaunch"),  # no positions
])
def test_which_convolutions_take_the_tiles(x_shape, w_shape, kw, op, kind):
    from compile_kernels import DeviceStandIn

    from nbconv._spec import conv2d_input_spec
    from nbconv.cuda._launch import forward_launch_config, phase_launches

    spec = _spec(x_shape, w_shape, **kw)
    if op == "input":
        dt = np.float32
        spec = conv2d_input_spec(x_shape, DeviceStandIn(w_shape, dt), DeviceStandIn(spec.output_shape, dt), **kw)
    if kind.startswith("phases"):
        split = phase_launches(spec)
        assert len(split) == 4 and {type(cfg).__name__ for _, cfg in split} == {kind.split()[1]}
        return
    cfg = forward_launch_config(spec)
    assert type(cfg).__name__ == kind
    if kind != "ConvTileLaunch":
        return
    cfg.key.check()
    assert cfg.key.transposed_weight == (op == "input") and cfg.key.has_bias == spec.has_bias
    tm, tn, _ = cfg.key.tile
    positions = spec.batch * spec.out_size[0] * spec.out_size[1]
    assert cfg.grid[0] * tn >= positions > (cfg.grid[0] - 1) * tn
    assert cfg.m_tiles * tm >= spec.out_per_group > (cfg.m_tiles - 1) * tm and cfg.grid[1] == spec.groups * cfg.m_tiles


@pytest.fixture
def small_layers_take_the_tiles(monkeypatch):
    """Under the simulator the test layers are small: let layers of 8 output channels per group
    take the tiles, with launch configs made afresh, and record the tile launches."""
    from nbconv.cuda import _kernels, _launch

    monkeypatch.setattr(_launch, "CONV_TILES_MIN_OUT", 8)
    monkeypatch.setattr(_launch, "CONV_TILES_MIN_TERMS", 8)
    monkeypatch.setattr(_launch, "PHASES_MIN_MACS", 0)  # and small strided ones the phases
    _launch.forward_launch_config.cache_clear()
    _launch.phase_launches.cache_clear()
    ran, build = [], _kernels.conv_tile_kernel
    monkeypatch.setattr(_kernels, "conv_tile_kernel", lambda key: (ran.append(key), build(key))[1])
    yield ran
    _launch.forward_launch_config.cache_clear()
    _launch.phase_launches.cache_clear()


# (N, C_in, H, W), (C_out, C_in/groups, kH, kW), bias, conv arguments: tiles of 8 output channels
# by 16 positions under the simulator, a last tile of each partly empty, k past K.
CONV_CASES = [
    ((2, 6, 7, 6), (24, 3, 3, 2), True, dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)),
    ((1, 9, 5, 5), (9, 9, 1, 1), False, dict()),
    ((2, 16, 5, 4), (16, 8, 3, 3), True, dict(padding="same", groups=2)),  # input gradient: 8 per group too
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=["float32", "float64", "float16"])
@pytest.mark.parametrize("x_shape, w_shape, bias, kw", CONV_CASES)
def test_tiles_compute_the_convolution(x_shape, w_shape, bias, kw, dtype, small_layers_take_the_tiles):
    if dtype != np.float32 and SIMULATOR and x_shape != CONV_CASES[0][0]:
        pytest.skip("the simulator is slow: float16 and float64 on the first case only")
    rng = np.random.default_rng(3)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype) if bias else None
    got = to_host(nbconv.conv2d(to_backend(x, "cuda"), to_backend(w, "cuda"), to_backend(b, "cuda"), **kw))
    assert small_layers_take_the_tiles and not small_layers_take_the_tiles[0].transposed_weight
    ref = conv2d_reference(x, w, b, **kw)
    bound = conv2d_reference(np.abs(x.astype(np.float64)), np.abs(w.astype(np.float64)),
                             None if b is None else np.abs(b.astype(np.float64)), **kw)
    assert got.dtype == dtype and got.shape == ref.shape
    assert_within_bound(got, ref, bound, w_shape[1] * w_shape[2] * w_shape[3], dtype)


def test_tiles_compute_the_stride_1_input_gradient(small_layers_take_the_tiles):
    x_shape, w_shape, _, kw = CONV_CASES[2]
    rng = np.random.default_rng(4)
    w = rng.standard_normal(w_shape).astype(np.float32)
    gy = rng.standard_normal(conv2d_reference(np.zeros(x_shape, np.float32), w, **kw).shape).astype(np.float32)
    got = to_host(nbconv.grad.conv2d_input(x_shape, to_backend(w, "cuda"), to_backend(gy, "cuda"), **kw))
    assert [k.transposed_weight for k in small_layers_take_the_tiles] == [True]
    ref = conv2d_input_reference(x_shape, w, gy, **kw)
    bound = conv2d_input_reference(x_shape, np.abs(w.astype(np.float64)), np.abs(gy.astype(np.float64)), **kw)
    assert_within_bound(got, ref, bound, w_shape[0] // kw["groups"] * w_shape[2] * w_shape[3], np.float32)


@pytest.mark.parametrize("kw", [dict(stride=2, padding=1, output_padding=1, groups=2),
                                dict(stride=(2, 3), padding=(0, 2), dilation=(1, 2), groups=1)])
def test_tiles_compute_the_phases_of_a_strided_transposed_convolution(kw, small_layers_take_the_tiles):
    """Each output phase of a strided transposed convolution with many channels per group is a
    stride-1 convolution by tiles, on strided views of the weight and the output."""
    from nbconv._spec import conv_transpose2d_spec
    from nbconv.cuda._launch import ConvTileLaunch, phase_launches

    rng = np.random.default_rng(6)
    c_in = 8 * kw["groups"]  # 8 input channels per group: a phase with one tap still has 8 terms
    x = rng.standard_normal((2, c_in, 3, 4)).astype(np.float32)
    w = rng.standard_normal((c_in, 16 // kw["groups"], 3, 3)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    got = to_host(nbconv.conv_transpose2d(to_backend(x, "cuda"), to_backend(w, "cuda"), to_backend(b, "cuda"), **kw))
    spec = conv_transpose2d_spec(x, w, b, **kw)
    assert all(isinstance(cfg, ConvTileLaunch) for _, cfg in phase_launches(spec))
    assert len(small_layers_take_the_tiles) == len(phase_launches(spec)) and all(
        k.transposed_weight for k in small_layers_take_the_tiles)
    ref = conv_transpose2d_reference(x, w, b, **kw)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


# ---- the pair kernel's strips (nbconv/cuda/_reduce.py): depthwise weight gradients

@pytest.mark.parametrize("strip", [1, 3, 4])
@pytest.mark.parametrize("x_shape, w_shape, kw", [
    ((1, 2, 5, 11), (4, 1, 3, 3), dict(padding=1, groups=2)),  # x2 multiplier; 11 = 2 strips of 4 and 3
    ((1, 2, 9, 10), (2, 1, 3, 2), dict(stride=(2, 3), dilation=(2, 1), padding=(2, 1), groups=2)),
])
def test_pair_kernel_strips_compute_the_weight_and_bias_gradients(x_shape, w_shape, kw, strip, monkeypatch):
    from nbconv.cuda import _launch

    monkeypatch.setattr(_launch, "REDUCE_STRIP", strip)
    _launch.reduce_launch.cache_clear()  # launches are cached per spec: made afresh with this strip
    monkeypatch.setattr(_launch, "reduce_launch", _launch.reduce_launch.__wrapped__)
    rng = np.random.default_rng(5)
    x = rng.standard_normal(x_shape).astype(np.float32)
    gy = rng.standard_normal(conv2d_reference(x, np.zeros(w_shape, np.float32), **kw).shape).astype(np.float32)
    got = to_host(nbconv.grad.conv2d_weight(to_backend(x, "cuda"), w_shape, to_backend(gy, "cuda"), **kw))
    ref = conv2d_weight_reference(x, w_shape, gy, **kw)
    bound = conv2d_weight_reference(np.abs(x.astype(np.float64)), w_shape, np.abs(gy.astype(np.float64)), **kw)
    assert_within_bound(got, ref, bound, gy.shape[0] * gy.shape[2] * gy.shape[3], np.float32)
    bias = to_host(nbconv.grad.conv2d_bias(to_backend(gy, "cuda")))
    np.testing.assert_allclose(bias, gy.astype(np.float64).sum(axis=(0, 2, 3)), rtol=1e-5, atol=1e-5)


def test_pair_kernel_strips_follow_the_registers():
    from nbconv.cuda._launch import REDUCE_STRIP, choose_reduce_strip

    assert choose_reduce_strip((3, 3), (1, 1), False, False) == REDUCE_STRIP
    assert choose_reduce_strip((7, 7), (2, 1), False, False) == REDUCE_STRIP
    assert choose_reduce_strip((5, 5), (1, 1), True, False) == REDUCE_STRIP
    assert choose_reduce_strip((7, 7), (1, 1), True, False) == 1  # 49 float64 sums: no room for a strip
    assert choose_reduce_strip((3, 3), (1, 2), False, False) == 1  # half the strip's row unread
    assert choose_reduce_strip((7, 9), (1, 1), False, False) == 1
    assert choose_reduce_strip((7, 7), (1, 3), True, True) == REDUCE_STRIP  # the bias gradient: one sum


# ---- the tile shapes that docs/plane_sweep.py --tiles times on a GPU


@pytest.fixture
def fresh_tiles():
    """Kernels and launch configs built afresh before and after a test that patches the tile
    constants (request it after ``monkeypatch``: its caches are emptied before the patches are
    undone)."""
    from nbconv.cuda import _launch

    _launch.forget_kernels()
    yield
    _launch.forget_kernels()


def _patch_tiles(monkeypatch, values: dict) -> None:
    from nbconv.cuda import _launch, _tiles

    for name, value in values.items():
        monkeypatch.setattr(_tiles if hasattr(_tiles, name) else _launch, name, value)
    _launch.forget_kernels()


def test_the_sweeps_tile_variants_make_valid_launches(monkeypatch, fresh_tiles):
    """Every tile variant of ``docs/plane_sweep.py --tiles`` gives each of its layers (batch 32)
    a forward and a weight gradient by tiles with the variant's shapes, whose threads split both
    slices evenly."""
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "docs"))
    import plane_sweep

    from nbconv._shapes import SHAPES_BY_NAME
    from nbconv.cuda import _launch

    for variant, values in plane_sweep.TILE_VARIANTS:
        with monkeypatch.context() as m:
            _patch_tiles(m, values)
            for name in plane_sweep.TILE_SHAPES.split(","):
                shape = SHAPES_BY_NAME[name]
                spec = _spec(shape.input_shape(32), shape.weight_shape(), **shape.conv_args())
                for cfg in (_launch.forward_launch_config(spec), _launch.tile_reduce_launch(spec)):
                    assert isinstance(cfg, (_launch.ConvTileLaunch, _launch.TileLaunch)), (variant, name)
                    cfg.key.check()
                    assert cfg.key.micro == _launch.TILES_MICRO and cfg.key.tile[1] == _launch.TILES_COLUMNS
                    assert cfg.key.tile[0] <= _launch.TILES_ROWS[1] and cfg.key.tile[2] <= _launch.TILES_MAX_STEP
        _launch.forget_kernels()


def test_tiles_with_unsigned_product_indices(monkeypatch, small_layers_take_the_tiles, fresh_tiles):
    """The products indexed unsigned (``_tiles.UNSIGNED_PRODUCT_INDICES``, a variant the sweep
    times) with 4 x 4 micro-tiles: the same convolution and weight gradient."""
    _patch_tiles(monkeypatch, {"UNSIGNED_PRODUCT_INDICES": True, "TILES_ROWS": (8, 16), "TILES_COLUMNS": 16,
                               "TILES_MICRO": (4, 4), "TILES_MAX_STEP": 4})
    rng = np.random.default_rng(8)
    x_shape, w_shape, kw = (1, 4, 5, 6), (32, 2, 3, 3), dict(padding=1, groups=2)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    got = to_host(nbconv.conv2d(to_backend(x, "cuda"), to_backend(w, "cuda"), **kw))
    assert small_layers_take_the_tiles and small_layers_take_the_tiles[-1].micro == (4, 4)
    ref = conv2d_reference(x, w, **kw)
    bound = conv2d_reference(np.abs(x.astype(np.float64)), np.abs(w.astype(np.float64)), **kw)
    assert_within_bound(got, ref, bound, 2 * 9, np.float32)
    gy = rng.standard_normal(ref.shape).astype(np.float32)
    spec = _spec(x_shape, w_shape, **kw)
    from nbconv.cuda import _launch

    assert _launch.tile_reduce_launch(spec).key.micro == (4, 4)
    got = to_host(nbconv.grad.conv2d_weight(to_backend(x, "cuda"), w_shape, to_backend(gy, "cuda"), **kw))
    ref = conv2d_weight_reference(x, w_shape, gy, **kw)
    bound = conv2d_weight_reference(np.abs(x.astype(np.float64)), w_shape, np.abs(gy.astype(np.float64)), **kw)
    assert_within_bound(got, ref, bound, 5 * 6, np.float32)
