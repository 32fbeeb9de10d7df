"""CUDA kernels of the weight and bias gradients: deterministic two-pass reductions.

Pass 1 (``partial_kernel``): block ``(pair, p)`` sums, for one (output channel, input channel)
pair of the weight, the ``kH x kW`` taps over the ``p``-th chunk of the (n, y, x) positions of
``grad_output``, taken a strip of ``strip`` outputs of a row at a time (decoded with 32-bit
divisions unless the sizes need 64 bits: a 64-bit division is a call to a software routine
on the GPU): per kernel row, the strip's input values are loaded once into registers and
feed ``strip * kW`` products. Each thread keeps the taps in registers, then the block adds its
threads' values with a fixed shared-memory tree and writes ``partial[p, o, c, i, j]``. Pass 2
(``finish_kernel``) adds the partials over ``p`` in order; where the positions make one chunk
(``P = 1``: small layers, and layers whose weight rows alone fill the GPU) pass 1 writes the result
itself, viewed as the one chunk's partial sums, and there is no pass 2 (one launch, no scratch).
No atomics, so the result is bit-identical run after run. The bias gradient is the same pass
with one tap and no input. Layers with many output channels per group take pass 1 by tiles instead
(:mod:`nbconv.cuda._wgrad_tiles`, same partial layout, same pass 2)."""

from __future__ import annotations

import functools
from typing import NamedTuple

from numba import config, cuda, float32, float64, int64, uint32, uint64


class ReduceKey(NamedTuple):
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    threads: int  # threads per block, a power of two
    acc_double: bool
    bias_only: bool  # grad_output summed alone (the bias gradient): one tap, no input
    #: positions (N * H_out * W_out) or weight pairs beyond 32 bits: decode indices in 64 bits
    wide_index: bool = False
    #: outputs a thread takes at a time along a row: a strip of them shares each input row's
    #: loads between its taps (``(strip - 1) * SW + (KW - 1) * DW + 1`` loads for ``strip * KW``
    #: products; with a dilation most of them would go unused: strips are for DW = 1)
    strip: int = 1

    @property
    def strip_span(self) -> int:
        """Input values of one row a thread holds: those under a strip's outputs and taps (one
        output at a time loads each where it is used: 1)."""
        if self.strip == 1:
            return 1
        kw = 1 if self.bias_only else self.kernel_size[1]
        return (self.strip - 1) * self.stride[1] + (kw - 1) * self.dilation[1] + 1


#: Registers a pair-kernel thread needs beyond twice its sums, output gradients and input values
#: (NVVM unrolls the loop over strips twice) for addresses and loop state, and the SM's register
#: file. 80, from ptxas for sm_90 (``docs/register_budgets.py``): with 64, a 4x4 kernel at stride 2
#: was capped at 128 registers and spilled 160-172 bytes; with 80, 4x4 and 3x3-at-stride-3 kernels
#: get one block of 256 threads per SM, 3x3 at stride 1 and 2 (124-128 registers) keep two.
REDUCE_OVERHEAD_REGISTERS = 80
REGISTERS_PER_SM = 65536


