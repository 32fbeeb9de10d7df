"""The one place that holds the Numba options of nbconv's CPU kernels (numba-stats' habit)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import warnings

import numba

#: The sources whose code Numba compiles into nbconv's CPU kernels, relative to the package: a
#: kernel inlines the intrinsics and jitted helpers of other modules than its own.
KERNEL_SOURCES = ("cpu", "_numba_options.py", "_numba_types.py", "_version.py")


@functools.lru_cache(maxsize=None)
def source_digest(package: str | None = None) -> str:
    """A digest of the :data:`KERNEL_SOURCES` of the nbconv package at ``package`` (default:
    this one): the name of the folder Numba keeps nbconv's compiled kernels in.

    Numba keys a cached function on its own file's contents only, not on the intrinsics and
    jitted functions of other files that it inlines: after a change to ``cpu/_simd.py`` a
    kernel of ``cpu/_outer.py`` (or a generated module, whose text need not change) would be
    loaded as compiled from the old intrinsics, from a development tree or after an upgrade that
    left ``__pycache__`` behind. Keyed on this digest, any change to those sources compiles anew.
    """
    root = package or os.path.dirname(os.path.abspath(__file__))
    files = []
    for name in KERNEL_SOURCES:
        path = os.path.join(root, name)
        if os.path.isdir(path):
            files += sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".py"))
        elif os.path.exists(path):
            files.append(path)
    digest = hashlib.sha256()
    for path in files:
        digest.update(os.path.relpath(path, root).encode() + b"\0")
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]


def _install_digest_locator() -> None:
    """Put Numba's compiled code of nbconv's functions (the package's modules and the generated
    ``nbconv_*`` ones) in a subfolder ``nbconv-<source_digest()>`` of where Numba would keep it
    (the first of its locators that can write there). Other functions are left to Numba."""
    try:
        from numba.core.caching import CacheImpl, _CacheLocator
    except ImportError:  # a Numba that moved them: its own locators, unkeyed
        return
    defaults = [c for c in CacheImpl._locator_classes if not getattr(c, "_nbconv", False)]

    class KeyedBySources(_CacheLocator):
        _nbconv = True

        def __init__(self, inner):
            self._inner = inner

        def get_cache_path(self):
            return os.path.join(self._inner.get_cache_path(), "nbconv-" + source_digest())

        def get_source_stamp(self):
            return self._inner.get_source_stamp()

        def get_disambiguator(self):
            return self._inner.get_disambiguator()

        @classmethod
        def from_function(cls, py_func, py_file):
            module = getattr(py_func, "__module__", "") or ""
            if not (module == "nbconv" or module.startswith(("nbconv.", "nbconv_"))):
                return None
            for locator in defaults:
                try:
                    inner = locator.from_function(py_func, py_file)
                    if inner is None:
                        continue
                    keyed = cls(inner)
                    keyed.ensure_cache_path()
                except OSError:
                    continue
                return keyed
            return None

    CacheImpl._locator_classes[:] = [KeyedBySources] + defaults


_install_digest_locator()


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


def _stale_package_caches(package: str | None) -> tuple[list[str], list[str]]:
    """(files, folders) of :func:`stale_package_code`: the folders are the ``nbconv-<digest>``
    ones of other digests, empty or not."""
    root = package or os.path.dirname(os.path.abspath(__file__))
    current = "nbconv-" + source_digest(package)
    files, folders = [], []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        sources = sorted(f for f in names if f.endswith(".py"))
        compiled = disk_cache_folder(os.path.join(folder, sources[0])) if sources else None
        if compiled is None or os.path.basename(compiled) != current:
            continue
        parent = os.path.dirname(compiled)
        for name in sorted(os.listdir(parent)) if os.path.isdir(parent) else ():
            path = os.path.join(parent, name)
            if name.endswith((".nbi", ".nbc")) and os.path.isfile(path):
                files.append(path)
            elif name.startswith("nbconv-") and name != current and os.path.isdir(path):
                folders.append(path)
                files += sorted(os.path.join(path, f) for f in os.listdir(path))
    return files, folders


def stale_package_code(package: str | None = None) -> list[str]:
    """Numba's compiled code of the package's own functions that its current sources no longer
    use: in each of its source folders' cache folders (see :func:`disk_cache_folder`), the files
    of the ``nbconv-<digest>`` folders of other digests than :func:`source_digest` (left by an
    upgrade or an edit: pip does not remove ``__pycache__``), and the ``.nbi``/``.nbc`` files kept
    before there were digests. Never the code of the current sources, nor another package's."""
    return _stale_package_caches(package)[0]


def remove_stale_package_code(package: str | None = None) -> int:
    """Delete :func:`stale_package_code` and the folders of earlier digests; the count of files
    deleted. Not done on its own at import: a process of the earlier version may still be running
    and writing there."""
    files, folders = _stale_package_caches(package)
    count = 0
    for path in files:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            count += 1
    for folder in folders:
        with contextlib.suppress(OSError):  # a file written there meanwhile: kept
            os.rmdir(folder)
    return count


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


def jit(options: dict):
    """``numba.njit(**options)`` for nbconv's kernels: where ``options`` keep compiled code on
    disk, a miss of that cache is compiled by a helper process and loaded from the disk cache
    (:mod:`nbconv._compile_process`: this process keeps only the machine code)."""
    def decorate(fn):
        dispatcher = numba.njit(**options)(fn)
        if options.get("cache"):
            from . import _compile_process

            _compile_process.route(dispatcher)
        return dispatcher

    return decorate


njit_parallel = jit(CPU_PARALLEL)
njit_serial = jit(CPU_SERIAL)
njit_reduction = jit(CPU_REDUCTION)
njit_parallel_unfused = jit(CPU_PARALLEL_UNFUSED)
