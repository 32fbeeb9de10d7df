"""What the two tile kernels (``_conv_tiles``, ``_wgrad_tiles``) share: of their keys, the thread
grid and shared memory of a ``tile = (TM, TN, TK)`` computed ``micro = (RM, RN)`` a thread; and
the products of one staged step (:func:`micro_product`), a device function inlined into both
(``inline="always"``: Numba inlines it before NVVM sees it, so ``numba.cuda.compile_ptx`` needs
no GPU context for it, and the SASS is what the loop written out in each kernel gave)."""

from __future__ import annotations

import functools

from numba import cuda, int32


def thread_grid(key) -> tuple[int, int]:
    """(BX, BY): threads along the tile's columns (TN / RN) and rows (TM / RM)."""
    (tm, tn, _), (rm, rn) = key.tile, key.micro
    return tn // rn, tm // rm


def threads(key) -> int:
    bx, by = thread_grid(key)
    return bx * by


def shared_bytes(key) -> int:
    """Both slices of a step: TK rows of TM + 1 words (one of padding) and of TN words."""
    tm, tn, tk = key.tile
    return tk * (tm + 1 + tn) * (8 if key.acc_double else 4)


@functools.lru_cache(maxsize=None)
def micro_product(key):
    """``product(a_tile, b_tile, av, bv, acc, tx, ty)``: a thread's ``RM x RN`` micro-tile of
    the step staged in ``a_tile`` (TK rows of the TM-side slice) and ``b_tile`` (TK rows of the
    TN-side slice) added into ``acc``, through the registers ``av`` and ``bv``; the thread's
    rows are ``ty + i * BY``, its columns ``tx + j * BX``."""
    (_, _, tk), (rm, rn) = key.tile, key.micro
    bx, by = thread_grid(key)

    @cuda.jit(device=True, inline="always")
    def product(a_tile, b_tile, av, bv, acc, tx, ty):
        kq = int32(0)
        while kq < tk:  # a 32-bit counter: NVVM unrolls this loop (not a range over TK)
            for i in range(rm):
                av[i] = a_tile[kq, ty + i * by]
            for j in range(rn):
                bv[j] = b_tile[kq, tx + j * bx]
            for i in range(rm):
                for j in range(rn):
                    acc[i * rn + j] += av[i] * bv[j]
            kq += int32(1)

    return product
