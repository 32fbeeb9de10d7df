"""Launch arithmetic (plain, unit-tested functions) and the launchers of the CUDA kernels."""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import numpy as np
from numba import config

from .._arrays import CUPY
from . import _raw
from ._arrays import as_batched_device_array, device_scratch, launch_stream, one_chunk_view
from ._conv_tiles import ConvTileKey
from ._forward import ForwardKey
from ._kernels import FinishKey, kernel_of
from ._phases import Phase, phases
from ._planes import MAX_REGISTERS, PlaneKey, registers_needed
from ._reduce import ReduceKey
from ._wgrad_tiles import TileReduceKey

#: Static shared memory a block may use without opting in (all GPUs since Kepler).
SHARED_LIMIT_BYTES = 48 * 1024
MAX_OC_BLOCK = 4
#: Threads per block of the gradient reductions, and the blocks they aim for (several per SM).
#: Under Numba's simulator (every thread a Python thread) the blocks are made smaller.
REDUCE_THREADS = 32 if config.ENABLE_CUDASIM else 256
REDUCE_TARGET_BLOCKS = 1024
#: Outputs of a row a thread of the pair reduction takes at a time (see ``ReduceKey.strip``).
REDUCE_STRIP = 4
#: Threads per block of the plane kernel (fewer under the simulator, where each is a thread):
#: 128 ran the depthwise standard shapes 4-13% faster than 256 and 1.3-1.5x faster than 512 on
#: an H200 (``docs/plane_sweep.py``).
PLANE_THREADS = 64 if config.ENABLE_CUDASIM else 128
#: Outputs per thread down a column in the plane kernel (the reuse of each staged load).
PLANE_ROWS = 4
#: Registers per thread the plane kernel's output-channel block may need (2 blocks of 256
#: threads per SM); a larger block is halved.
PLANE_MAX_REGISTERS = 128
#: The largest grid.y and grid.z CUDA allows; plane blocks beyond it are looped over.
MAX_GRID_YZ = 65535
#: The weight gradient by tiles (``_wgrad_tiles``) from this many output channels per group; a
#: tile's rows are the group's output channels (16-64, a power of 2), its columns 64 (input
#: channel, tap) pairs, 4 x 4 outputs a thread (64-256 threads), and TK positions a step: at most
#: 16, and few enough that each thread loads at most 8 columns of a step (its column decode is
#: kept in registers: 16 took ResNeXt's 16-row tiles to 166 registers). Fewer channels
#: (depthwise, ResNeXt's 4 per group) keep the pair kernel: a tile's rows would be mostly empty.
#: Under the simulator the tiles are small (8 x 16, 16 threads).
TILES_MIN_OUT = 8
TILES_ROWS = (8, 8) if config.ENABLE_CUDASIM else (16, 64)  # (fewest, most) rows of a tile
TILES_COLUMNS, TILES_MAX_STEP, TILES_MICRO = (16, 4, (2, 4)) if config.ENABLE_CUDASIM else (64, 16, (4, 4))
#: Steps of TK positions a tile block adds at least (fewer blocks, larger chunks, beyond that).
TILES_MIN_STEPS = 8
#: The convolution by tiles (``_conv_tiles``, the same tile shapes with positions for columns)
#: from this many output channels per group and (input channel, tap) terms per output: where
#: the plane kernel, at most 4 output channels a thread, would stage each input tile over and
#: over (AlexNet's 128 per group: 32 times; dense layers). Fewer keep the plane kernel.
CONV_TILES_MIN_OUT = 32
CONV_TILES_MIN_TERMS = 32
#: A strided transposed convolution (or input gradient) is one launch per output phase (no zero
#: multiplied) from this many multiply-adds of its walk over the dilated input; below it, one
#: launch of the general kernel, which multiplies the zeros (stride**2 times the work: 4x at
#: stride 2, 2 MFLOP at most, microseconds on a GPU): each launch costs the host several
#: microseconds (``docs/host_cost.py``), and a tiny layer's four launches cost more than its
#: work. Under the simulator the tests' small layers take the phases (0: always).
TINY_TRANSPOSED_MACS = 2**20
PHASES_MIN_MACS = 0 if config.ENABLE_CUDASIM else TINY_TRANSPOSED_MACS


