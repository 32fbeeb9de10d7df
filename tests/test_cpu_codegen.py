"""The CPU inner loops vectorise: a change that makes LLVM give up (aliasing, a branch in the loop,
a signed index) is a silent 5-10x slowdown that no correctness test sees.

Each inner-loop helper is compiled afresh (no cache) with the options of the kernels, for the
argument types the kernels pass, and its assembly must hold packed FMAs at the width LLVM gives a
plain loop on the compile target (``tests/asm.py``): zmm on AMD Zen 4/5, ymm on Intel server CPUs
(whose tuning prefers 256-bit vectors for loops) and on AVX2-only CPUs.
"""

from __future__ import annotations

import pytest
from asm import assert_loop_vectorised, fresh_asm, loop_vector_bits, packed_fmas
from numba import types

from nbconv._numba_options import CPU_REDUCTION, CPU_SERIAL
from nbconv.cpu import _packed
from nbconv.cpu._target import target

F32 = types.float32[::1]
I64 = types.int64

pytestmark = pytest.mark.asm


@pytest.mark.parametrize("width", [1, 3, 5, 6, 7])
def test_kernel_row_vectorises(width):
    cols = types.UniTuple(I64, width)
    sig = (F32, F32, I64, I64, cols, cols, F32, I64, types.boolean, types.float32)
    assert_loop_vectorised(fresh_asm(_packed._row_taps, sig, CPU_SERIAL), width, CPU_SERIAL)


@pytest.mark.parametrize("width", [3, 5, 6])  # up to MAX_PASS_TAPS
def test_four_channel_kernel_row_vectorises(width):
    cols = types.UniTuple(I64, width)
    sig = (F32, F32, F32, F32, F32, I64, I64, cols, cols, F32, I64, I64, types.boolean) + (types.float32,) * 4
    assert_loop_vectorised(fresh_asm(_packed._row_taps4, sig, CPU_SERIAL), 4 * width, CPU_SERIAL)


def test_weight_gradient_dot_products_vectorise():
    sig = (F32, F32, I64, I64, I64, I64, I64, types.float32)
    assert_loop_vectorised(fresh_asm(_packed._dot3, sig, CPU_REDUCTION), 3, CPU_REDUCTION)
    sig4 = (F32, F32, F32, F32, F32, I64, I64, I64, I64, I64, types.float32)
    assert_loop_vectorised(fresh_asm(_packed._dot3x4, sig4, CPU_REDUCTION), 12, CPU_REDUCTION)


def _recurrence(a, b, n):
    for i in range(1, n):
        a[i] = a[i - 1] * b[i] + a[i]


def test_a_loop_that_does_not_vectorise_fails_the_check():
    """The check itself: a loop-carried recurrence compiles to scalar FMAs only, and fails."""
    asm = fresh_asm(_recurrence, (F32, F32, I64), CPU_SERIAL)
    assert "vfmadd" in asm and packed_fmas(asm, loop_vector_bits(CPU_SERIAL)) == 0
    with pytest.raises(AssertionError, match="packed FMAs"):
        assert_loop_vectorised(asm, 1, CPU_SERIAL)


def test_probe_width_follows_the_target():
    """A plain loop is vectorised at most as wide as the target's widest register, and at least
    at 128 bits."""
    bits = loop_vector_bits(CPU_SERIAL)
    assert 128 <= bits <= target().vector_bits
    assert loop_vector_bits(CPU_REDUCTION) in (bits, target().vector_bits)
