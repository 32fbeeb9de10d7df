"""The one place that holds the Numba options of nbconv's CPU kernels (numba-stats' habit)."""

from __future__ import annotations

import numba

#: ``error_model="numpy"``: no ZeroDivisionError checks in the loops, so LLVM can vectorise them.
#: No ``fastmath``: results must not depend on the vector width (the same answer on any CPU).
CPU_PARALLEL = dict(parallel=True, cache=True, nogil=True, error_model="numpy")
CPU_SERIAL = dict(cache=True, nogil=True, error_model="numpy")


def njit_parallel(fn):
    return numba.njit(**CPU_PARALLEL)(fn)


def njit_serial(fn):
    return numba.njit(**CPU_SERIAL)(fn)
