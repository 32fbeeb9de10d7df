"""CUDA kernel of the depthwise forward convolution (one input channel per group), per key.

Depthwise layers move many bytes for few FLOPs, so the kernel is built to read each input
pixel from global memory once and to feed many FMAs from every shared-memory load:

- A block is ``(BX, BY, BZ)`` threads: ``BZ`` input planes (image, channel) side by side, and
  per plane an output tile of ``BY * R`` rows by ``BX`` columns. The grid is
  ``(tiles along W, tiles along H, plane blocks)``: no division decodes a block index, and
  a grid-stride loop over plane blocks covers batches with more than 65535 of them.
- Each plane's input tile with its halo is staged in shared memory by row-major, coalesced
  loads (zeros for the padding), converted to the accumulation type. With a column stride
  ``SW > 1`` the columns are stored de-interleaved by ``column % SW``, so the threads of a warp
  read consecutive words for every tap (no bank conflicts on strided convolutions).
- Each thread computes a vertical strip of ``R`` outputs of one column: for every kernel
  column it loads the ``(R - 1) * SH + (KH - 1) * DH + 1`` input values of that column once
  into registers and does ``R * KH`` FMAs with them; warps store ``BX`` consecutive outputs
  per row (coalesced).
- The ``KH * KW`` weights of an output channel are loaded once per plane into registers;
  the channel multiplier (``C_out / C_in`` outputs per plane) is a run-time loop that reuses
  the staged tile.

Kernel size, stride, dilation, block shape, strip height and dtype are compile-time constants,
so the tap loops unroll and every shared-memory offset is an immediate. Sizes (batch, image,
channels, multiplier) are run-time values: one compile serves every layer of a network with
the same kernel geometry.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

from numba import config, cuda, float32, float64, uint32


class DepthwiseKey(NamedTuple):
    """Everything the depthwise forward kernel is specialised on (besides the argument types)."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    block: tuple[int, int, int]  # (BX, BY, BZ): output columns, row strips, planes
    rows_per_thread: int  # R: outputs per thread, down a column
    acc_double: bool  # accumulate in float64 (float64 data) or float32 (float16/float32 data)
    has_bias: bool
    #: conv_transpose2d / grad.conv2d_input at stride 1: the weight is (C, mult, KH, KW), read
    #: flipped (the transposed convolution of a stride-1 depthwise layer is a depthwise convolution)
    flipped: bool = False

    @property
    def out_tile(self) -> tuple[int, int]:
        """Output rows x columns of one plane that a block computes."""
        bx, by, _ = self.block
        return (by * self.rows_per_thread, bx)

    @property
    def halo_tile(self) -> tuple[int, int]:
        """Input rows x columns a block stages per plane for its output tile."""
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        th, tw = self.out_tile
        return ((th - 1) * sh + (kh - 1) * dh + 1, (tw - 1) * sw + (kw - 1) * dw + 1)

    @property
    def shared_columns(self) -> int:
        """Words per staged row: the halo's columns rounded up to a multiple of the stride."""
        sw = self.stride[1]
        return sw * math.ceil(self.halo_tile[1] / sw)

    @property
    def shared_bytes(self) -> int:
        return self.block[2] * self.halo_tile[0] * self.shared_columns * (8 if self.acc_double else 4)

    @property
    def threads(self) -> int:
        return self.block[0] * self.block[1] * self.block[2]


#: Threads an SM should keep resident for this kernel (half of an sm_80/sm_90 SM's 2048: the
#: kernel waits on memory and needs warps to hide it) ...
RESIDENT_THREADS = 1024
#: ... as far as the registers a thread needs allow: an SM has 64K 32-bit registers, and a
#: thread holds its weights, its input strip and its accumulators plus about this many more
#: for addresses and loop state (all twice over in float64, as measured with ptxas).
REGISTERS_PER_SM = 65536
OVERHEAD_REGISTERS = 44


