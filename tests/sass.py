"""What ptxas makes of a PTX module for sm_90, without a GPU: registers, spills, the SASS mix.

Needs the pip wheels ``nvidia-cuda-nvcc`` (ptxas) and, for the instruction mix,
``nvidia-cuda-cuobjdump``. Used by ``tests/compile_kernels.py --no-spill`` (the test suite's
spill check) and ``docs/cuda_sass.py`` (the report).
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import tempfile
from collections import Counter

_INSTRUCTION = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)")


def cuda_tool(name: str) -> str | None:
    """Path of a CUDA command-line tool from the ``nvidia-cuda-*`` wheels, else from PATH."""
    try:
        import nvidia

        for root in nvidia.__path__:
            found = glob.glob(os.path.join(root, "cu*", "bin", name)) + glob.glob(os.path.join(root, "*", "bin", name))
            if found:
                return found[0]
    except ImportError:
        pass
    from shutil import which

    return which(name)


def _ptxas(ptx: str, cc: str, tmp: str) -> tuple[str, str]:
    src, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
    with open(src, "w") as f:
        f.write(ptx)
    info = subprocess.run([cuda_tool("ptxas"), f"-arch=sm_{cc}", "-v", "-o", cubin, src], capture_output=True,
                          text=True, check=True).stderr
    return info, cubin


def _resources(info: str) -> list[dict]:
    regs = [int(r) for r in re.findall(r"Used (\d+) registers", info)]
    stores = [int(s) for s in re.findall(r"(\d+) bytes spill stores", info)]
    loads = [int(s) for s in re.findall(r"(\d+) bytes spill loads", info)]
    smem = [int(s) for s in re.findall(r"(\d+) bytes smem", info)] or [0] * len(regs)
    return [{"registers": r, "spill_stores": s, "spill_loads": lo, "smem": m}
            for r, s, lo, m in zip(regs, stores, loads, smem)]


def ptxas_resources(ptx: str, cc: str = "90") -> list[dict]:
    """Per entry function of ``ptx``: registers, spill store/load bytes and shared memory."""
    with tempfile.TemporaryDirectory() as tmp:
        return _resources(_ptxas(ptx, cc, tmp)[0])


def ptxas_report(ptx: str, cc: str = "90") -> list[dict]:
    """:func:`ptxas_resources` plus the SASS instruction mix (``cuobjdump -sass``)."""
    with tempfile.TemporaryDirectory() as tmp:
        info, cubin = _ptxas(ptx, cc, tmp)
        sass = subprocess.run([cuda_tool("cuobjdump"), "-sass", cubin], capture_output=True, text=True,
                              check=True).stdout
    bodies = re.split(r"\n\s+Function : ", sass)[1:]
    out = []
    for res, body in zip(_resources(info), bodies):
        ops = Counter(op.split(".")[0] for op in _INSTRUCTION.findall(body))
        total = sum(ops.values())
        fma = ops["FFMA"] + ops["HFMA2"] + ops["DFMA"]
        out.append({**res, "instructions": total, "fma": fma, "fma_share": fma / max(total, 1),
                    "ldg": ops["LDG"] + ops["LD"], "lds": ops["LDS"], "calls": ops["CALL"],
                    "top": ops.most_common(6)})
    return out


_LINE = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", re.M)


def step_loop_mix(ptx: str, cc: str = "90", pairs: bool = False) -> dict:
    """Executed instructions per step of a tile kernel (``_conv_tiles``, ``_wgrad_tiles``), from
    its SASS: the step is the loop around both barriers (loads into shared memory, products), or
    with ``pairs`` (the pair reduction of ``_reduce``) its largest loop before the first barrier;
    the products' loop inside it runs ``products_per_step / ffma_per_pass`` passes per step.
    Returns the loop sizes and the FFMA and LDS counts, static (``step_*``: one pass of the
    products) and per step (``per_step_*``: the products' loop repeated)."""
    with tempfile.TemporaryDirectory() as tmp:
        _, cubin = _ptxas(ptx, cc, tmp)
        sass = subprocess.run([cuda_tool("cuobjdump"), "-sass", cubin], capture_output=True, text=True,
                              check=True).stdout
    lines = [(int(a, 16), text) for a, text in _LINE.findall(sass)]
    addresses = [a for a, _ in lines]
    ops = [text.split()[1] if text.startswith("@") else text.split()[0] for _, text in lines]
    bars = [i for i, op in enumerate(ops) if op.startswith("BAR")]
    loops = []  # (first, last) instruction index of each backward branch's loop
    for i, (a, text) in enumerate(lines):
        m = re.search(r"BRA\s.*?0x([0-9a-f]+)", text)
        if m and int(m.group(1), 16) < a and int(m.group(1), 16) in addresses:
            loops.append((addresses.index(int(m.group(1), 16)), i))
    if pairs:  # the pair reduction: its loop over strips, before the first barrier
        first, last = max(((f, l) for f, l in loops if l < bars[0]), key=lambda fl: fl[1] - fl[0])
        step = Counter(op.split(".")[0] for op in ops[first:last + 1])
        return {"step_instructions": last - first + 1, "step_ffma": step["FFMA"] + step["DFMA"],
                "step_lds": step["LDS"], "step_loads": step["LDG"] + step["LD"]}
    first, last = max(((f, l) for f, l in loops if f < bars[0] and l > bars[1]), key=lambda fl: fl[1] - fl[0])
    inner = [(f, l) for f, l in loops if first < f and l < last]
    step = Counter(op.split(".")[0] for op in ops[first:last + 1])
    out = {"step_instructions": last - first + 1, "step_ffma": step["FFMA"] + step["DFMA"], "step_lds": step["LDS"]}
    if inner:
        f, l = max(inner, key=lambda fl: fl[1] - fl[0])
        pas = Counter(op.split(".")[0] for op in ops[f:l + 1])
        out.update(products_instructions=l - f + 1, products_ffma=pas["FFMA"] + pas["DFMA"], products_lds=pas["LDS"])
    return out
