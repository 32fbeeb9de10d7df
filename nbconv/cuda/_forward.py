"""CUDA kernels of the forward grouped convolution, built per compile-time key and cached.

A thread block computes one spatial tile of ``tile_h x tile_w`` output pixels for a block of
``oc_block`` output channels of one group of one image: each thread owns one output pixel and
keeps ``oc_block`` accumulators in registers. For every input channel of the group the block
stages the input tile with its halo in shared memory (converted to the accumulation type), then
every thread walks the ``kh x kw`` taps, which unroll because the kernel size, stride and
dilation are constants of the specialisation. Weights are read from global memory with a
uniform address across the block (one broadcast load per warp, served by L1).

When the halo tile would not fit in shared memory (huge dilated kernels) the kernel is built
with ``stage_input=False`` and reads the input straight from global memory instead.

The transposed convolution (and so the input gradient) is this kernel with another index map:
the input is read as if dilated by ``lhs_dilation`` (zeros between pixels, never stored), and
the weight as if flipped and transposed per group (``transposed_weight``).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from numba import cuda, float32, float64


class ForwardKey(NamedTuple):
    """Everything a forward kernel is specialised on (besides the argument types)."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    tile: tuple[int, int]  # (tile_h, tile_w) output pixels = (blockDim.y, blockDim.x)
    oc_block: int  # output channels per thread
    acc_double: bool  # accumulate in float64 (float64 data) or float32 (float16/float32 data)
    has_bias: bool
    stage_input: bool  # halo tile in shared memory, or direct global reads
    #: conv_transpose2d / grad.conv2d_input: zeros between input pixels (the transposed stride) ...
    lhs_dilation: tuple[int, int] = (1, 1)
    #: ... and the weight is (C_in, C_out/groups, kH, kW), read flipped and transposed per group
    transposed_weight: bool = False

    @property
    def halo_tile(self) -> tuple[int, int]:
        """Input rows x columns a block needs for its output tile."""
        (kh, kw), (sh, sw), (dh, dw), (th, tw) = self.kernel_size, self.stride, self.dilation, self.tile
        return ((th - 1) * sh + (kh - 1) * dh + 1, (tw - 1) * sw + (kw - 1) * dw + 1)

    @property
    def shared_bytes(self) -> int:
        rows, cols = self.halo_tile
        return rows * cols * (8 if self.acc_double else 4) if self.stage_input else 0


@functools.lru_cache(maxsize=None)
def forward_kernel(key: ForwardKey):
    """The ``@cuda.jit`` kernel for ``key`` (built once per key; Numba compiles per argument types)."""
    KH, KW = key.kernel_size
    SH, SW = key.stride
    DH, DW = key.dilation
    TH, TW = key.tile
    OCB = key.oc_block
    ACC = float64 if key.acc_double else float32
    HAS_BIAS = key.has_bias
    STAGE = key.stage_input
    SM_H, SM_W = key.halo_tile if STAGE else (1, 1)
    LH, LW = key.lhs_dilation
    TRANSPOSED = key.transposed_weight

    @cuda.jit
    def _forward_tile(x, w, b, out, pad_h, pad_w, groups, n_oc_blocks, tiles_h, tiles_w):
        n_img, _, in_h, in_w = x.shape
        if TRANSPOSED:  # w: (C_in, C_out/groups, kH, kW)
            cin_g = w.shape[0] // groups
            c_out = w.shape[1] * groups
        else:  # w: (C_out, C_in/groups, kH, kW)
            c_out, cin_g = w.shape[0], w.shape[1]
        dil_h = (in_h - 1) * LH + 1  # size of the (virtually) dilated input
        dil_w = (in_w - 1) * LW + 1
        out_h, out_w = out.shape[2], out.shape[3]
        cout_g = c_out // groups

        bid = cuda.blockIdx.x
        tile_x = bid % tiles_w
        bid //= tiles_w
        tile_y = bid % tiles_h
        bid //= tiles_h
        ocb = bid % n_oc_blocks
        bid //= n_oc_blocks
        g = bid % groups
        n = bid // groups

        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        oy = tile_y * TH + ty
        ox = tile_x * TW + tx
        iy0 = tile_y * TH * SH - pad_h  # input row of the halo tile's first row
        ix0 = tile_x * TW * SW - pad_w
        oc0 = g * cout_g + ocb * OCB
        oc_end = (g + 1) * cout_g

        tile = cuda.shared.array((SM_H, SM_W), ACC)
        acc = cuda.local.array(OCB, ACC)
        for j in range(OCB):
            acc[j] = 0

        for ci in range(cin_g):
            c = g * cin_g + ci
            if STAGE:
                for r in range(ty, SM_H, TH):
                    iy = iy0 + r
                    for s in range(tx, SM_W, TW):
                        ix = ix0 + s
                        if 0 <= iy < dil_h and 0 <= ix < dil_w and iy % LH == 0 and ix % LW == 0:
                            tile[r, s] = x[n, c, iy // LH, ix // LW]
                        else:
                            tile[r, s] = 0
                cuda.syncthreads()
            for kh in range(KH):
                for kw in range(KW):
                    if STAGE:
                        v = tile[ty * SH + kh * DH, tx * SW + kw * DW]
                    else:
                        iy = oy * SH - pad_h + kh * DH
                        ix = ox * SW - pad_w + kw * DW
                        v = ACC(0)
                        if 0 <= iy < dil_h and 0 <= ix < dil_w and iy % LH == 0 and ix % LW == 0:
                            v = ACC(x[n, c, iy // LH, ix // LW])
                    for j in range(OCB):
                        oc = min(oc0 + j, oc_end - 1)  # clamp: a valid address, result discarded
                        if TRANSPOSED:
                            wv = w[c, oc - g * cout_g, KH - 1 - kh, KW - 1 - kw]
                        else:
                            wv = w[oc, ci, kh, kw]
                        acc[j] += ACC(wv) * v
            if STAGE:
                cuda.syncthreads()

        if oy < out_h and ox < out_w:
            for j in range(OCB):
                oc = oc0 + j
                if oc < oc_end:
                    r = acc[j]
                    if HAS_BIAS:
                        r += ACC(b[oc])
                    out[n, oc, oy, ox] = r

    return _forward_tile
