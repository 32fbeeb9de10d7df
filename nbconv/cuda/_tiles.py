"""What the two tile kernels (``_conv_tiles``, ``_wgrad_tiles``) share: of their keys, the thread
grid and shared memory of a ``tile = (TM, TN, TK)`` computed ``micro = (RM, RN)`` a thread; and
the products of one staged step (:func:`micro_product`), a device function inlined into both
(``inline="always"``: Numba inlines it before NVVM sees it, so ``numba.cuda.compile_ptx`` needs
no GPU context for it, and the SASS is what the loop written out in each kernel gave)."""

from __future__ import annotations

import functools

from numba import cuda, int32, int64, uint32


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


#: Index the staged slices with unsigned 32-bit values in the products. With a micro-tile of
#: 8 x 8 the signed indices cost a negative-index test per shared load that NVVM keeps inside the
#: products' loop (sm_90: 171 instructions a pass of 64 FFMA, 88 unsigned); for the 4 x 4 tiles
#: in use the two are within about 10% either way (``python docs/tile_shapes.py``). Off until a
#: GPU has timed the larger tiles it makes worth having.
UNSIGNED_PRODUCT_INDICES = False


@functools.lru_cache(maxsize=None)
def micro_product(key):
    """``product(a_tile, b_tile, av, bv, acc, tx, ty)``: a thread's ``RM x RN`` micro-tile of
    the step staged in ``a_tile`` (TK rows of the TM-side slice) and ``b_tile`` (TK rows of the
    TN-side slice) added into ``acc``, through the registers ``av`` and ``bv``; the thread's
    rows are ``ty + i * BY``, its columns ``tx + j * BX``."""
    (_, _, tk), (rm, rn) = key.tile, key.micro
    bx, by = thread_grid(key)

    # the step's counter and the slices' column indices: 32-bit unsigned, or int32 and int64
    counter, index = (uint32, uint32) if UNSIGNED_PRODUCT_INDICES else (int32, int64)

    @cuda.jit(device=True, inline="always")
    def product(a_tile, b_tile, av, bv, acc, tx, ty):
        tyi, txi = index(ty), index(tx)
        kq = counter(0)
        while kq < tk:  # a 32-bit counter: NVVM unrolls this loop (not a range over TK)
            for i in range(rm):
                av[i] = a_tile[kq, tyi + index(i * by)]
            for j in range(rn):
                bv[j] = b_tile[kq, txi + index(j * bx)]
            for i in range(rm):
                for j in range(rn):
                    acc[i * rn + j] += av[i] * bv[j]
            kq += counter(1)

    return product
