"""CUDA kernel of the weight gradient of grouped and dense layers: a product of tiles.

Per group ``g`` the weight gradient is a matrix product with a long inner dimension::

    dW[g*cout_g + m, c, kh, kw] = sum over positions k = (n, oy, ox) of
        gy[n, g*cout_g + m, oy, ox] * x[n, g*cin_g + c, oy*SH - pad_h + kh*DH, ox*SW - pad_w + kw*DW]

an ``M x K`` matrix (``M = cout_g`` output channels, ``K = N * H_out * W_out`` positions) times a
``K x N`` one (``N = cin_g * KH * KW`` columns: input channel and tap), read from ``x`` in place
(an implicit im2col). The pair kernel of :mod:`nbconv.cuda._reduce` gives each (output channel,
input channel) pair a block and reads ``x`` once per tap and output channel: one global load per
multiply-add, far from the FMA rate where a group has many channels (AlexNet's 48 -> 128 per group).

Here a block ``(tile_n, g * m_tiles + tile_m, p)`` owns a ``TM x TN`` tile of one group's weight
gradient over the ``p``-th chunk of positions. Per step of ``TK`` positions, its threads load the
``TK x TM`` slice of ``gy`` and the ``TK x TN`` slice of the implicit im2col into shared memory
(consecutive threads take consecutive positions: coalesced rows of ``gy`` and ``x``; zeros for the
padding, for columns past ``N`` and for positions past the chunk), then each thread adds the
products of an ``RM x RN`` micro-tile held in registers: ``RM * RN`` FMAs per ``RM + RN`` shared
loads. A thread's rows and columns are strided by the thread grid (``ty + i*BY``, ``tx + j*BX``),
so a warp reads consecutive shared words (no bank conflicts). A loader thread's column decode
(input channel, row and column offsets of its tap) is the same at every step and kept in registers.

The block writes its partial sums to ``partial[p, o, c, kh, kw]``, the layout of the pair kernel's
pass 1, and :func:`nbconv.cuda._reduce.finish_kernel` adds them over ``p`` in order. Each thread
adds its positions in a fixed order and there are no atomics: bit-identical run after run.

Kernel size, stride, dilation, tile and micro-tile sizes and the accumulation type are
compile-time constants; sizes, groups and the chunk are run-time values.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from numba import config, cuda, float32, float64, int32, int64, uint32, uint64

from . import _tiles
from ._tiles import micro_product


class TileReduceKey(NamedTuple):
    """Everything the tile kernel is specialised on (besides the argument types)."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    #: (TM, TN, TK): output channels and (input channel, tap) columns of a block's tile, and the
    #: positions staged per step
    tile: tuple[int, int, int]
    micro: tuple[int, int]  # (RM, RN): the tile's rows and columns a thread accumulates
    acc_double: bool  # accumulate in float64 (float64 data) or float32 (float16/float32 data)
    #: positions beyond 32 bits: decode them in 64 bits
    wide_index: bool = False

    thread_grid = property(_tiles.thread_grid)
    threads = property(_tiles.threads)
    shared_bytes = property(_tiles.shared_bytes)

    def check(self) -> None:
        """Raise ValueError unless the tile splits evenly between the threads."""
        (tm, tn, tk), (rm, rn) = self.tile, self.micro
        nt = self.threads
        if tm % rm or tn % rn or nt % tk or tm % (nt // tk) or tn % (nt // tk):
            raise ValueError(f"tile {self.tile} with micro-tile {self.micro}: {nt} threads must load "
                             f"whole rows of {tk} positions of both slices")


@functools.lru_cache(maxsize=None)
def tile_kernel(key: TileReduceKey):
    """The ``@cuda.jit`` kernel for ``key``.

    Arguments: ``x`` (N, C_in, H, W); ``gy`` (N, C_out, H_out, W_out); ``partial`` (P, C_out,
    C_in/groups, KH, KW) in the accumulation type; ``pad_h``, ``pad_w``, ``cin_g``, ``cout_g``,
    ``m_tiles`` (``ceil(cout_g / TM)``) and ``chunk`` (positions per block, a multiple of TK).
    Launch with ``grid = (ceil(cin_g*KH*KW / TN), groups * m_tiles, P)`` and ``block = (BX, BY)``.
    """
    key.check()
    KH, KW = key.kernel_size
    SH, SW = key.stride
    DH, DW = key.dilation
    TM, TN, TK = key.tile
    RM, RN = key.micro
    BX, BY = key.thread_grid
    NT = BX * BY
    LSTEP = NT // TK  # loader rows per pass over a slice
    LA, LB = TM // LSTEP, TN // LSTEP  # slice entries each thread loads per step
    NTAPS = KH * KW
    NACC = RM * RN
    AROW = TM + 1  # a row of the gy slice, one word of padding: fewer bank conflicts on its stores
    ACC = float64 if key.acc_double else float32
    WIDE = key.wide_index
    OUTSIDE = -(1 << 30)  # a row offset no position reaches: a column past N loads zeros

    options = {} if config.ENABLE_CUDASIM else {"launch_bounds": (NT, 1)}
    product = micro_product(key)

    @cuda.jit(**options)
    def _tiles(x, gy, partial, pad_h, pad_w, cin_g, cout_g, m_tiles, chunk):
        n_img, _, out_h, out_w = gy.shape
        in_h, in_w = x.shape[2], x.shape[3]
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * BX + tx
        tn0 = cuda.blockIdx.x * TN
        gm = cuda.blockIdx.y
        g = int64(uint32(gm) // uint32(m_tiles))
        tm0 = (gm - g * m_tiles) * TM
        p = cuda.blockIdx.z
        total = n_img * out_h * out_w
        start = p * chunk
        end = min(total, start + chunk)

        a_tile = cuda.shared.array((TK, AROW), ACC)
        b_tile = cuda.shared.array((TK, TN), ACC)
        acc = cuda.local.array(NACC, ACC)
        av = cuda.local.array(RM, ACC)
        bv = cuda.local.array(RN, ACC)
        areg = cuda.local.array(LA, ACC)
        breg = cuda.local.array(LB, ACC)
        # this loader's columns: input channel, row and column offsets (32 bits: half the registers)
        chan = cuda.local.array(LB, int32)
        dy = cuda.local.array(LB, int32)
        dx = cuda.local.array(LB, int32)

        kk = tid % TK  # the position of a step this thread loads
        lrow = tid // TK  # and its first row of each slice
        for i in range(LB):
            col = tn0 + lrow + i * LSTEP
            ci = col // NTAPS
            tap = col - ci * NTAPS
            chan[i] = g * cin_g + min(ci, cin_g - 1)
            dy[i] = (tap // KW) * DH - pad_h if ci < cin_g else OUTSIDE
            dx[i] = (tap % KW) * DW - pad_w
        for i in range(NACC):
            acc[i] = 0

        # Software pipelining, as in _conv_tiles: the next step's loads go into registers (all
        # issued at once, from clamped addresses, zeros put in afterwards) before the products of
        # the staged step, and reach shared memory after the barrier that ends it.
        k0 = start
        staged = False
        while True:
            if k0 < end:
                k = k0 + kk
                live = k < end
                k = min(k, end - 1)  # (a position of the chunk: a valid address)
                if WIDE:
                    q = k // out_w
                    n = q // out_h
                else:
                    q = int64(uint32(k) // uint32(out_w))
                    n = int64(uint32(q) // uint32(out_h))
                # unsigned indices from here (no wraparound for negative values), 32-bit where they fit
                ox = uint32(k - q * out_w)
                oy = uint32(q - n * out_h)
                n = uint64(n)
                for i in range(LA):
                    o = uint32(tm0 + lrow + i * LSTEP)
                    v = ACC(gy[n, uint32(g * cout_g) + min(o, uint32(cout_g - 1)), oy, ox])
                    areg[i] = v if live and o < cout_g else ACC(0)
                for i in range(LB):
                    iy = int32(oy * SH) + dy[i]
                    ix = int32(ox * SW) + dx[i]
                    v = ACC(x[n, uint32(chan[i]), uint32(min(max(iy, 0), in_h - 1)),
                              uint32(min(max(ix, 0), in_w - 1))])
                    breg[i] = v if live and 0 <= iy < in_h and 0 <= ix < in_w else ACC(0)
            if staged:
                product(a_tile, b_tile, av, bv, acc, tx, ty)
                cuda.syncthreads()
            if k0 >= end:
                break
            for i in range(LA):
                a_tile[kk, lrow + i * LSTEP] = areg[i]
            for i in range(LB):
                b_tile[kk, lrow + i * LSTEP] = breg[i]
            cuda.syncthreads()
            staged = True
            k0 += TK

        for i in range(RM):
            o = tm0 + ty + i * BY
            if o < cout_g:
                for j in range(RN):
                    col = tn0 + tx + j * BX
                    ci = col // NTAPS
                    if ci < cin_g:
                        tap = col - ci * NTAPS
                        partial[p, g * cout_g + o, ci, tap // KW, tap % KW] = acc[i * RN + j]

    return _tiles
