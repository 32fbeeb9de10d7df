"""The one place that holds the Numba options of nbconv's CPU kernels (numba-stats' habit)."""

from __future__ import annotations

import numba

#: ``error_model="numpy"``: no ZeroDivisionError checks in the loops, so LLVM can vectorise them.
#: ``fastmath={"contract"}`` lets LLVM fuse a * b + c into one FMA (as oneDNN and cuDNN do) but
#: not reassociate sums: a result does not depend on the vector width.
_COMMON = dict(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
CPU_PARALLEL = dict(parallel=True, **_COMMON)
CPU_SERIAL = dict(**_COMMON)
#: Dot products (the weight gradient's): ``reassoc`` lets LLVM keep vector partial sums in
#: registers, which is 2-3.5x faster than partial sums in memory. The order of the additions is
#: fixed by the compiled code (the vector width and interleave LLVM picks for the host CPU), so a
#: result is bit-identical run after run and whatever the thread count, on one machine and build.
CPU_REDUCTION = dict(cache=True, nogil=True, error_model="numpy", fastmath={"contract", "reassoc"})


def njit_parallel(fn):
    return numba.njit(**CPU_PARALLEL)(fn)


def njit_serial(fn):
    return numba.njit(**CPU_SERIAL)(fn)


def njit_reduction(fn):
    return numba.njit(**CPU_REDUCTION)(fn)
