"""CUDA kernel of the direct convolution by staged input planes, built per compile-time key.

It computes ``conv2d`` and, at stride 1, the transposed convolution (so ``grad.conv2d_input``
of a stride-1 layer): depthwise, grouped and dense alike. Depthwise layers move many bytes for
few FLOPs and grouped ones few bytes per FLOP, so the kernel reads each input pixel from global
memory once per block and feeds many FMAs from every shared-memory load:

- A block is ``(BX, BY, BZ)`` threads: ``BZ`` independent problems side by side (an image, a
  group, a block of ``OCB`` output channels of that group: a "plane"), and per plane an output
  tile of ``BY * R`` rows by ``BX`` columns. The grid is ``(tiles along W, tiles along H, plane
  blocks)``: no 64-bit division decodes a block index, and a grid-stride loop over plane
  blocks covers problems with more than 65535 of them.
- For each input channel of the group, the plane's input tile with its halo is staged in shared
  memory by row-major, coalesced loads (zeros for the padding), converted to the accumulation
  type. The tile is one flat run of values for the plane's threads; each thread issues up to
  ``STAGE_CHUNK`` loads into registers before it stores any, so that many loads are in flight (a
  load stored before the next is issued waits on memory each time: the depthwise layers ran at
  about a tenth of the HBM bandwidth that way). With a column stride ``SW > 1`` the columns are
  stored de-interleaved by ``column % SW``, so the threads of a warp read consecutive words for
  every tap (no bank conflicts on strided convolutions).
- Each thread computes a vertical strip of ``R`` outputs of one column for ``OCB`` output
  channels: for every kernel column it loads the ``(R - 1) * SH + (KH - 1) * DH + 1`` input
  values of that column once into registers and does ``OCB * R * KH`` FMAs with them; warps
  store ``BX`` consecutive outputs per row (coalesced).
- The ``OCB * KH * KW`` weights of an input channel are loaded into registers once per staged
  tile (a uniform address across the plane's threads: one broadcast load per warp).

Kernel size, stride, dilation, block shape, strip height, output-channel block and dtype are
compile-time constants, so the tap loops unroll and every shared-memory offset and register
index is an immediate. Sizes (batch, image, channels, groups) are run-time values: one compile
serves every layer of a network with the same kernel geometry.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

from numba import config, cuda, float32, float64, int64, uint32


class PlaneKey(NamedTuple):
    """Everything the plane kernel is specialised on (besides the argument types)."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    block: tuple[int, int, int]  # (BX, BY, BZ): output columns, row strips, planes
    rows_per_thread: int  # R: outputs per thread, down a column
    oc_block: int  # OCB: output channels per thread
    acc_double: bool  # accumulate in float64 (float64 data) or float32 (float16/float32 data)
    has_bias: bool
    #: conv_transpose2d / grad.conv2d_input at stride 1: the weight is (C_in, C_out/groups, KH,
    #: KW), read flipped and transposed per group
    transposed_weight: bool = False
    #: float16 data: conversions take a few more registers (only the register cap depends on it)
    half_data: bool = False

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


#: An sm_80/sm_90 SM: 64K 32-bit registers, at most 255 a thread and 32 blocks.
REGISTERS_PER_SM = 65536
MAX_REGISTERS = 255
MAX_BLOCKS_PER_SM = 32
#: Threads an SM should keep resident for this kernel (half of the 2048 an SM can hold: the
#: kernel waits on memory and needs warps to hide it), as far as the registers a thread needs
#: allow. A thread holds its weights, its input strip and its accumulators, plus about this
#: many more for addresses and loop state (all twice over in float64, as measured with ptxas) ...
RESIDENT_THREADS = 1024
OVERHEAD_REGISTERS = 44
#: ... and float16 data this many more (conversions), 8 more again with the weight read flipped
#: (capped at 80 registers, ptxas spilled 4 bytes of the 1 x 2 and 1 x 3 transposed float16
#: kernels, phases of strided layers' input gradients; with the 8 they get two blocks of 256
#: threads and 114-126 registers: ``docs/register_budgets.py``) ...
HALF_REGISTERS = 4
TRANSPOSED_HALF_REGISTERS = 8
#: ... and each output channel of a thread's block after the first this many more; plus a
#: margin: with none, ptxas spilled the staging loops of some stride-2 and 1x1 kernels.
OC_REGISTERS = 6
MARGIN_REGISTERS = 16
#: Input values a thread loads at once when it stages a tile (each a register while in flight).
STAGE_CHUNK = 8
#: Staging loads from clamped addresses, the padding zeroed after the load, rather than loads
#: under a bounds test: ptxas then issues every load of a chunk before the first store for the
#: 5x5 and 7x7 kernels too (under a branch it interleaved loads and stores there: ``cuobjdump``).
STAGE_CLAMPED = True


