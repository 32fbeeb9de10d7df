"""Installed package versions known not to work together on the CUDA path, checked once when the
CUDA backend is first imported (the first call on a GPU array, or ``compile_ptx``), so that a
broken environment gives one clear error instead of a traceback from inside numba-cuda.

The same table is what ``tests/test_install.py`` checks the resolved ``cuda12`` / ``cuda13`` extras
against, for the Python versions CI does not run.
"""

from __future__ import annotations

import re
from importlib import metadata
from typing import NamedTuple


class Breakage(NamedTuple):
    """``package`` at versions ``<= up_to`` fails with ``other`` at versions ``>= from_``."""

    package: str
    up_to: str
    other: str
    from_: str
    why: str
    fix: str


KNOWN_BROKEN = (
    Breakage("numba-cuda", "0.30.4", "numpy", "2.5",
             "numba-cuda 0.30.4 and older call np.row_stack, which NumPy 2.5 removed, when they build "
             "their typing context (AttributeError at the first kernel compile)",
             'pip install "numpy<2.5"'),
)


def release(version: str) -> tuple[int, ...]:
    """The release numbers of a version string: ``'2.5.0rc1'`` -> ``(2, 5, 0)``."""
    match = re.match(r"\d+(?:\.\d+)*", version.strip())
    return tuple(int(p) for p in match.group().split(".")) if match else ()


def _at_least(version: str, bound: str) -> bool:
    v, b = release(version), release(bound)
    return v[:len(b)] >= b


def _at_most(version: str, bound: str) -> bool:
    v, b = release(version), release(bound)
    return v[:len(b)] <= b


def broken(versions: dict[str, str]) -> list[str]:
    """Messages for every known breakage among ``versions`` (distribution name -> version)."""
    found = []
    for b in KNOWN_BROKEN:
        mine, other = versions.get(b.package), versions.get(b.other)
        if mine and other and _at_most(mine, b.up_to) and _at_least(other, b.from_):
            found.append(f"{b.package} {mine} with {b.other} {other}: {b.why}. Fix: {b.fix}")
    return found


def installed() -> dict[str, str]:
    """Versions of the packages the table names, as installed (absent ones left out)."""
    names = {n for b in KNOWN_BROKEN for n in (b.package, b.other)}
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def check_installed() -> None:
    """Raise ImportError naming the versions and the fix if the installed set is known to break."""
    problems = broken(installed())
    if problems:
        raise ImportError("nbconv's CUDA backend cannot run with the installed packages:\n  "
                          + "\n  ".join(problems))