class LaunchConfig(NamedTuple):
    key: ForwardKey
    grid: int  # 1-D grid: blocks = N * groups * oc_blocks * tiles_h * tiles_w
    block: tuple[int, int]  # (blockDim.x, blockDim.y) = (tile_w, tile_h)
    n_oc_blocks: int
    tiles: tuple[int, int]  # (tiles_h, tiles_w)


def choose_tile(out_size: tuple[int, int]) -> tuple[int, int]:
    """(tile_h, tile_w): 16 x 16 output pixels, or 8 along a side that is at most 8 long."""
    return tuple(8 if s <= 8 else 16 for s in out_size)  # type: ignore[return-value]


def choose_oc_block(out_per_group: int) -> int:
    """Output channels a thread accumulates: the group's count rounded up to a power of 2, <= 4."""
    return min(MAX_OC_BLOCK, 1 << (out_per_group - 1).bit_length())


class PlaneLaunch(NamedTuple):
    key: PlaneKey
    grid: tuple[int, int, int]  # (tiles along W, tiles along H, plane blocks <= MAX_GRID_YZ)
    block: tuple[int, int, int]  # key.block
    n_oc_blocks: int  # output-channel blocks per group
    planes: int  # N * groups * n_oc_blocks


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def choose_plane_block(out_size: tuple[int, int], threads: int | None = None,
                       rows: int | None = None) -> tuple[tuple[int, int, int], int]:
    """((BX, BY, BZ), R) of the plane kernel for an output plane of ``out_size``.

    BX (columns, a warp's width at most) is the one of 32, 16, 8 that pads the width least
    (ties: the widest); R outputs per thread down a column (fewer for short planes); BY strips
    cover the height up to the thread budget; BZ planes share a block when one plane is small.
    """
    threads = PLANE_THREADS if threads is None else threads  # (read per call: docs/plane_sweep.py varies them)
    rows = PLANE_ROWS if rows is None else rows
    out_h, out_w = out_size
    bx = min((32, 16, 8), key=lambda b: (math.ceil(out_w / b) * b - out_w, -b))
    bx = min(bx, threads)
    r = min(rows, _pow2_at_least(out_h))
    by = max(1, min(threads // bx, _pow2_at_least(math.ceil(out_h / r))))
    bz = max(1, threads // (bx * by))
    return (bx, by, bz), r


def choose_plane_oc_block(spec, rows: int) -> int:
    """Output channels per thread in the plane kernel: :func:`choose_oc_block`, halved while a
    thread's weights and accumulators would not fit in PLANE_MAX_REGISTERS (a 7x7 kernel: 1)."""
    ocb = choose_oc_block(spec.out_per_group)
    acc_double = spec.dtype == np.float64
    while ocb > 1 and registers_needed(spec.kernel_size, spec.stride, spec.dilation, rows, ocb, acc_double,
                                       spec.dtype == np.float16, spec.transposed_weight) > PLANE_MAX_REGISTERS:
        ocb //= 2
    return ocb


def plane_launch_config(spec, threads: int | None = None) -> PlaneLaunch | None:
    """The plane kernel's key and grid for ``spec``, or None when it does not apply (a
    transposed convolution with a stride, whose zeros between input pixels it does not skip,
    a kernel whose weights do not fit in registers, or a halo tile too large for shared
    memory). A stride-1 transposed convolution (the input
    gradient of a stride-1 layer) is a convolution with the weight flipped."""
    if spec.lhs_dilation != (1, 1):
        return None
    (bx, by, bz), r = choose_plane_block(spec.out_size, threads)
    ocb = choose_plane_oc_block(spec, r)
    if registers_needed(spec.kernel_size, spec.stride, spec.dilation, r, ocb, spec.dtype == np.float64,
                        spec.dtype == np.float16, spec.transposed_weight) > MAX_REGISTERS:
        return None  # a huge kernel's weights do not fit in registers
    key = PlaneKey(spec.kernel_size, spec.stride, spec.dilation, (bx, by, bz), r, ocb,
                   spec.dtype == np.float64, spec.has_bias, spec.transposed_weight, spec.dtype == np.float16)
    while key.shared_bytes > SHARED_LIMIT_BYTES and key.block != (bx, 1, 1):
        bx, by, bz = key.block  # halve the planes, then the strips, until it fits
        key = key._replace(block=(bx, by, bz // 2) if bz > 1 else (bx, by // 2, 1))
    if key.shared_bytes > SHARED_LIMIT_BYTES:
        return None
    th, tw = key.out_tile
    n_oc_blocks = math.ceil(spec.out_per_group / ocb)
    planes = spec.batch * spec.groups * n_oc_blocks
    plane_blocks = min(MAX_GRID_YZ, max(1, math.ceil(planes / key.block[2])))
    tiles = (math.ceil(spec.out_size[1] / tw), math.ceil(spec.out_size[0] / th))
    if tiles[1] > MAX_GRID_YZ or planes >= 2**31:  # the kernel decodes planes in 32 bits
        return None
    return PlaneLaunch(key, (tiles[0], tiles[1], plane_blocks), key.block, n_oc_blocks, planes)


class ConvTileLaunch(NamedTuple):
    key: ConvTileKey
    grid: tuple[int, int]  # (position tiles, groups * row tiles)
    block: tuple[int, int]  # key.thread_grid
    m_tiles: int  # row (output-channel) tiles per group


def tile_step(tile_rows: int, columns: int | None = None, micro: tuple[int, int] | None = None,
              most: int | None = None) -> int:
    """TK of a tile kernel: at most ``most`` (TILES_MAX_STEP), and few enough that a thread loads
    at most 8 values of the slice of ``columns`` (TILES_COLUMNS) per step."""
    columns = TILES_COLUMNS if columns is None else columns
    micro = TILES_MICRO if micro is None else micro
    most = TILES_MAX_STEP if most is None else most
    threads = (tile_rows // micro[0]) * (columns // micro[1])
    return min(most, threads * 8 // columns)


def conv_tile_launch_config(spec) -> ConvTileLaunch | None:
    """The convolution of ``spec`` by tiles (``_conv_tiles``), or None where the plane kernel
    takes it (fewer than CONV_TILES_MIN_OUT output channels per group or CONV_TILES_MIN_TERMS
    terms per output; strided transposed convolutions, split by phase; no output)."""
    kh, kw = spec.kernel_size
    if (spec.lhs_dilation != (1, 1) or spec.out_per_group < CONV_TILES_MIN_OUT
            or spec.in_per_group * kh * kw < CONV_TILES_MIN_TERMS):
        return None
    positions = spec.batch * spec.out_size[0] * spec.out_size[1]
    tm = choose_tile_rows(spec.out_per_group)
    m_tiles = -(-spec.out_per_group // tm)
    n_tiles = -(-positions // TILES_COLUMNS)
    if positions == 0 or n_tiles >= 2**31 or spec.groups * m_tiles > MAX_GRID_YZ:
        return None
    key = ConvTileKey(spec.kernel_size, spec.stride, spec.dilation, (tm, TILES_COLUMNS, tile_step(tm)), TILES_MICRO,
                      spec.dtype == np.float64, spec.has_bias, spec.transposed_weight,
                      positions + TILES_COLUMNS >= 2**32)
    return ConvTileLaunch(key, (n_tiles, spec.groups * m_tiles), key.thread_grid, m_tiles)


@functools.lru_cache(maxsize=1024)
def forward_launch_config(spec) -> ConvTileLaunch | PlaneLaunch | LaunchConfig:
    """The launch of ``spec``'s convolution: by tiles where a group has many output channels,
    else the plane kernel where it applies, else the general tiled kernel (strided transposed
    convolutions, huge dilated kernels). Cached per spec (specs are frozen): a network's layers
    are launched over and over."""
    return conv_tile_launch_config(spec) or plane_launch_config(spec) or tile_launch_config(spec)


@functools.lru_cache(maxsize=1024)
def phase_launches(spec) -> tuple[tuple[Phase, ConvTileLaunch | PlaneLaunch], ...] | None:
    """A strided transposed convolution as one stride-1 launch per output phase (see
    :mod:`nbconv.cuda._phases`): by tiles where the phase has many channels per group, else by
    the plane kernel; None where the split or neither kernel applies."""
    split = phases(spec)
    if split is None:
        return None
    launches = tuple((ph, conv_tile_launch_config(ph.spec) or plane_launch_config(ph.spec)) for ph in split)
    return None if any(cfg is None for _, cfg in launches) else launches


def dilated_macs(spec) -> int:
    """Multiply-adds of ``spec``'s walk over its (dilated) input, zeros included."""
    return (spec.batch * spec.out_channels * spec.out_size[0] * spec.out_size[1] * spec.in_per_group
            * spec.kernel_size[0] * spec.kernel_size[1])


def strided_launches(spec) -> tuple[tuple[Phase, ConvTileLaunch | PlaneLaunch], ...] | None:
    """The phase launches of ``spec`` (:func:`phase_launches`) where it takes them: a strided
    transposed convolution of PHASES_MIN_MACS multiply-adds or more; None otherwise (one launch)."""
    if spec.lhs_dilation == (1, 1) or dilated_macs(spec) < PHASES_MIN_MACS:
        return None
    return phase_launches(spec)


def forget_kernels() -> None:
    """Empty the caches built from this module's, ``_planes``' and ``_tiles``' tuning constants
    (launch configurations, plane and tile kernels, their PTX and loaded functions): after a
    change of those constants (``docs/plane_sweep.py``, ``docs/tile_shapes.py``, tests), the
    next call builds with the new values."""
    from ._conv_tiles import conv_tile_kernel
    from ._planes import plane_kernel
    from ._tiles import micro_product
    from ._wgrad_tiles import tile_kernel

    for cached in (forward_launch_config, phase_launches, tile_reduce_launch, plane_kernel, micro_product,
                   conv_tile_kernel, tile_kernel, _raw._ptx, _raw._loaded):
        cached.cache_clear()


def launch_configs(spec) -> list[ConvTileLaunch | PlaneLaunch | LaunchConfig]:
    """Every kernel launch ``conv2d_forward`` makes for ``spec`` (one, or one per phase)."""
    split = strided_launches(spec)
    return [cfg for _, cfg in split] if split else [forward_launch_config(spec)]


def tile_launch_config(spec) -> LaunchConfig:
    tile = choose_tile(spec.out_size)
    oc_block = choose_oc_block(spec.out_per_group)
    acc_double = spec.dtype == np.float64
    key = ForwardKey(
        kernel_size=spec.kernel_size,
        stride=spec.stride,
        dilation=spec.dilation,
        tile=tile,
        oc_block=oc_block,
        acc_double=acc_double,
        has_bias=spec.has_bias,
        stage_input=True,
        lhs_dilation=spec.lhs_dilation,
        transposed_weight=spec.transposed_weight,
    )
    if key.shared_bytes > SHARED_LIMIT_BYTES:
        key = key._replace(stage_input=False)
    tiles = (math.ceil(spec.out_size[0] / tile[0]), math.ceil(spec.out_size[1] / tile[1]))
    n_oc_blocks = math.ceil(spec.out_per_group / oc_block)
    grid = spec.batch * spec.groups * n_oc_blocks * tiles[0] * tiles[1]
    return LaunchConfig(key, grid, (tile[1], tile[0]), n_oc_blocks, tiles)


class NumbaLauncher:
    """The launches of one op through numba-cuda's dispatcher, on the caller's stream (CuPy's
    or PyTorch's current one, else Numba's default): arrays as Numba device arrays (no copy, no
    host synchronisation), scratch from CuPy's memory pool for CuPy callers."""

    def __init__(self, kind: str):
        self.kind = kind
        self.stream = launch_stream(kind)

    def array(self, a: Any, unbatched: bool = False) -> Any:
        return as_batched_device_array(a, unbatched)

    def scratch(self, shape: tuple[int, ...], dtype) -> Any:
        return device_scratch(self.kind, shape, dtype)

    def __call__(self, key, grid, block, *args) -> None:
        kernel_of(key)[grid, block, self.stream](*args)


_RAW = _raw.RawLauncher()


def launcher(spec) -> NumbaLauncher | _raw.RawLauncher:
    """How ``spec``'s kernels are launched: through CuPy (:mod:`nbconv.cuda._raw`) for CuPy
    arrays (unless ``NBCONV_CUDA_LAUNCH=numba``), else through numba-cuda's dispatcher."""
    if _raw.ENABLED and spec.kind == CUPY and not config.ENABLE_CUDASIM:
        return _RAW
    return NumbaLauncher(spec.kind)


def _run_op(op, spec, arrays: tuple, out: Any) -> Any:
    """``op(spec, launcher, *arrays, out)`` by ``spec``'s launcher; through CuPy, by the op's
    recorded launches (:meth:`_raw.RawLauncher.planned`)."""
    run = launcher(spec)
    if isinstance(run, _raw.RawLauncher):
        run.planned(op, spec, arrays, out)
    else:
        op(spec, run, *arrays, out)
    return out


def conv2d_forward(spec, input: Any, weight: Any, bias: Any, out: Any) -> Any:
    """Launch the convolution kernel of ``spec`` (``conv2d``, ``conv_transpose2d`` or
    ``grad.conv2d_input``) writing into ``out``; no host synchronisation."""
    return _run_op(forward, spec, (input, weight, bias), out)


def forward(spec, run, input: Any, weight: Any, bias: Any, out: Any) -> Any:
    """:func:`conv2d_forward` through the launcher ``run``."""
    x = run.array(input, spec.unbatched)
    w = run.array(weight)
    o = run.array(out, spec.unbatched)
    b = run.array(bias) if bias is not None else w
    split = strided_launches(spec)
    if split:  # a strided transposed convolution: one stride-1 launch per output phase, no zeros
        for ph, cfg in split:
            _launch_forward(run, ph.spec, cfg, x, w[:, :, ph.rows, ph.cols], b, o[:, :, ph.out_rows, ph.out_cols])
    else:
        _launch_forward(run, spec, forward_launch_config(spec), x, w, b, o)
    return out


def _launch_forward(run, spec, cfg: ConvTileLaunch | PlaneLaunch | LaunchConfig, x, w, b, o) -> None:
    """One launch of a forward kernel: tiles, planes or the tiled kernel, as ``cfg`` says."""
    pad_h, pad_w = spec.padding[0], spec.padding[2]
    if isinstance(cfg, ConvTileLaunch):
        run(cfg.key, cfg.grid, cfg.block, x, w, b, o, pad_h, pad_w, spec.in_per_group, spec.out_per_group,
            cfg.m_tiles)
    elif isinstance(cfg, PlaneLaunch):
        run(cfg.key, cfg.grid, cfg.block, x, w, b, o, pad_h, pad_w, spec.groups, spec.in_per_group,
            spec.out_per_group, cfg.n_oc_blocks, cfg.planes)
    else:
        run(cfg.key, cfg.grid, cfg.block, x, w, b, o, pad_h, pad_w, spec.groups, cfg.n_oc_blocks, cfg.tiles[0],
            cfg.tiles[1])


def choose_partials(pairs: int, positions: int, threads: int = REDUCE_THREADS,
                    target_blocks: int = REDUCE_TARGET_BLOCKS) -> tuple[int, int]:
    """(P, chunk): split the ``positions`` (or strips of them) summed for each of ``pairs`` weight
    rows into P chunks of ``chunk``, so that pairs * P blocks fill the GPU, with at least 4 per
    thread in a chunk."""
    most = max(1, -(-positions // (4 * threads)))
    p = max(1, min(most, -(-target_blocks // max(1, pairs))))
    chunk = -(-positions // p)
    return -(-positions // chunk), chunk


def choose_reduce_strip(kernel_size: tuple[int, int], dilation: tuple[int, int], acc_double: bool,
                        bias_only: bool) -> int:
    """Outputs of a row a pair-kernel thread takes at a time: REDUCE_STRIP, or 1 with a column
    dilation (the strip's input row would hold mostly values no tap reads) and where the taps'
    sums alone fill the registers (more than 49 taps; float64 from 25: a 7x7 float64 kernel
    spilled 24 bytes with one output at a time)."""
    if bias_only:
        return REDUCE_STRIP
    taps = kernel_size[0] * kernel_size[1]
    return 1 if dilation[1] > 1 or taps > (25 if acc_double else 49) else REDUCE_STRIP


def reduce_key(spec, bias_only: bool) -> ReduceKey:
    """The weight (or bias) gradient's pass-1 key: 32-bit index arithmetic unless the positions
    (plus a block's stride past the end) or the weight pairs reach 2**32."""
    n_pairs = spec.out_channels * (1 if bias_only else spec.in_per_group)
    positions = spec.batch * spec.out_size[0] * spec.out_size[1]
    wide = max(positions + REDUCE_THREADS * REDUCE_STRIP, n_pairs) >= 2**32
    acc_double = spec.dtype == np.float64
    return ReduceKey(spec.kernel_size, spec.stride, spec.dilation, REDUCE_THREADS, acc_double, bias_only, wide,
                     choose_reduce_strip(spec.kernel_size, spec.dilation, acc_double, bias_only))


def reduce_strips(spec, strip: int) -> int:
    """Strips of ``strip`` outputs over every row of the output gradient (a row's last may be short)."""
    return spec.batch * spec.out_size[0] * -(-spec.out_size[1] // strip)


class TileLaunch(NamedTuple):
    key: TileReduceKey
    grid: tuple[int, int, int]  # (column tiles, groups * row tiles, P)
    block: tuple[int, int]  # key.thread_grid
    m_tiles: int  # row tiles per group
    chunk: int  # positions per block, a multiple of TK
    n_part: int  # P: partial sums per weight element, added by the finish kernel


def choose_tile_rows(out_per_group: int, rows: tuple[int, int] | None = None) -> int:
    """TM: the group's output channels rounded up to a power of 2, within ``rows`` (TILES_ROWS)."""
    rows = TILES_ROWS if rows is None else rows
    return min(rows[1], max(rows[0], _pow2_at_least(out_per_group)))


def choose_tile_chunks(tiles: int, positions: int, step: int, target_blocks: int = REDUCE_TARGET_BLOCKS,
                       min_steps: int = TILES_MIN_STEPS) -> tuple[int, int]:
    """(P, chunk): split the ``positions`` into P chunks of ``chunk`` (a multiple of ``step``)
    so that ``tiles * P`` blocks fill the GPU, each adding at least ``min_steps`` steps."""
    most = max(1, positions // (min_steps * step))
    p = max(1, min(most, MAX_GRID_YZ, -(-target_blocks // max(1, tiles))))
    chunk = -(-positions // p)
    chunk = -(-chunk // step) * step
    return -(-positions // chunk), chunk


@functools.lru_cache(maxsize=1024)
def tile_reduce_launch(spec) -> TileLaunch | None:
    """The weight gradient of ``spec`` by tiles (``_wgrad_tiles``), or None where the pair
    kernel takes it (fewer than TILES_MIN_OUT output channels per group; a grid past CUDA's
    limits). Cached per spec."""
    if spec.out_per_group < TILES_MIN_OUT:
        return None
    kh, kw = spec.kernel_size
    positions = spec.batch * spec.out_size[0] * spec.out_size[1]
    tm = choose_tile_rows(spec.out_per_group)
    m_tiles = -(-spec.out_per_group // tm)
    n_tiles = -(-(spec.in_per_group * kh * kw) // TILES_COLUMNS)
    if spec.groups * m_tiles > MAX_GRID_YZ or n_tiles >= 2**31 or positions == 0:
        return None
    step = tile_step(tm)
    n_part, chunk = choose_tile_chunks(n_tiles * spec.groups * m_tiles, positions, step)
    key = TileReduceKey(spec.kernel_size, spec.stride, spec.dilation, (tm, TILES_COLUMNS, step),
                        TILES_MICRO, spec.dtype == np.float64, positions + step >= 2**32)
    return TileLaunch(key, (n_tiles, spec.groups * m_tiles, n_part), key.thread_grid, m_tiles, chunk, n_part)


def _reduce_tiles(spec, run, cfg: TileLaunch, x, gy, out) -> None:
    kh, kw = spec.kernel_size
    dtype = np.float64 if cfg.key.acc_double else np.float32
    partial, scratch = _partial_sums(run, (cfg.n_part, spec.out_channels, spec.in_per_group, kh, kw), dtype, out)
    run(cfg.key, cfg.grid, cfg.block, x, gy, partial, spec.padding[0], spec.padding[2], spec.in_per_group,
        spec.out_per_group, cfg.m_tiles, cfg.chunk)
    if scratch:
        _finish(spec, run, partial, out, False)


def _partial_sums(run, shape: tuple[int, ...], dtype, out) -> tuple[Any, bool]:
    """(array, is scratch): where a reduction's first pass writes its ``shape`` partial sums.
    Scratch of ``dtype``, added into ``out`` by the second pass; or, where there is one chunk
    (``shape[0] == 1``) and ``dtype`` is the result's, ``out`` itself, viewed with the partial
    sums' axes: its one partial sum per element is then the result, and the second pass (a
    launch, and the scratch) is not needed. The same sums either way."""
    if shape[0] != 1 or np.dtype(dtype) != out.dtype:
        return run.scratch(shape, dtype), True
    view = out.one_chunk(len(shape)) if isinstance(out, _raw.RawArray) else one_chunk_view(out, len(shape))
    return view, False


class ReduceLaunch(NamedTuple):
    key: ReduceKey
    grid: tuple[int, int]  # (weight pairs, P)
    partial: tuple[tuple[int, ...], type]  # shape and dtype of the partial sums
    groups: int  # the kernel's groups argument (the channels, for the bias gradient)
    chunk: int  # strips per block


@functools.lru_cache(maxsize=1024)
def reduce_launch(spec, bias_only: bool) -> ReduceLaunch:
    """Pass 1 of the weight (or bias) gradient of ``spec`` by the pair kernel. Cached per spec."""
    n_pairs = spec.out_channels * (1 if bias_only else spec.in_per_group)
    kh, kw = (1, 1) if bias_only else spec.kernel_size
    key = reduce_key(spec, bias_only)
    n_part, chunk = choose_partials(n_pairs, reduce_strips(spec, key.strip))
    cin_g = 1 if bias_only else spec.in_per_group
    partial = ((n_part, spec.out_channels, cin_g, kh, kw), np.float64 if key.acc_double else np.float32)
    return ReduceLaunch(key, (n_pairs, n_part), partial, spec.out_channels if bias_only else spec.groups, chunk)


def _reduce(spec, run, x, gy, out, bias_only: bool) -> None:
    cfg = reduce_launch(spec, bias_only)
    partial, scratch = _partial_sums(run, *cfg.partial, out)
    run(cfg.key, cfg.grid, REDUCE_THREADS, x, gy, partial, spec.padding[0], spec.padding[2], cfg.groups, cfg.chunk)
    if scratch:
        _finish(spec, run, partial, out, bias_only)


@functools.lru_cache(maxsize=1024)
def finish_launch(spec, bias_only: bool) -> tuple[FinishKey, int]:
    """Pass 2 of the weight (or bias) gradient: its key and grid (blocks of 128 threads)."""
    kh, kw = (1, 1) if bias_only else spec.kernel_size
    cin_g = 1 if bias_only else spec.in_per_group
    n_out = spec.out_channels * cin_g * kh * kw
    return FinishKey(bias_only, n_out >= 2**32), -(-n_out // 128)


def _finish(spec, run, partial, out, bias_only: bool) -> None:
    key, grid = finish_launch(spec, bias_only)
    run(key, grid, 128, partial, out)


def conv2d_weight(spec, input: Any, grad_output: Any, out: Any) -> Any:
    """Launch the weight gradient of ``spec`` into ``out``; deterministic, no host sync."""
    return _run_op(weight_grad, spec, (input, grad_output), out)


def weight_grad(spec, run, input: Any, grad_output: Any, out: Any) -> Any:
    """:func:`conv2d_weight` through the launcher ``run``."""
    x = run.array(input, spec.unbatched)
    gy = run.array(grad_output, spec.unbatched)
    cfg = tile_reduce_launch(spec)
    if cfg is not None:
        _reduce_tiles(spec, run, cfg, x, gy, run.array(out))
    else:
        _reduce(spec, run, x, gy, run.array(out), bias_only=False)
    return out


def conv2d_bias(spec, grad_output: Any, out: Any) -> Any:
    """Launch the bias gradient (sum over N, H, W) into ``out``; deterministic, no host sync."""
    return _run_op(bias_grad, spec, (grad_output,), out)


def bias_grad(spec, run, grad_output: Any, out: Any) -> Any:
    """:func:`conv2d_bias` through the launcher ``run``."""
    gy = run.array(grad_output, spec.unbatched)
    _reduce(spec, run, gy, gy, run.array(out), bias_only=True)
    return out
