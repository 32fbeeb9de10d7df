"""The CPU that Numba compiles nbconv's kernels for, as far as the kernels and their tests need it.

Numba compiles for ``NUMBA_CPU_NAME`` and ``NUMBA_CPU_FEATURES`` when they are set (an empty
feature string means the named CPU's own features), else for the host. That target, not the host,
decides which vector registers the code uses: compiled for ``skylake-avx512`` on an AVX2-only
machine, the kernels hold AVX-512 instructions (they can be read, not run).

:func:`vector_bits` asks LLVM itself, by compiling one 16-lane float32 addition for the target and
reading the widest register in the assembly, instead of parsing feature names: a CPU name alone
implies its features, and only LLVM knows which.
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

from llvmlite import binding as llvm
from numba.core import config

#: One 512-bit vector operation; LLVM splits it into halves or quarters on narrower targets.
_PROBE_IR = """
define <16 x float> @probe(<16 x float> %a, <16 x float> %b) {
  %c = fadd <16 x float> %a, %b
  ret <16 x float> %c
}
"""

_REGISTER_BITS = {"zmm": 512, "ymm": 256, "xmm": 128}


class Target(NamedTuple):
    """What Numba compiles for: the CPU's LLVM name, the feature string it passes to LLVM (empty:
    the CPU's own), the widest vector register in bits, and how many vector registers there are."""

    name: str
    features: str
    vector_bits: int
    vector_registers: int


def _name_and_features() -> tuple[str, str]:
    # The same rule as numba.core.codegen.JITCPUCodegen's _get_host_cpu_name / _get_host_cpu_features.
    name = config.CPU_NAME or llvm.get_host_cpu_name()
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else llvm.get_host_cpu_features().flatten()
    return name, features


def widest_register_bits(asm: str) -> int:
    """Bits of the widest x86 vector register that ``asm`` names (0 when it names none)."""
    return max((_REGISTER_BITS[r] for r in re.findall(r"%([xyz]mm)\d", asm)), default=0)


@functools.cache
def target() -> Target:
    """The compile target of this process (fixed once Numba is imported)."""
    name, features = _name_and_features()
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    machine = llvm.Target.from_triple(llvm.get_process_triple()).create_target_machine(
        cpu=name, features=features, opt=2)
    module = llvm.parse_assembly(_PROBE_IR)
    bits = widest_register_bits(machine.emit_assembly(module))
    if not bits:  # not x86: llvmlite names no registers we know; assume 128-bit vectors (NEON)
        return Target(name, features, 128, 32)
    return Target(name, features, bits, 32 if bits == 512 else 16)


def vector_bits() -> int:
    """Width of the target's widest vector register: 512 with AVX-512, 256 with AVX2, 128 else."""
    return target().vector_bits


_LANES: dict = {}


def target_lanes(dtype) -> int:
    """Elements of ``dtype`` (a NumPy dtype or scalar type) per vector register of the target,
    remembered per dtype: the launchers ask on every call (0.8 us a time with ``np.dtype``)."""
    lanes = _LANES.get(dtype)
    if lanes is None:
        import numpy as np

        lanes = _LANES[dtype] = target().vector_bits // 8 // np.dtype(dtype).itemsize
    return lanes
