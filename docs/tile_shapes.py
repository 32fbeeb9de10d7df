"""The tile kernels' step for other tile and micro-tile shapes, without a GPU (sm_90 SASS).

For AlexNet's grouped 5x5 layer (``alexnet_g2``: 128 output channels per group, 1200 terms
per output) the forward and weight-gradient tile kernels in use (64 x 64 tiles, 4 x 4 outputs a
thread) execute about three instructions per FFMA: per step, the loads into shared memory cost
about 45 instructions per value, and each FFMA needs half a shared load. Larger micro-tiles feed
more FFMA from each load. This prints, for a few tile shapes, each with the products' shared
memory indexed signed (the default) and unsigned (``_tiles.UNSIGNED_PRODUCT_INDICES``): registers
a thread, spills, threads an SM keeps resident, and per step a thread's FFMA, shared loads,
executed instructions and the FFMA share (:func:`cuda_sass.tile_step_figures`). Static figures
only: occupancy and latency decide on a GPU, where ``nbconv bench --backend cuda`` times them.
Needs ptxas and cuobjdump (pip wheels ``nvidia-cuda-nvcc``, ``nvidia-cuda-cuobjdump``) and NVVM.

    python docs/tile_shapes.py
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "0")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, HERE)

#: (tile (TM, TN, TK), micro-tile (RM, RN)): the shape in use first
SHAPES = (((64, 64, 16), (4, 4)), ((64, 128, 8), (4, 8)), ((128, 64, 8), (8, 4)), ((128, 128, 8), (8, 8)))


def main() -> int:
    import numpy as np
    from cuda_sass import resident_threads, tile_step_figures
    from sass import cuda_tool, ptxas_report

    from nbconv.cuda import _launch, _tiles
    from nbconv.cuda._compile import compile_key
    from nbconv.cuda._conv_tiles import ConvTileKey
    from nbconv.cuda._wgrad_tiles import TileReduceKey

    if cuda_tool("ptxas") is None or cuda_tool("cuobjdump") is None:
        print("needs ptxas and cuobjdump: pip install nvidia-cuda-nvcc nvidia-cuda-cuobjdump")
        return 1
    print("| kernel | tile | micro | indices | registers | spills (B) | resident threads | FFMA/step | LDS/step "
          "| instructions/step | FFMA share |\n|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for unsigned in (False, True):
        _tiles.UNSIGNED_PRODUCT_INDICES = unsigned
        _launch.forget_kernels()
        for kind in ("forward", "weight grad"):
            for tile, micro in SHAPES:
                if kind == "forward":
                    key = ConvTileKey((5, 5), (1, 1), (1, 1), tile, micro, False, False)
                else:
                    key = TileReduceKey((5, 5), (1, 1), (1, 1), tile, micro, False)
                key.check()
                report = ptxas_report(compile_key(key, np.dtype(np.float32), (9, 0))[0])[0]
                step = tile_step_figures(key)
                spills = report["spill_stores"] + report["spill_loads"]
                resident = resident_threads(report["registers"], key.threads, key.shared_bytes)
                print(f"| {kind} | {'x'.join(map(str, tile))} | {micro[0]}x{micro[1]} | "
                      f"{'unsigned' if unsigned else 'signed'} | {report['registers']} | {spills} | {resident} | "
                      f"{step['ffma']} | {step['lds']} | {step['executed']} | {step['ffma_share']:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