def launch_bounds(key: DepthwiseKey) -> tuple[int, int]:
    """(max threads per block, min resident blocks per SM) the kernel is compiled for: ptxas
    caps the registers per thread at ``65536 / (threads * blocks)`` (a multiple of 8), so ``blocks`` is the most
    that leaves a thread room for its values (no spill) and at most RESIDENT_THREADS."""
    (kh, kw), (sh, _), (dh, _) = key.kernel_size, key.stride, key.dilation
    words = 2 if key.acc_double else 1
    strip = (key.rows_per_thread - 1) * sh + (kh - 1) * dh + 1
    needed = words * (kh * kw + strip + key.rows_per_thread + OVERHEAD_REGISTERS)
    needed = -(-needed // 8) * 8  # registers are allocated to a thread in multiples of 8
    blocks = min(RESIDENT_THREADS // key.threads, REGISTERS_PER_SM // (key.threads * needed))
    return (key.threads, max(1, blocks))


@functools.lru_cache(maxsize=None)
def depthwise_kernel(key: DepthwiseKey):
    """The ``@cuda.jit`` kernel for ``key`` (built once per key; Numba compiles per argument types).

    Arguments: ``x`` (N, C, H, W), ``w`` (C * mult, 1, KH, KW) (``(C, mult, KH, KW)`` read flipped
    when ``key.flipped``), ``b`` (C * mult,) (any array when
    there is no bias), ``out`` (N, C * mult, H_out, W_out), ``pad_h``, ``pad_w``, ``channels``
    (C), ``planes`` (N * C) and ``mult``. Launch with ``grid = (tiles_w, tiles_h, plane_blocks)``
    and ``block = key.block``.
    """
    KH, KW = key.kernel_size
    SH, SW = key.stride
    DH, DW = key.dilation
    BX, BY, BZ = key.block
    R = key.rows_per_thread
    TH, TW = key.out_tile
    ROWS, COLS = key.halo_tile
    SCOLS = key.shared_columns
    CW = SCOLS // SW  # words per de-interleaved phase of a staged row
    STRIP = (R - 1) * SH + (KH - 1) * DH + 1  # input rows under one thread's strip of outputs
    NTAPS = KH * KW
    ACC = float64 if key.acc_double else float32
    HAS_BIAS = key.has_bias
    FLIPPED = key.flipped

    options = {} if config.ENABLE_CUDASIM else {"launch_bounds": launch_bounds(key)}

    @cuda.jit(**options)
    def _depthwise(x, w, b, out, pad_h, pad_w, channels, planes, mult):
        in_h, in_w = x.shape[2], x.shape[3]
        out_h, out_w = out.shape[2], out.shape[3]
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tz = cuda.threadIdx.z
        iy0 = cuda.blockIdx.y * (TH * SH) - pad_h  # input row of the staged tile's first row
        ix0 = cuda.blockIdx.x * (TW * SW) - pad_w
        oy0 = cuda.blockIdx.y * TH + ty * R  # this thread's first output row
        ox = cuda.blockIdx.x * TW + tx  # and its column
        computes = ox < out_w and oy0 < out_h

        tile = cuda.shared.array((BZ, ROWS, SCOLS), ACC)
        wr = cuda.local.array(NTAPS, ACC)
        col = cuda.local.array(STRIP, ACC)
        acc = cuda.local.array(R, ACC)

        first = cuda.blockIdx.z * BZ
        while first < planes:  # plane blocks: a grid-stride loop, uniform across the block
            p = first + tz
            live = p < planes
            n = uint32(p) // uint32(channels)  # 32-bit: no call to the 64-bit division routine
            c = p - n * channels
            if live:
                for r in range(ty, ROWS, BY):
                    iy = iy0 + r
                    if 0 <= iy < in_h:
                        row = x[n, c, iy]
                        for s in range(tx, COLS, BX):
                            ix = ix0 + s
                            v = ACC(0)
                            if 0 <= ix < in_w:
                                v = ACC(row[ix])
                            tile[tz, r, (s % SW) * CW + s // SW] = v
                    else:
                        for s in range(tx, COLS, BX):
                            tile[tz, r, (s % SW) * CW + s // SW] = 0
            cuda.syncthreads()
            if live and computes:
                for j in range(mult):
                    oc = c * mult + j
                    for k in range(NTAPS):
                        if FLIPPED:
                            wr[k] = ACC(w[c, j, KH - 1 - k // KW, KW - 1 - k % KW])
                        else:
                            wr[k] = ACC(w[oc, 0, k // KW, k % KW])
                    for r in range(R):
                        acc[r] = 0
                    for kw in range(KW):
                        # staged column tx * SW + kw * DW, de-interleaved
                        pos = ((kw * DW) % SW) * CW + tx + (kw * DW) // SW
                        for i in range(STRIP):
                            col[i] = tile[tz, ty * (R * SH) + i, pos]
                        for r in range(R):
                            for kh in range(KH):
                                acc[r] += wr[kh * KW + kw] * col[r * SH + kh * DH]
                    for r in range(R):
                        oy = oy0 + r
                        if oy < out_h:
                            v = acc[r]
                            if HAS_BIAS:
                                v += ACC(b[oc])
                            out[n, oc, oy, ox] = v
            cuda.syncthreads()
            first += cuda.gridDim.z * BZ

    return _depthwise
