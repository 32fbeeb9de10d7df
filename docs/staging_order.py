"""How the CUDA kernels of standard shapes stage their inputs, in sm_90 SASS, without a GPU.

For each shape (batch 32), the forward kernel it launches (plane or tile kernel) and, where it
takes one, the weight gradient's tile kernel: registers and spill bytes (``ptxas -v``), SASS
instructions and FMAs, and the order of the global loads (L), shared-memory stores (S) and
barriers (B) in the code, up to its second barrier: ``LLLLLSSSSSB`` is five loads in flight
before their stores, ``LSLSLS`` one load waited on per store. Needs the pip wheels
``nvidia-cuda-nvcc``, ``nvidia-cuda-cuobjdump`` and ``nvidia-cuda-nvdisasm``, and NVVM.

    python docs/staging_order.py [SHAPE ...] [--dtype float32] [--set NAME=VALUE ...]

``--set`` changes a tuning constant of ``nbconv.cuda._planes`` or ``_launch`` first (for
instance ``--set STAGE_CLAMPED=False`` for the loads under a bounds test).
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
import tempfile

os.environ["NUMBA_ENABLE_CUDASIM"] = "0"
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from sass import cuda_tool, ptxas_resources  # noqa: E402 (after the path insert)

_OP = re.compile(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)")


def _sass_ops(ptx: str) -> list[str]:
    tools = os.path.dirname(cuda_tool("cuobjdump") or "")
    env = dict(os.environ, PATH=tools + os.pathsep + os.environ.get("PATH", ""))  # cuobjdump runs nvdisasm
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "k.ptx"), "w") as f:
            f.write(ptx)
        cubin = os.path.join(tmp, "k.cubin")
        subprocess.run([cuda_tool("ptxas"), "-arch=sm_90", os.path.join(tmp, "k.ptx"), "-o", cubin], check=True)
        text = subprocess.run([cuda_tool("cuobjdump"), "-sass", cubin], capture_output=True, text=True, env=env,
                              check=True).stdout
    return _OP.findall(text)


def staging_order(ops: list[str]) -> str:
    """L / S / B for the global loads, shared stores and barriers of ``ops``, up to the second B."""
    marks = []
    for op in ops:
        mark = "L" if op.startswith("LDG") else "S" if op.startswith("STS") else "B" if op.startswith("BAR") else ""
        marks.append(mark)
        if "".join(marks).count("B") == 2:
            break
    return "".join(marks)


def _row(label: str, ptx: str) -> str:
    res = ptxas_resources(ptx)[0]
    ops = _sass_ops(ptx)
    fma = sum(op.startswith(("FFMA", "DFMA", "HFMA2")) for op in ops)
    return (f"{label:40s} {res['registers']:4d} regs  spill {res['spill_stores']}/{res['spill_loads']}  "
            f"{len(ops):5d} instr  {fma:4d} FMA  {staging_order(ops)}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("shapes", nargs="*", default=["mbv2_dw_112", "mbv2_dw_s2", "effnet_dw5_28", "convnext_dw7",
                                                 "dw_mult2", "alexnet_g2"])
    p.add_argument("--dtype", default="float32")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    args = p.parse_args()

    import numpy as np

    from nbconv._shapes import SHAPES_BY_NAME
    from nbconv._spec import conv2d_spec, conv2d_weight_spec
    from nbconv.cuda import _launch, _planes
    from nbconv.cuda._compile import compile_forward, compile_tiles

    for item in args.set:
        name, value = item.split("=", 1)
        module = _planes if hasattr(_planes, name) else _launch
        setattr(module, name, ast.literal_eval(value))
    _launch.forget_kernels()
    dtype = np.dtype(args.dtype)
    for name in args.shapes:
        shape = SHAPES_BY_NAME[name]
        x, w = np.empty(shape.input_shape(32), dtype), np.empty(shape.weight_shape(), dtype)
        spec = conv2d_spec(x, w, None, **shape.conv_args())
        cfg = _launch.forward_launch_config(spec)
        print(_row(f"{name} forward ({type(cfg).__name__})", compile_forward(cfg.key, dtype, (9, 0))))
        wgrad = _launch.tile_reduce_launch(conv2d_weight_spec(x, w.shape, np.empty(spec.output_shape, dtype),
                                                              **shape.conv_args()))
        if wgrad is not None:
            print(_row(f"{name} weight gradient (tiles)", compile_tiles(wgrad.key, dtype, (9, 0))[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
