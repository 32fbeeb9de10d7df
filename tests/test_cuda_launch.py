"""Launch arithmetic of the CUDA kernels: plain functions, no GPU needed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nbconv._spec import conv2d_spec

pytestmark = pytest.mark.cuda


@pytest.fixture
def fresh_launch_cache():
    """Launch configs and kernels are cached: a test that patches how they are made starts and
    ends with empty caches, so no patched config or kernel outlives it."""
    from nbconv.cuda import _launch

    _launch.forget_kernels()
    yield
    _launch.forget_kernels()


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
    from nbconv.cuda._launch import tile_launch_config

    spec = spec_for(x_shape, w_shape, **kw)
    cfg = tile_launch_config(spec)
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
    from nbconv.cuda._launch import (
        SHARED_LIMIT_BYTES,
        forward_launch_config,
        tile_launch_config,
    )

    small = tile_launch_config(spec_for((1, 2, 64, 64), (2, 2, 3, 3)))
    assert small.key.stage_input and small.key.shared_bytes <= SHARED_LIMIT_BYTES
    huge = forward_launch_config(spec_for((1, 2, 200, 200), (2, 2, 31, 31), np.float64, dilation=4))
    assert not huge.key.stage_input


@pytest.mark.parametrize("w_shape, groups", [((2, 1, 31, 31), 2), ((2, 2, 31, 31), 1)])
def test_huge_dilated_kernel_falls_back_from_the_plane_kernel(w_shape, groups):
    from nbconv.cuda._launch import LaunchConfig, PlaneLaunch, forward_launch_config

    small = forward_launch_config(spec_for((1, 2, 64, 64), w_shape[:2] + (3, 3), groups=groups))
    assert isinstance(small, PlaneLaunch)
    huge = forward_launch_config(spec_for((1, 2, 200, 200), w_shape, np.float64, dilation=4, groups=groups))
    assert isinstance(huge, LaunchConfig) and not huge.key.stage_input


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_huge_dilated_kernel_is_correct(dtype, monkeypatch, fresh_launch_cache):
    """The tiled kernel's global-read variant computes the same numbers (runs on the simulator
    too); the plane kernel, which would take this problem in float32, is turned off."""
    from cases import to_backend, to_host
    from reference import assert_conv_close

    import nbconv
    from nbconv.cuda import _launch
    from nbconv.cuda._launch import forward_launch_config

    monkeypatch.setattr(_launch, "plane_launch_config", lambda spec, threads=0: None)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 2, 50, 130)).astype(dtype)  # 2 x 20 outputs (the simulator is slow)
    w = rng.standard_normal((2, 2, 5, 31)).astype(dtype)
    args = dict(dilation=(12, 7), padding=(0, 50))
    assert not forward_launch_config(spec_for(x.shape, w.shape, dtype, **args)).key.stage_input
    got = nbconv.conv2d(to_backend(x, "cuda"), to_backend(w, "cuda"), **args)
    assert_conv_close(to_host(got), x, w, **args)


@pytest.mark.parametrize(
    "out_size, threads, expected",
    [
        ((112, 112), 256, ((16, 16, 1), 4)),  # 16 columns divide 112; 16 strips of 4 rows
        ((56, 56), 256, ((8, 16, 2), 4)),  # only 8 divides 56 (16 and 32 pad 8 columns)
        ((7, 7), 256, ((8, 2, 16), 4)),  # a small plane: 16 planes per block
        ((28, 28), 256, ((32, 8, 1), 4)),  # every width pads 4: the widest
        ((112, 112), 128, ((16, 8, 1), 4)),  # the default on a GPU: half the strips
        ((1, 5), 64, ((8, 1, 8), 1)),  # one row: one output per thread
    ],
)
def test_choose_plane_block(out_size, threads, expected):
    from nbconv.cuda._launch import choose_plane_block

    assert choose_plane_block(out_size, threads) == expected


def test_plane_oc_block_fits_the_registers():
    from nbconv.cuda._launch import PLANE_MAX_REGISTERS, choose_plane_oc_block
    from nbconv.cuda._planes import registers_needed

    for w_shape, dtype, expected in [((256, 48, 5, 5), np.float32, 1), ((128, 4, 3, 3), np.float32, 2),
                                     ((64, 1, 7, 7), np.float32, 1), ((128, 4, 3, 3), np.float64, 1),
                                     ((96, 1, 3, 3), np.float32, 1), ((192, 1, 3, 3), np.float32, 2)]:
        groups = 2 if w_shape[1] == 48 else 32 if w_shape[1] == 4 else w_shape[0] // (1 + (w_shape[0] == 192))
        c_in = w_shape[1] * groups
        spec = spec_for((2, c_in, 20, 20), w_shape, dtype, groups=groups)
        ocb = choose_plane_oc_block(spec, 4)
        assert ocb == expected, (w_shape, dtype)
        def fits(o, spec=spec, dtype=dtype):
            return registers_needed(spec.kernel_size, spec.stride, spec.dilation, 4, o,
                                    dtype == np.float64) <= PLANE_MAX_REGISTERS

        assert ocb == 1 or fits(ocb)
        assert ocb == min(4, w_shape[0] // groups) or not fits(2 * ocb)  # the largest that fits


PLANE_SHAPES = [
    ((32, 32, 112, 112), (32, 1, 3, 3), dict(padding=1, groups=32)),
    ((32, 96, 112, 112), (96, 1, 3, 3), dict(stride=2, padding=1, groups=96)),
    ((32, 960, 7, 7), (960, 1, 3, 3), dict(padding=1, groups=960)),
    ((32, 128, 56, 56), (128, 1, 7, 7), dict(padding=3, groups=128)),
    ((8, 16, 30, 30), (48, 1, 5, 5), dict(dilation=2, padding="same", groups=16)),
    ((4096, 64, 9, 9), (64, 1, 3, 3), dict(groups=64)),  # more plane blocks than grid.z takes
    ((32, 128, 56, 56), (128, 4, 3, 3), dict(padding=1, groups=32)),  # ResNeXt g32
    ((32, 96, 27, 27), (256, 48, 5, 5), dict(padding=2, groups=2)),  # AlexNet g2
    ((2, 6, 20, 33), (9, 2, 3, 2), dict(stride=(2, 3), groups=3)),  # 3 outputs per group
]


@pytest.mark.parametrize("x_shape, w_shape, kw", PLANE_SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_plane_grid_covers_every_output_and_fits(x_shape, w_shape, kw, dtype):
    from nbconv.cuda._launch import (
        MAX_GRID_YZ,
        SHARED_LIMIT_BYTES,
        PlaneLaunch,
        plane_launch_config,
    )
    from nbconv.cuda._planes import REGISTERS_PER_SM, launch_bounds

    spec = spec_for(x_shape, w_shape, dtype, **kw)
    cfg = plane_launch_config(spec)  # AlexNet's layer takes the tiles, the plane kernel where they do not apply
    assert isinstance(cfg, PlaneLaunch)
    assert cfg.n_oc_blocks * cfg.key.oc_block >= spec.out_per_group > (cfg.n_oc_blocks - 1) * cfg.key.oc_block
    key = cfg.key
    (th, tw), (bx, by, bz) = key.out_tile, key.block
    assert cfg.block == key.block and (th, tw) == (by * key.rows_per_thread, bx)
    # tiles along W and H: enough, and none wholly outside the output
    for tiles, tile, size in ((cfg.grid[0], tw, spec.out_size[1]), (cfg.grid[1], th, spec.out_size[0])):
        assert tiles * tile >= size > (tiles - 1) * tile
    planes = spec.batch * spec.groups * cfg.n_oc_blocks
    assert cfg.planes == planes and cfg.grid[2] == min(MAX_GRID_YZ, math.ceil(planes / bz))
    assert key.threads <= 1024 and key.shared_bytes <= SHARED_LIMIT_BYTES
    # the halo tile holds every input a strip reads: the last output row/column's last tap
    rows, cols = key.halo_tile
    assert (th - 1) * spec.stride[0] + (spec.kernel_size[0] - 1) * spec.dilation[0] == rows - 1
    assert (tw - 1) * spec.stride[1] + (spec.kernel_size[1] - 1) * spec.dilation[1] == cols - 1
    assert key.shared_columns % spec.stride[1] == 0 and key.shared_columns >= cols
    threads, blocks = launch_bounds(key)
    assert threads == key.threads and blocks >= 1
    assert REGISTERS_PER_SM // (threads * blocks) >= 64  # room for the weights of a 3x3 at least


def test_only_strided_transposed_convolutions_skip_the_plane_kernel():
    from nbconv._spec import conv2d_input_spec
    from nbconv.cuda._launch import plane_launch_config

    assert plane_launch_config(spec_for((2, 4, 9, 9), (4, 1, 3, 3), groups=4)) is not None
    assert plane_launch_config(spec_for((2, 4, 9, 9), (8, 1, 3, 3), groups=4)) is not None  # multiplier 2
    assert plane_launch_config(spec_for((2, 4, 9, 9), (4, 2, 3, 3), groups=2)) is not None  # 2 inputs per group
    from numba import cuda

    w = cuda.device_array((4, 1, 3, 3), np.float32)
    gy = cuda.device_array((2, 4, 4, 4), np.float32)
    assert plane_launch_config(conv2d_input_spec((2, 4, 9, 9), w, gy, stride=2, groups=4)) is None
    gy = cuda.device_array((2, 4, 7, 7), np.float32)
    stride_1 = plane_launch_config(conv2d_input_spec((2, 4, 9, 9), w, gy, groups=4))
    assert stride_1 is not None and stride_1.key.transposed_weight  # the adjoint of a stride-1 conv


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_plane_grid_stride_loop_over_plane_blocks(monkeypatch, dtype, fresh_launch_cache):
    """With grid.z capped below the plane blocks (a huge batch), each block loops over several."""
    from cases import to_backend, to_host
    from reference import assert_conv_close

    import nbconv
    from nbconv.cuda import _launch

    monkeypatch.setattr(_launch, "MAX_GRID_YZ", 2)
    rng = np.random.default_rng(5)
    # 35 planes: more than two blocks of them on a GPU (16 a block) and under the simulator (4)
    x = rng.standard_normal((7, 5, 6, 7)).astype(dtype)
    w = rng.standard_normal((10, 1, 3, 3)).astype(dtype)
    b = rng.standard_normal(10).astype(dtype)
    args = dict(padding=1, groups=5)
    spec = spec_for(x.shape, w.shape, dtype, **args)
    cfg = _launch.forward_launch_config(spec)
    assert isinstance(cfg, _launch.PlaneLaunch) and cfg.grid[2] == 2
    assert math.ceil(cfg.planes / cfg.key.block[2]) > 2, "the loop must run more than once"
    got = nbconv.conv2d(to_backend(x, "cuda"), to_backend(w, "cuda"), to_backend(b, "cuda"), **args)
    assert_conv_close(to_host(got), x, w, b, **args)


def _transposed_1d(x, w, out_len, pad, dilation, stride):
    """out[o] = sum_k xd[o - pad + k * dilation] * w[K - 1 - k], xd = x dilated by stride."""
    xd = np.zeros((len(x) - 1) * stride + 1)
    xd[::stride] = x
    return np.array([sum(xd[o - pad + k * dilation] * w[len(w) - 1 - k] for k in range(len(w))
                         if 0 <= o - pad + k * dilation < len(xd)) for o in range(out_len)])


def test_axis_phases_reproduce_the_dilated_convolution():
    """Every phase split of one axis (kernel, dilation, stride, padding, length) sums exactly the
    taps the dilated form sums; splits that cannot apply say so."""
    from nbconv.cuda._phases import axis_phases

    rng = np.random.default_rng(0)
    split = 0
    for k, d, s, pad, n in np.ndindex(5, 3, 2, 8, 5):
        k, d, s, pad, n = k + 1, d + 1, s + 2, pad - 3, n + 1
        out_len = (n - 1) * s + 1 + 2 * pad - d * (k - 1)
        if out_len <= 0:
            continue
        x, w = rng.standard_normal(n), rng.standard_normal(k)
        phases = axis_phases(out_len, k, pad, d, s)
        if phases is None:  # some phase meets no tap: the caller keeps the dilated form
            assert any(all((p - pad + kh * d) % s for kh in range(k)) for p in range(min(s, out_len)))
            continue
        split += 1
        got = np.zeros(out_len)
        for ph in phases:
            sub = w[ph.weight_start::ph.weight_step][:ph.taps]
            assert len(sub) == ph.taps
            for m in range(ph.out_len):
                got[ph.phase + m * s] = sum(x[m - ph.pad + t * ph.dilation] * sub[ph.taps - 1 - t]
                                            for t in range(ph.taps) if 0 <= m - ph.pad + t * ph.dilation < n)
        np.testing.assert_allclose(got, _transposed_1d(x, w, out_len, pad, d, s), atol=1e-12)
    assert split > 200


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("x_shape, w_shape, kw", [
    ((2, 4, 9, 9), (4, 1, 3, 3), dict(stride=2, padding=1, groups=4)),  # MobileNet's stride-2 depthwise
    ((1, 6, 11, 10), (6, 2, 4, 3), dict(stride=(2, 3), padding=(1, 0), groups=3)),
    ((1, 3, 7, 8), (6, 3, 3, 3), dict(stride=3, padding=2)),  # 3x3 stride 3: one tap per phase
])
def test_strided_input_gradient_runs_one_stride_1_launch_per_phase(x_shape, w_shape, kw, dtype, monkeypatch):
    from cases import to_backend, to_host
    from numba import cuda
    from reference import conv2d_input_reference, conv2d_reference

    import nbconv
    from nbconv._spec import conv2d_input_spec
    from nbconv.cuda import _launch
    from nbconv.cuda._launch import PlaneLaunch, launch_configs, phase_launches

    monkeypatch.setattr(_launch, "PHASES_MIN_MACS", 0)  # small layers too (on a GPU: the phases from 2**20)

    rng = np.random.default_rng(1)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    gy = rng.standard_normal(conv2d_reference(x, w, **kw).shape).astype(dtype)
    spec = conv2d_input_spec(x_shape, cuda.device_array(w_shape, dtype), cuda.device_array(gy.shape, dtype), **kw)
    split = phase_launches(spec)
    assert split is not None and len(split) == spec.lhs_dilation[0] * spec.lhs_dilation[1]
    assert all(isinstance(c, PlaneLaunch) and c.key.kernel_size <= spec.kernel_size for c in launch_configs(spec))
    got = to_host(nbconv.grad.conv2d_input(x_shape, to_backend(w, "cuda"), to_backend(gy, "cuda"), **kw))
    want = conv2d_input_reference(x_shape, w.astype(np.float64), gy.astype(np.float64), **kw)
    tol = 1e-4 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("op", ["transposed", "input"])
def test_a_tiny_strided_transposed_convolution_is_one_launch(op, monkeypatch):
    """Below TINY_TRANSPOSED_MACS multiply-adds (zeros included) a strided transposed convolution
    or input gradient is one launch of the general kernel over the dilated input, not one per
    phase; the same results. From there on, the phases."""
    from cases import to_backend, to_host
    from compile_kernels import DeviceStandIn
    from reference import conv2d_input_reference, conv_transpose2d_reference

    import nbconv
    from nbconv._spec import conv2d_input_spec, conv_transpose2d_spec
    from nbconv.cuda import _kernels, _launch

    monkeypatch.setattr(_launch, "PHASES_MIN_MACS", _launch.TINY_TRANSPOSED_MACS)
    ran, build = [], _kernels.kernel_of
    monkeypatch.setattr(_kernels, "kernel_of", lambda key: (ran.append(key), build(key))[1])
    monkeypatch.setattr(_launch, "kernel_of", _kernels.kernel_of)
    rng = np.random.default_rng(5)
    kw = dict(stride=2, padding=1, groups=4)
    w = rng.standard_normal((8, 2, 3, 3)).astype(np.float32)
    if op == "transposed":
        x = rng.standard_normal((2, 8, 4, 5)).astype(np.float32)
        b = rng.standard_normal(8).astype(np.float32)
        got = to_host(nbconv.conv_transpose2d(to_backend(x, "cuda"), to_backend(w, "cuda"), to_backend(b, "cuda"),
                                              output_padding=1, **kw))
        want = conv_transpose2d_reference(x, w, b, output_padding=1, **kw)
        spec = conv_transpose2d_spec(x, w, b, output_padding=1, **kw)
    else:
        x_shape, gy = (2, 8, 9, 9), rng.standard_normal((2, 8, 5, 5)).astype(np.float32)
        got = to_host(nbconv.grad.conv2d_input(x_shape, to_backend(w, "cuda"), to_backend(gy, "cuda"), **kw))
        want = conv2d_input_reference(x_shape, w, gy, **kw)
        spec = conv2d_input_spec(x_shape, w, gy, **kw)
    assert _launch.phase_launches(spec) is not None and _launch.strided_launches(spec) is None
    assert len(ran) == 1 and ran[0].lhs_dilation == (2, 2)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # the same layer with a batch whose walk makes TINY_TRANSPOSED_MACS or more: by phases
    n = -(-_launch.TINY_TRANSPOSED_MACS // _launch.dilated_macs(spec) * spec.batch)
    shape = (n,) + spec.output_shape[1:]
    big = conv2d_input_spec(shape, DeviceStandIn(w.shape, np.float32),
                            DeviceStandIn((n,) + spec.input_shape[1:], np.float32), **kw)
    assert _launch.dilated_macs(big) >= _launch.TINY_TRANSPOSED_MACS
    assert len(_launch.launch_configs(big)) == 4 and _launch.strided_launches(big) == _launch.phase_launches(big)


def test_reductions_decode_positions_in_32_bits_unless_they_reach_2_to_the_32():
    from compile_kernels import DeviceStandIn

    from nbconv._spec import conv2d_spec
    from nbconv.cuda._launch import REDUCE_THREADS, reduce_key

    def key(n, hw):
        x = DeviceStandIn((n, 2, hw, hw), np.float32)
        return reduce_key(conv2d_spec(x, DeviceStandIn((2, 1, 1, 1), np.float32), groups=2), bias_only=False)

    assert not key(4, 64).wide_index
    hw = 65536  # 65536 x 65536 positions per image
    assert not key(1, hw - 1).wide_index and (hw - 1) ** 2 + REDUCE_THREADS < 2**32
    assert key(1, hw).wide_index  # exactly 2**32 positions


@pytest.mark.parametrize("chunk, clamped", [(1, True), (3, False)])
def test_plane_staging_variants(monkeypatch, chunk, clamped, fresh_launch_cache):
    """The plane kernel's staging variants that docs/plane_sweep.py times on a GPU (loads a thread
    issues at once; clamped addresses or loads under a bounds test) compute the same convolution
    (the kernels are built with the patched constants: the fixture empties the caches before the
    test and again before the patches are undone)."""
    from cases import to_backend, to_host
    from reference import assert_conv_close

    import nbconv
    from nbconv.cuda import _launch, _planes

    monkeypatch.setattr(_planes, "STAGE_CHUNK", chunk)
    monkeypatch.setattr(_planes, "STAGE_CLAMPED", clamped)
    rng = np.random.default_rng(7)
    # 8 x 8 outputs: every row and column of the staged halo feeds one (a value missing from any
    # chunk would show)
    x = rng.standard_normal((2, 3, 13, 9)).astype(np.float32)
    w = rng.standard_normal((6, 1, 3, 4)).astype(np.float32)
    args = dict(padding=(2, 1), stride=(2, 1), groups=3)
    spec = spec_for(x.shape, w.shape, np.float32, **args)
    assert isinstance(_launch.forward_launch_config(spec), _launch.PlaneLaunch)
    got = nbconv.conv2d(to_backend(x, "cuda"), to_backend(w, "cuda"), None, **args)
    assert_conv_close(to_host(got), x, w, None, **args)