def reduce_launch_bounds(key: ReduceKey) -> tuple[int, int]:
    """(threads per block, min resident blocks per SM) of pass 1: ptxas caps the registers at
    ``65536 / (threads * blocks)``, so ``blocks`` (at most 4: 1024 threads) leaves a thread room
    for its values; checked by ptxas (``tests/compile_kernels.py --no-spill``: a cap from the
    values once over spilled)."""
    taps = 1 if key.bias_only else key.kernel_size[0] * key.kernel_size[1]
    values = 2 * (taps + key.strip + key.strip_span) * (2 if key.acc_double else 1)
    needed = -(-(values + REDUCE_OVERHEAD_REGISTERS) // 8) * 8
    return key.threads, max(1, min(4, REGISTERS_PER_SM // (key.threads * needed)))


@functools.lru_cache(maxsize=None)
def partial_kernel(key: ReduceKey):
    """Pass 1 for ``key``; grid (C_out * C_in/groups, P), block ``key.threads``; ``chunk``
    counts strips (``key.strip`` outputs of a row; a row's last strip may be shorter)."""
    KH, KW = (1, 1) if key.bias_only else key.kernel_size
    SH, SW = key.stride
    DH, DW = key.dilation
    NT = key.threads
    NTAPS = KH * KW
    ACC = float64 if key.acc_double else float32
    BIAS_ONLY = key.bias_only
    WIDE = key.wide_index
    RW = key.strip
    SPAN = key.strip_span

    options = {} if config.ENABLE_CUDASIM else {"launch_bounds": reduce_launch_bounds(key)}

    @cuda.jit(**options)
    def _partial(x, gy, partial, pad_h, pad_w, groups, chunk):
        n_img, c_out, out_h, out_w = gy.shape
        cin_g = partial.shape[2]
        in_h, in_w = x.shape[2], x.shape[3]
        pair = cuda.blockIdx.x
        p = cuda.blockIdx.y
        tid = cuda.threadIdx.x
        # 32-bit unsigned divisions (a few instructions) unless the sizes need 64 bits (a call),
        # the quotients back in int64: signed index arithmetic follows (offsets may be negative)
        oc = pair // cin_g if WIDE else int64(uint32(pair) // uint32(cin_g))
        ci = pair - oc * cin_g
        cout_g = c_out // groups if WIDE else int64(uint32(c_out) // uint32(groups))
        c = (oc // cout_g if WIDE else int64(uint32(oc) // uint32(cout_g))) * cin_g + ci
        row_strips = (out_w + RW - 1) // RW if WIDE else int64((uint32(out_w) + uint32(RW - 1)) // uint32(RW))

        ocu, cu = uint64(oc), uint64(c)
        acc = cuda.local.array(NTAPS, ACC)
        g = cuda.local.array(RW, ACC)
        xs = cuda.local.array(SPAN, ACC)
        for t in range(NTAPS):
            acc[t] = 0
        total = n_img * out_h * row_strips
        end = min(total, (p + 1) * chunk)
        idx = p * chunk + tid
        while idx < end:
            q = idx // row_strips if WIDE else int64(uint32(idx) // uint32(row_strips))  # (n, oy) row
            ox0 = (idx - q * row_strips) * RW
            n = q // out_h if WIDE else int64(uint32(q) // uint32(out_h))
            oy = q - n * out_h
            idx += NT
            # unsigned indices below: no wraparound code for negative values
            nu, ou = uint64(n), uint64(oy)
            for r in range(RW):  # the strip's output gradients (zeros past the row's end)
                g[r] = ACC(gy[nu, ocu, ou, uint64(ox0 + r)]) if ox0 + r < out_w else ACC(0)
            if BIAS_ONLY:
                for r in range(RW):
                    acc[0] += g[r]
            elif RW == 1:  # one output: each tap's input value loaded where it is used
                for kh in range(KH):
                    iy = oy * SH - pad_h + kh * DH
                    for kw in range(KW):
                        ix = ox0 * SW - pad_w + kw * DW
                        if 0 <= iy < in_h and 0 <= ix < in_w:
                            acc[kh * KW + kw] += g[0] * ACC(x[nu, cu, uint64(iy), uint64(ix)])
            else:
                ix0 = ox0 * SW - pad_w
                for kh in range(KH):
                    iy = oy * SH - pad_h + kh * DH
                    if 0 <= iy < in_h:
                        for i in range(SPAN):  # the input values of this row under the strip, once
                            ix = ix0 + i
                            xs[i] = ACC(x[nu, cu, uint64(iy), uint64(ix)]) if 0 <= ix < in_w else ACC(0)
                        for kw in range(KW):
                            for r in range(RW):
                                acc[kh * KW + kw] += g[r] * xs[r * SW + kw * DW]

        buf = cuda.shared.array(NT, ACC)
        for t in range(NTAPS):
            buf[tid] = acc[t]
            cuda.syncthreads()
            s = NT // 2
            while s > 0:  # fixed tree: the same additions in the same order every run
                if tid < s:
                    buf[tid] += buf[tid + s]
                cuda.syncthreads()
                s //= 2
            if tid == 0:
                partial[p, oc, ci, t // KW, t % KW] = buf[0]
            cuda.syncthreads()

    return _partial


@functools.lru_cache(maxsize=None)
def finish_kernel(out_1d: bool, wide: bool = False):
    """Pass 2: ``out[o, c, i, j] = sum over p of partial[p, o, c, i, j]`` (in order of p);
    ``out_1d``: the bias gradient, ``out[o] = sum over p of partial[p, o, 0, 0, 0]``. The
    element index is decoded with 32-bit divisions unless ``wide`` (2**32 weight elements or
    more: 64-bit divisions, calls to a software routine)."""

    @cuda.jit
    def _finish(partial, out):
        n_part, c_out, cin_g, kh_n, kw_n = partial.shape
        idx = cuda.grid(1)
        if idx >= c_out * cin_g * kh_n * kw_n:
            return
        if wide:
            rest = idx // kw_n
            kw = idx - rest * kw_n
            rest2 = rest // kh_n
            kh = rest - rest2 * kh_n
            oc = rest2 // cin_g
            ci = rest2 - oc * cin_g
        else:
            rest = uint32(idx) // uint32(kw_n)
            kw = uint32(idx) - rest * uint32(kw_n)
            rest2 = rest // uint32(kh_n)
            kh = rest - rest2 * uint32(kh_n)
            oc = rest2 // uint32(cin_g)
            ci = rest2 - oc * uint32(cin_g)
        s = partial[0, oc, ci, kh, kw]
        for p in range(1, n_part):
            s += partial[p, oc, ci, kh, kw]
        if out_1d:
            out[oc] = s
        else:
            out[oc, ci, kh, kw] = s

    return _finish
