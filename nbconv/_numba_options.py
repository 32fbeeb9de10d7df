"""The one place that holds the Numba options of nbconv's CPU kernels (numba-stats' habit)."""

from __future__ import annotations

import os
import warnings

import numba


def disk_cache_folder(py_file: str) -> str | None:
    """The folder where Numba keeps compiled functions of ``py_file`` (the first of its cache
    locators that can write: ``NUMBA_CACHE_DIR``, ``__pycache__`` beside the file, the user's
    cache folder), or None where none can: on a read-only install with a read-only home and no
    ``NUMBA_CACHE_DIR``, where ``cache=True`` would raise at the first compile."""
    try:
        from numba.core.caching import CacheImpl
    except ImportError:  # a Numba that moved it: let Numba decide
        return os.path.join(os.path.dirname(py_file), "__pycache__")

    def probe():
        pass

    for locator in CacheImpl._locator_classes:
        try:
            found = locator.from_function(probe, py_file)
        except Exception:  # noqa: BLE001, S112 (a locator that cannot tell is one that cannot write)
            continue
        if found is not None:
            return found.get_cache_path()
    return None


def disk_cache_usable(py_file: str) -> bool:
    """Whether Numba can keep compiled functions of ``py_file`` on disk."""
    return disk_cache_folder(py_file) is not None


#: Compiled kernels are kept on disk where Numba can write (said once in a warning where not).
CACHE = disk_cache_usable(__file__)
if not CACHE:
    warnings.warn("nbconv: Numba cannot write its on-disk cache here (read-only install and home); kernels are "
                  "compiled again in every process. Set NUMBA_CACHE_DIR to a writable folder to keep them.",
                  RuntimeWarning, stacklevel=2)

#: ``error_model="numpy"``: no ZeroDivisionError checks in the loops, so LLVM can vectorise them.
#: ``fastmath={"contract"}`` lets LLVM fuse a * b + c into one FMA (as oneDNN and cuDNN do) but
#: not reassociate sums: a result does not depend on the vector width.
_COMMON = dict(cache=CACHE, nogil=True, error_model="numpy", fastmath={"contract"})
CPU_PARALLEL = dict(parallel=True, **_COMMON)
CPU_SERIAL = dict(**_COMMON)
#: Dot products (the weight gradient's): ``reassoc`` lets LLVM keep vector partial sums in
#: registers, which is 2-3.5x faster than partial sums in memory. The order of the additions is
#: fixed by the compiled code (the vector width and interleave LLVM picks for the host CPU), so a
#: result is bit-identical run after run and whatever the thread count, on one machine and build.
CPU_REDUCTION = dict(cache=CACHE, nogil=True, error_model="numpy", fastmath={"contract", "reassoc"})


#: Each product rounded, then added, as NumPy does (no FMA contraction): for a fix-up whose sums
#: must be those an unfused reference computes.
CPU_PARALLEL_UNFUSED = {"parallel": True, "cache": CACHE, "nogil": True, "error_model": "numpy"}


def njit_parallel(fn):
    return numba.njit(**CPU_PARALLEL)(fn)


def njit_serial(fn):
    return numba.njit(**CPU_SERIAL)(fn)


def njit_reduction(fn):
    return numba.njit(**CPU_REDUCTION)(fn)
