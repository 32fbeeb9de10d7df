"""The CPU inner loops vectorise: a change that makes LLVM give up (aliasing, a branch in the loop,
a signed index) is a silent 5-10x slowdown that no correctness test sees.

Each inner-loop helper is compiled afresh (no cache) with the options of the kernels, for the
argument types the kernels pass, and its assembly must hold packed FMAs on the host's widest
vectors (zmm with AVX-512, else ymm).
"""

from __future__ import annotations

import re

import numba
import pytest
from llvmlite import binding as llvm
from numba import types

from nbconv._numba_options import CPU_REDUCTION, CPU_SERIAL
from nbconv.cpu import _packed

F32 = types.float32[::1]
I64 = types.int64
FEATURES = llvm.get_host_cpu_features()
REG = "zmm" if FEATURES.get("avx512f") else "ymm"

pytestmark = pytest.mark.skipif(not FEATURES.get("fma"), reason="the host has no FMA instructions")


def _asm(fn, sig) -> str:
    fresh = numba.njit(sig, **{**CPU_SERIAL, "cache": False})(fn.py_func)
    return fresh.inspect_asm(fresh.signatures[0])


def _packed_fmas(asm: str) -> int:
    return len(re.findall(rf"vfmadd\w*ps\s+[^\n]*%{REG}", asm))


@pytest.mark.parametrize("width", [1, 3, 5, 6, 7])
def test_kernel_row_vectorises(width):
    cols = types.UniTuple(I64, width)
    sig = (F32, F32, I64, I64, cols, cols, F32, I64, types.boolean, types.float32)
    assert _packed_fmas(_asm(_packed._row_taps, sig)) >= width


@pytest.mark.parametrize("width", [3, 5, 6])  # up to MAX_PASS_TAPS
def test_four_channel_kernel_row_vectorises(width):
    cols = types.UniTuple(I64, width)
    sig = (F32, F32, F32, F32, F32, I64, I64, cols, cols, F32, I64, I64, types.boolean) + (types.float32,) * 4
    assert _packed_fmas(_asm(_packed._row_taps4, sig)) >= 4 * width


def _asm_reduction(fn, sig) -> str:
    fresh = numba.njit(sig, **{**CPU_REDUCTION, "cache": False})(fn.py_func)
    return fresh.inspect_asm(fresh.signatures[0])


def test_weight_gradient_dot_products_vectorise():
    sig = (F32, F32, I64, I64, I64, I64, I64, types.float32)
    assert _packed_fmas(_asm_reduction(_packed._dot3, sig)) >= 3
    sig4 = (F32, F32, F32, F32, F32, I64, I64, I64, I64, I64, types.float32)
    assert _packed_fmas(_asm_reduction(_packed._dot3x4, sig4)) >= 12
