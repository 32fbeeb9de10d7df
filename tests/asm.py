"""Reading the CPU kernels' x86 assembly: packed FMAs at the width the compile target gives, and
vector registers spilled to the stack.

What a test expects comes from the compile target (``nbconv.cpu._target``, which follows
``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES``), never from the host's feature list, and for loops that
LLVM vectorises itself from the compiled code of a plain loop: LLVM's tuning for Intel server CPUs
prefers 256-bit vectors for such loops even where AVX-512 is there (``prefer-256-bit``), while its
AMD Zen 4/5 tuning takes 512. The kernels written as explicit 16-lane LLVM IR (``_simd``) use zmm
with AVX-512 and are split into two ymm halves with AVX2.

Tests marked ``asm`` only compile and read; they run no kernel, so ``tests/test_cpu_targets.py``
can run them compiled for CPUs this machine is not.
"""

from __future__ import annotations

import functools
import re

import numba
import pytest
from numba import types

from nbconv._numba_options import CPU_REDUCTION, CPU_SERIAL
from nbconv.cpu._target import target, widest_register_bits

REGISTER = {512: "zmm", 256: "ymm", 128: "xmm"}


def fresh_asm(fn, sig, options) -> str:
    """The assembly of ``fn`` (a dispatcher or a plain function) compiled afresh, without Numba's
    disk cache, for ``sig`` with ``options`` (``nopython`` dropped: njit sets it)."""
    py_func = getattr(fn, "py_func", fn)
    options = {k: v for k, v in options.items() if k != "nopython"}
    compiled = numba.njit(sig, **{**options, "cache": False})(py_func)
    return compiled.inspect_asm(compiled.signatures[0])


def packed_fmas(asm: str, bits: int, precision: str = "ps") -> int:
    """Packed fused multiply-adds (``vfmadd...ps`` or ``pd``) that write a ``bits``-wide register."""
    return len(re.findall(rf"vfn?m(?:add|sub)\w*{precision}\s+[^\n]*%{REGISTER[bits]}\d+\s*$", asm, re.MULTILINE))


def compiled_body(asm: str) -> str:
    """``asm`` without the functions Numba wraps a kernel in (the CPython wrapper and the cfunc,
    whose copies of array structs are vector stores to the stack that are not spills)."""
    parts = re.split(r"^(?=\s*\.globl\s)", asm, flags=re.MULTILINE)
    return "".join(p for p in parts if not re.match(r"\s*\.globl\s+(cfunc\.|_ZN7cpython)", p))


def spills(asm: str, bits: int) -> list[str]:
    """Stores of a ``bits``-wide vector register to the stack."""
    return re.findall(rf"vmov\w+\s+%{REGISTER[bits]}\d+, [-\d]*\(%rsp\)", asm)


def _axpy(a, b, c, n):
    for i in range(n):
        a[i] += b[i] * c[i]


def _dot(a, b, n):
    s = numba.float32(0)
    for i in range(n):
        s += a[i] * b[i]
    return s


@functools.cache
def _loop_bits(reduction: bool) -> int:
    f32 = types.float32[::1]
    if reduction:
        asm = fresh_asm(_dot, (f32, f32, types.int64), CPU_REDUCTION)
    else:
        asm = fresh_asm(_axpy, (f32, f32, f32, types.int64), CPU_SERIAL)
    fmas = re.findall(r"vfmadd\w*ps\s+[^\n]*$", asm, re.MULTILINE)
    return max((widest_register_bits(line) for line in fmas), default=0)


def loop_vector_bits(options: dict) -> int:
    """The vector width LLVM gives a plain float32 loop compiled with ``options`` on the target
    (``CPU_REDUCTION``'s reassociation decides whether a sum vectorises, so it has its own probe)."""
    return _loop_bits(bool(options.get("fastmath")) and "reassoc" in options["fastmath"])


def skip_without_fma() -> None:
    """Skip the calling test where the target has no FMA instructions (baseline x86-64: LLVM
    calls libm's ``fma`` there), seen as a plain loop with no packed FMA."""
    if not loop_vector_bits(CPU_SERIAL):
        pytest.skip(f"the compile target ({target().name}) has no FMA instructions")


def assert_loop_vectorised(asm: str, fmas: int, options: dict, precision: str = "ps") -> None:
    """At least ``fmas`` packed FMAs at the width a plain loop with the same ``options`` gets."""
    skip_without_fma()
    bits = loop_vector_bits(options)
    got = packed_fmas(asm, bits, precision)
    assert got >= fmas, f"{got} packed FMAs on {REGISTER[bits]} ({target().name}), expected at least {fmas}"


def assert_explicit_vectors(asm: str, fmas: int, exact: bool = False, precision: str = "ps",
                            no_spills: bool = True) -> None:
    """The FMAs of ``fmas`` 16-lane (64-byte) vectors: one each on zmm with AVX-512, two halves
    on ymm with AVX2 (four on xmm without); and with 32 vector registers, unless ``no_spills`` is
    False, none spilled (the kernels' register budgets are sized for AVX-512's 32)."""
    skip_without_fma()
    bits = target().vector_bits
    want = fmas * (512 // bits)
    got = packed_fmas(asm, bits, precision)
    assert (got == want) if exact else (got >= want), f"{got} packed FMAs on {REGISTER[bits]}, expected {want}"
    if no_spills and target().vector_registers == 32:
        assert not spills(asm, bits), spills(asm, bits)[:3]