def registers_needed(kernel_size, stride, dilation, rows_per_thread: int, oc_block: int,
                     acc_double: bool, half_data: bool = False, transposed: bool = False) -> int:
    """Registers a thread needs to hold its weights, input strip and accumulators without a
    spill (an estimate that ptxas confirms: see tests/compile_kernels.py --no-spill)."""
    (kh, kw), (sh, _), (dh, _) = kernel_size, stride, dilation
    strip = (rows_per_thread - 1) * sh + (kh - 1) * dh + 1
    # each further output channel also holds its addresses and bias (6 more, as ptxas showed)
    values = oc_block * kh * kw + oc_block * rows_per_thread + strip + OC_REGISTERS * (oc_block - 1)
    half = HALF_REGISTERS + (TRANSPOSED_HALF_REGISTERS if transposed else 0) if half_data else 0
    needed = (2 if acc_double else 1) * (values + OVERHEAD_REGISTERS) + half
    return -(-(needed + MARGIN_REGISTERS) // 8) * 8  # allocated to a thread in multiples of 8


def launch_bounds(key: PlaneKey) -> tuple[int, int]:
    """(max threads per block, min resident blocks per SM) the kernel is compiled for: ptxas
    caps the registers per thread at ``65536 / (threads * blocks)``, so ``blocks`` is the most
    that leaves a thread room for its values (no spill) and at most RESIDENT_THREADS."""
    needed = registers_needed(key.kernel_size, key.stride, key.dilation, key.rows_per_thread, key.oc_block,
                              key.acc_double, key.half_data, key.transposed_weight)
    blocks = min(RESIDENT_THREADS // key.threads, REGISTERS_PER_SM // (key.threads * needed), MAX_BLOCKS_PER_SM)
    return (key.threads, max(1, blocks))


@functools.lru_cache(maxsize=None)
def plane_kernel(key: PlaneKey):
    """The ``@cuda.jit`` kernel for ``key`` (built once per key; Numba compiles per argument types).

    Arguments: ``x`` (N, C_in, H, W); ``w`` (C_out, C_in/groups, KH, KW), or (C_in, C_out/groups,
    KH, KW) read flipped when ``key.transposed_weight``; ``b`` (C_out,) (any array when there is
    no bias); ``out`` (N, C_out, H_out, W_out); ``pad_h``, ``pad_w``, ``groups``, ``cin_g`` and
    ``cout_g`` (channels per group), ``n_oc_blocks`` (``ceil(cout_g / OCB)``) and ``planes``
    (``N * groups * n_oc_blocks``). Launch with ``grid = (tiles_w, tiles_h, plane_blocks)`` and
    ``block = key.block``.
    """
    KH, KW = key.kernel_size
    SH, SW = key.stride
    DH, DW = key.dilation
    BX, BY, BZ = key.block
    R = key.rows_per_thread
    OCB = key.oc_block
    TH, TW = key.out_tile
    ROWS, COLS = key.halo_tile
    SCOLS = key.shared_columns
    CW = SCOLS // SW  # words per de-interleaved phase of a staged row
    STRIP = (R - 1) * SH + (KH - 1) * DH + 1  # input rows under one thread's strip of outputs
    NTAPS = KH * KW
    NW, NACC = OCB * NTAPS, OCB * R
    ACC = float64 if key.acc_double else float32
    HAS_BIAS = key.has_bias
    TRANSPOSED = key.transposed_weight
    PT = BX * BY  # threads staging one plane's tile
    NEL = ROWS * COLS
    CHUNK = min(-(-NEL // PT), STAGE_CHUNK)  # loads in flight per thread
    NCHUNKS = -(-NEL // (PT * CHUNK))
    CLAMPED = STAGE_CLAMPED

    options = {} if config.ENABLE_CUDASIM else {"launch_bounds": launch_bounds(key)}

    @cuda.jit(**options)
    def _planes(x, w, b, out, pad_h, pad_w, groups, cin_g, cout_g, n_oc_blocks, planes):
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
        stage = cuda.local.array(CHUNK, ACC)
        tid = ty * BX + tx
        wr = cuda.local.array(NW, ACC)
        col = cuda.local.array(STRIP, ACC)
        acc = cuda.local.array(NACC, ACC)

        first = cuda.blockIdx.z * BZ
        while first < planes:  # plane blocks: a grid-stride loop, uniform across the block
            p = first + tz
            live = p < planes
            # plane -> (image, group, output-channel block); 32-bit divisions, no 64-bit routine
            q = int64(uint32(p) // uint32(n_oc_blocks))
            ocb = p - q * n_oc_blocks
            n = int64(uint32(q) // uint32(groups))
            g = q - n * groups
            o0 = ocb * OCB  # first output channel of the block, within the group
            for i in range(NACC):
                acc[i] = 0
            for ci in range(cin_g):
                c = g * cin_g + ci
                if live:
                    # the halo tile as one flat run of ROWS * COLS values, LOADS a thread: each
                    # chunk's loads are issued together into registers, then stored to shared
                    # memory (loads in a loop that stores each value first would wait on each)
                    for chunk in range(NCHUNKS):
                        for i in range(CHUNK):
                            if CLAMPED:
                                # every load from a valid address (clamped), so that none waits
                                # on a branch; the values outside the image are replaced by zeros
                                e = min(uint32(tid + (chunk * CHUNK + i) * PT), uint32(NEL - 1))
                                r = e // uint32(COLS)
                                iy = iy0 + int64(r)
                                ix = ix0 + int64(e - r * uint32(COLS))
                                v = ACC(x[n, c, min(max(iy, 0), in_h - 1), min(max(ix, 0), in_w - 1)])
                                stage[i] = v if 0 <= iy < in_h and 0 <= ix < in_w else ACC(0)
                            else:
                                e = uint32(tid + (chunk * CHUNK + i) * PT)
                                v = ACC(0)
                                if e < NEL:
                                    r = e // uint32(COLS)
                                    iy = iy0 + int64(r)
                                    ix = ix0 + int64(e - r * uint32(COLS))
                                    if 0 <= iy < in_h and 0 <= ix < in_w:
                                        v = ACC(x[n, c, iy, ix])
                                stage[i] = v
                        for i in range(CHUNK):
                            e = uint32(tid + (chunk * CHUNK + i) * PT)
                            if e < NEL:
                                r = e // uint32(COLS)
                                s = e - r * uint32(COLS)
                                tile[tz, r, (s % uint32(SW)) * uint32(CW) + s // uint32(SW)] = stage[i]
                cuda.syncthreads()
                if live and computes:
                    for jj in range(OCB):
                        o = min(o0 + jj, cout_g - 1)  # clamped: a valid address, its result unused
                        for k in range(NTAPS):
                            if TRANSPOSED:
                                wr[jj * NTAPS + k] = ACC(w[c, o, KH - 1 - k // KW, KW - 1 - k % KW])
                            else:
                                wr[jj * NTAPS + k] = ACC(w[g * cout_g + o, ci, k // KW, k % KW])
                    for kw in range(KW):
                        # staged column tx * SW + kw * DW, de-interleaved
                        pos = ((kw * DW) % SW) * CW + tx + (kw * DW) // SW
                        for i in range(STRIP):
                            col[i] = tile[tz, ty * (R * SH) + i, pos]
                        for jj in range(OCB):
                            for r in range(R):
                                for kh in range(KH):
                                    acc[jj * R + r] += wr[jj * NTAPS + kh * KW + kw] * col[r * SH + kh * DH]
                cuda.syncthreads()
            if live and computes:
                for jj in range(OCB):
                    if o0 + jj < cout_g:
                        oc = g * cout_g + o0 + jj
                        for r in range(R):
                            oy = oy0 + r
                            if oy < out_h:
                                v = acc[jj * R + r]
                                if HAS_BIAS:
                                    v += ACC(b[oc])
                                out[n, oc, oy, ox] = v
            first += cuda.gridDim.z * BZ

    return _planes
