"""Launching the plane kernel without numba-cuda's dispatcher: the same PTX, loaded by CuPy.

numba-cuda's dispatcher costs 50-115 us of host time per launch (argument typing, ctypes
packing, context checks); CuPy's ``RawModule`` launches the same PTX for about 16-29 us
(``docs/launch_paths.py`` on an H200). This path compiles each plane-kernel specialisation once
with Numba (``numba.cuda.compile_ptx``, as the test suite's compile check does), loads it with
CuPy, and on each call packs the arguments in Numba's kernel ABI by hand:

- an array becomes ``meminfo`` (pointer, 0), ``parent`` (pointer, 0), ``nitems`` (int64),
  ``itemsize`` (int64), ``data`` (pointer), then its shape and its strides in bytes (int64 each);
- an integer becomes an int64.

Every field is 8 bytes, so the arguments go to CuPy as plain Python ints (which it passes as
int64): building them costs a few microseconds, where NumPy scalars cost about 80.

It is taken for CuPy arrays when the environment variable ``NBCONV_CUDA_LAUNCH=raw`` is set,
until a GPU has checked it against the dispatcher (``docs/gpu_check.sh`` runs the CUDA tests
both ways); :func:`flatten` and :func:`kernel_params` let the tests check the packing against
the PTX's parameter list without a GPU.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import tempfile
from typing import Any

import numpy as np

#: ``NBCONV_CUDA_LAUNCH=raw``: launch the plane kernel through CuPy for CuPy arrays.
ENABLED = os.environ.get("NBCONV_CUDA_LAUNCH", "numba").strip().lower() == "raw"

_ENTRY = re.compile(r"\.entry\s+(\S+)\s*\(")
_PARAM = re.compile(r"\.param\s+\.(\w)(\d+)\s+")


def flatten(shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int, ptr: int) -> tuple[int, ...]:
    """One array argument in Numba's kernel ABI (see the module docstring), as Python ints:
    every field is 8 bytes, and CuPy passes a Python int as an int64 (pointers fit in one)."""
    nitems = 1
    for n in shape:
        nitems *= n
    return (0, 0, nitems, itemsize, ptr, *shape, *strides)


def flatten_cupy(a: Any, batched: bool = True) -> tuple:
    """A CuPy array in Numba's ABI; ``batched=False`` adds a leading axis of length 1."""
    shape, strides = a.shape, a.strides
    if not batched:
        shape, strides = (1,) + shape, (0,) + strides
    return flatten(shape, strides, a.itemsize, a.data.ptr)


def kernel_params(ptx: str) -> tuple[str, list[int]]:
    """The entry name of ``ptx`` and the byte size of each of its parameters."""
    entry = _ENTRY.search(ptx)
    if entry is None:
        raise ValueError("no .entry in the PTX")
    body = ptx[entry.end():ptx.index(")", entry.end())]
    return entry.group(1), [int(bits) // 8 for _, bits in _PARAM.findall(body)]


def arguments(spec, cfg, x: Any, w: Any, b: Any, out: Any) -> tuple:
    """The packed arguments of the plane kernel for ``spec`` and its launch ``cfg``."""
    batched = not spec.unbatched
    return (flatten_cupy(x, batched) + flatten_cupy(w) + flatten_cupy(b if b is not None else w)
            + flatten_cupy(out, batched)
            + (spec.padding[0], spec.padding[2], spec.groups, spec.in_per_group, spec.out_per_group,
               cfg.n_oc_blocks, cfg.planes))


def layout(*arrays: Any, batched: bool = True) -> str:
    """"C" when every array is C-contiguous and batched (as Numba would type them), else "A"."""
    if not batched:
        return "A"
    return "C" if all(a is None or a.flags.c_contiguous for a in arrays) else "A"


@functools.lru_cache(maxsize=None)
def _function(key, dtype: np.dtype, array_layout: str, cc: tuple[int, int]):
    """The CuPy function of the plane kernel for ``key``, ``dtype`` and layout on ``cc``."""
    from ._compile import compile_forward

    ptx = compile_forward(key, dtype, cc, layout=array_layout)
    entry, _ = kernel_params(ptx)
    cupy = sys.modules["cupy"]
    with tempfile.TemporaryDirectory() as tmp:  # RawModule takes PTX from a file
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        module = cupy.RawModule(path=path)
        return module.get_function(entry)


def _compute_capability() -> tuple[int, int]:
    cc = sys.modules["cupy"].cuda.Device().compute_capability  # "90"
    return (int(cc[:-1]), int(cc[-1]))


def launch_plane(spec, cfg, x: Any, w: Any, b: Any, out: Any) -> None:
    """Launch the plane kernel of ``cfg`` on CuPy arrays, on CuPy's current stream."""
    array_layout = layout(x, w, b, out, batched=not spec.unbatched)
    function = _function(cfg.key, spec.dtype, array_layout, _compute_capability())
    function(cfg.grid, cfg.block, arguments(spec, cfg, x, w, b, out))
