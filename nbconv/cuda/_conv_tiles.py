"""CUDA kernel of the convolution of layers with many channels per group: a product of tiles.

Per group ``g`` the convolution is a matrix product (an implicit GEMM)::

    out[n, g*cout_g + m, oy, ox] = bias[g*cout_g + m] + sum over k = (c, kh, kw) of
        w[g*cout_g + m, c, kh, kw] * x[n, g*cin_g + c, oy*SH - pad_h + kh*DH, ox*SW - pad_w + kw*DW]

an ``M x K`` weight (``M = cout_g`` output channels, ``K = cin_g * KH * KW``) times a ``K x N``
im2col of ``x`` (``N = batch * H_out * W_out`` positions), read in place. The plane kernel of
:mod:`nbconv.cuda._planes` stages each input channel once per block of at most 4 output
channels: with 128 output channels per group (AlexNet) it reads the input 32 times over and
keeps one output channel per thread.

Here a block ``(tile_n, g * m_tiles + tile_m)`` owns a ``TM x TN`` tile of one group's output:
``TM`` output channels by ``TN`` consecutive positions. Per step of ``TK`` values of ``k`` its
threads stage the ``TK x TM`` slice of the weight and the ``TK x TN`` slice of the im2col in
shared memory, then each thread adds an ``RM x RN`` micro-tile from registers: ``RM * RN`` FMAs
per ``RM + RN`` shared loads. The next step's slices are loaded into registers while the current
one is multiplied (software pipelining): every load of a step is issued at once, from a clamped
address, and the padding's zeros are put in afterwards. A loader thread of the im2col keeps one
position for the whole product (decoded once: no division per step) and consecutive threads take
consecutive positions, so rows of ``x`` are read coalesced, as are rows of the weight
(consecutive ``k``). Zeros stand for the padding, ``k`` past ``K`` and positions past ``N``.
Each thread writes its outputs with the bias (a warp's are consecutive positions). No atomics,
no split of ``K``: deterministic.

With ``transposed_weight`` the same kernel computes the stride-1 transposed convolution (the
input gradient of a stride-1 layer): the weight is (C_in, C_out/groups, KH, KW), read flipped
and transposed per group, as in the plane kernel.

Kernel size, stride, dilation, tile and micro-tile sizes, bias and the accumulation type are
compile-time constants; sizes, groups and padding are run-time values.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from numba import config, cuda, float32, float64, int32, int64, uint32

from . import _tiles
from ._tiles import micro_product


class ConvTileKey(NamedTuple):
    """Everything the tile kernel of the convolution is specialised on (besides argument types)."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    #: (TM, TN, TK): output channels and positions of a block's tile, and the (input channel,
    #: tap) values staged per step
    tile: tuple[int, int, int]
    micro: tuple[int, int]  # (RM, RN): the tile's rows and columns a thread accumulates
    acc_double: bool  # accumulate in float64 (float64 data) or float32 (float16/float32 data)
    has_bias: bool
    transposed_weight: bool = False
    #: positions beyond 32 bits: decode them in 64 bits
    wide_index: bool = False

    thread_grid = property(_tiles.thread_grid)
    threads = property(_tiles.threads)
    shared_bytes = property(_tiles.shared_bytes)

    def check(self) -> None:
        """Raise ValueError unless both slices split evenly between the threads."""
        (tm, tn, tk), (rm, rn) = self.tile, self.micro
        nt = self.threads
        if tm % rm or tn % rn or nt % tn or tk % (nt // tn) or nt % tk or tm % (nt // tk):
            raise ValueError(f"tile {self.tile} with micro-tile {self.micro}: {nt} threads must load "
                             f"whole rows of both slices")


@functools.lru_cache(maxsize=None)
def conv_tile_kernel(key: ConvTileKey):
    """The ``@cuda.jit`` kernel for ``key``.

    Arguments: ``x`` (N, C_in, H, W); ``w`` (C_out, C_in/groups, KH, KW), or (C_in, C_out/groups,
    KH, KW) when ``key.transposed_weight``; ``b`` (C_out,) (any array when there is no bias);
    ``out`` (N, C_out, H_out, W_out); ``pad_h``, ``pad_w``, ``cin_g``, ``cout_g`` and ``m_tiles``
    (``ceil(cout_g / TM)``). Launch with ``grid = (ceil(N * H_out * W_out / TN), groups * m_tiles)``
    and ``block = key.thread_grid``.
    """
    key.check()
    KH, KW = key.kernel_size
    SH, SW = key.stride
    DH, DW = key.dilation
    TM, TN, TK = key.tile
    RM, RN = key.micro
    BX, BY = key.thread_grid
    NT = BX * BY
    BSTEP = NT // TN  # im2col loader rows per pass
    LB = TK // BSTEP  # im2col values each thread loads per step
    ASTEP = NT // TK  # weight loader rows per pass
    LA = TM // ASTEP
    NTAPS = KH * KW
    NACC = RM * RN
    AROW = TM + 1  # a row of the weight slice, one word of padding: fewer bank conflicts on its stores
    ACC = float64 if key.acc_double else float32
    HAS_BIAS = key.has_bias
    TRANSPOSED = key.transposed_weight
    WIDE = key.wide_index

    options = {} if config.ENABLE_CUDASIM else {"launch_bounds": (NT, 1)}
    product = micro_product(key)

    @cuda.jit(**options)
    def _conv_tiles(x, w, b, out, pad_h, pad_w, cin_g, cout_g, m_tiles):
        n_img, _, out_h, out_w = out.shape
        in_h, in_w = x.shape[2], x.shape[3]
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * BX + tx
        tn0 = cuda.blockIdx.x * TN
        gm = cuda.blockIdx.y
        g = int64(uint32(gm) // uint32(m_tiles))
        tm0 = (gm - g * m_tiles) * TM
        total = n_img * out_h * out_w
        kdim = cin_g * NTAPS

        a_tile = cuda.shared.array((TK, AROW), ACC)
        b_tile = cuda.shared.array((TK, TN), ACC)
        acc = cuda.local.array(NACC, ACC)
        av = cuda.local.array(RM, ACC)
        bv = cuda.local.array(RN, ACC)
        areg = cuda.local.array(LA, ACC)
        breg = cuda.local.array(LB, ACC)

        # this thread's position in the im2col slices, for the whole product
        jl = tid % TN
        krow = tid // TN
        pos = tn0 + jl
        if WIDE:
            q = pos // out_w
            n = q // out_h
        else:
            q = int64(uint32(pos) // uint32(out_w))
            n = int64(uint32(q) // uint32(out_h))
        iy0 = int32((q - n * out_h) * SH - pad_h)
        ix0 = int32((pos - q * out_w) * SW - pad_w)
        n = uint32(n)
        live = pos < total
        # and its column of the weight slices
        kc = tid % TK
        mrow = tid // TK
        for i in range(NACC):
            acc[i] = 0

        nl = min(n, uint32(n_img - 1))  # (a clamped image for positions past N: a valid address)
        # Software pipelining: the global loads of step s + 1 go into registers (all of them
        # issued at once, from clamped addresses, zeros put in afterwards) before the products
        # of step s, so their latency hides behind the FMAs; they reach shared memory after the
        # barrier that ends step s. One pass of the loop: load the next step, multiply the
        # staged one, stage the loaded one.
        k0 = 0
        staged = False
        while True:
            if k0 < kdim:
                k = uint32(k0 + kc)
                kk = min(k, uint32(kdim - 1))
                c = uint32(kk // uint32(NTAPS))
                tap = uint32(kk - c * uint32(NTAPS))
                kh = uint32(tap // uint32(KW))
                kw = uint32(tap - kh * uint32(KW))
                for i in range(LA):
                    o = uint32(tm0 + mrow + i * ASTEP)
                    oc = min(o, uint32(cout_g - 1))
                    if TRANSPOSED:
                        v = ACC(w[uint32(g * cin_g) + c, oc, uint32(KH - 1) - kh, uint32(KW - 1) - kw])
                    else:
                        v = ACC(w[uint32(g * cout_g) + oc, c, kh, kw])
                    areg[i] = v if o < cout_g and k < kdim else ACC(0)
                for i in range(LB):
                    k = uint32(k0 + krow + i * BSTEP)
                    kk = min(k, uint32(kdim - 1))
                    c = uint32(kk // uint32(NTAPS))
                    tap = uint32(kk - c * uint32(NTAPS))
                    kh = uint32(tap // uint32(KW))
                    iy = iy0 + int32(kh) * DH
                    ix = ix0 + int32(tap - kh * uint32(KW)) * DW
                    v = ACC(x[nl, uint32(g * cin_g) + c, uint32(min(max(iy, 0), in_h - 1)),
                              uint32(min(max(ix, 0), in_w - 1))])
                    breg[i] = v if live and k < kdim and 0 <= iy < in_h and 0 <= ix < in_w else ACC(0)
            if staged:
                product(a_tile, b_tile, av, bv, acc, tx, ty)
                cuda.syncthreads()
            if k0 >= kdim:
                break
            for i in range(LA):
                a_tile[kc, mrow + i * ASTEP] = areg[i]
            for i in range(LB):
                b_tile[krow + i * BSTEP, jl] = breg[i]
            cuda.syncthreads()
            staged = True
            k0 += TK

        for j in range(RN):
            p = tn0 + tx + j * BX
            if p < total:
                if WIDE:
                    qq = p // out_w
                    nn = qq // out_h
                else:
                    qq = int64(uint32(p) // uint32(out_w))
                    nn = int64(uint32(qq) // uint32(out_h))
                oy = qq - nn * out_h
                ox = p - qq * out_w
                for i in range(RM):
                    o = tm0 + ty + i * BY
                    if o < cout_g:
                        oc = g * cout_g + o
                        v = acc[i * RN + j]
                        if HAS_BIAS:
                            v += ACC(b[oc])
                        out[nn, oc, oy, ox] = v

    return _conv_tiles
