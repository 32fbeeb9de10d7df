"""Compile every CUDA kernel specialisation the tests and benchmarks launch, to real PTX.

Run without the simulator (``NUMBA_ENABLE_CUDASIM=0``); needs NVVM (numba-cuda's ``cu12`` or
``cu13`` extra) but no GPU. Specs are built from stand-in objects that only carry a
``__cuda_array_interface__``, so the very launch configuration code of the CUDA backend picks
the keys. Prints one line per compute capability and exits non-zero on the first failure.

    python tests/compile_kernels.py 8.0 9.0          # every specialisation
    python tests/compile_kernels.py --cover 9.0      # a covering subset (the test suite's)
    python tests/compile_kernels.py --no-spill 9.0   # also run ptxas: fail on a local-memory spill

``--cover`` keeps, per kernel type, specialisations (greedily, the one adding the most first)
until every dtype and every value of every key field (numbers clipped to 1, 2, 3+: the code paths
they select; the plane kernel's exact kernel size too, since its registers grow with it) has been
compiled once, the fields that set the registers per thread (taps, tiles, rows and channels per
thread) once with 8-byte values (float64) and once with 4- or 2-byte ones (float32, float16 with
float32 sums), which need fewer registers for the same key: the code the simulator cannot check
is the code those values select, and the CI machine's time is short. The full set runs on a GPU
machine and with no option.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))


class DeviceStandIn:
    """Shape and dtype of a device array, and nothing else (no GPU needed)."""

    def __init__(self, shape, dtype):
        self.__cuda_array_interface__ = {
            "shape": tuple(shape),
            "typestr": np.dtype(dtype).str,
            "data": (0, False),
            "version": 3,
        }


def problems():
    """(input shape, weight shape, has bias, conv kwargs) of every test case, bench shape and
    conv layer of the networks the bench knows."""
    from cases import CASES

    from nbconv._shapes import EXTRA_SHAPES, STANDARD_SHAPES

    for c in CASES:
        yield (c.n, c.c_in) + c.hw, (c.c_out, c.c_in // c.groups) + c.k, c.bias, c.conv_args()
    for s in STANDARD_SHAPES + EXTRA_SHAPES:
        for bias in (True, False):
            yield s.input_shape(2), s.weight_shape(), bias, s.conv_args()
    # tests/test_cuda_launch.py: the global-read variant
    yield (1, 2, 50, 130), (2, 2, 5, 31), False, dict(dilation=(12, 7), padding=(0, 50))
    # strided dense layers: their input gradients' phases by tiles (sub-kernels 2x2, 2x1, 1x2, 1x1)
    yield (2, 64, 28, 28), (64, 64, 3, 3), False, dict(stride=2, padding=1)
    yield (2, 128, 16, 16), (128, 128, 4, 4), True, dict(stride=2, padding=1)  # a decoder's 4x4, stride 2
    # every conv layer of the eight networks of `nbconv bench --network` (batch 2, 224 x 224)
    from nbconv.bench._networks import NETWORKS

    for layer in sorted({layer._replace(count=1) for layers in NETWORKS.values() for layer in layers}):
        yield ((2, layer.c_in, layer.side, layer.side), (layer.c_out, layer.c_in // layer.groups, layer.k, layer.k),
               layer.bias, dict(stride=layer.stride, padding=layer.pad, groups=layer.groups))


def specialisations():
    """(forward key, dtype) of conv2d and of its input gradient, and (reduce key, dtype) of the
    weight and bias gradients (the pair kernel's, and the tile kernel's where it applies), for
    every problem."""
    from nbconv._spec import conv2d_input_spec, conv2d_spec
    from nbconv.cuda._launch import launch_configs, reduce_key, tile_reduce_launch
    seen = set()
    for x_shape, w_shape, bias, kwargs in problems():
        for dtype in (np.float16, np.float32, np.float64):
            b = DeviceStandIn((w_shape[0],), dtype) if bias else None
            w = DeviceStandIn(w_shape, dtype)
            spec = conv2d_spec(DeviceStandIn(x_shape, dtype), w, b, **kwargs)
            items = [(cfg.key, np.dtype(dtype)) for cfg in launch_configs(spec)]
            gy = DeviceStandIn(spec.output_shape, dtype)
            items += [(cfg.key, np.dtype(dtype)) for cfg in launch_configs(conv2d_input_spec(x_shape, w, gy, **kwargs))]
            for bias_only in (False, True):
                key = reduce_key(spec, bias_only)
                items.append((key, np.dtype(dtype)))
            tiles = tile_reduce_launch(spec)  # the weight gradient of layers with many channels per group
            if tiles is not None:
                items.append((tiles.key, np.dtype(dtype)))
            for item in items:
                if item not in seen:
                    seen.add(item)
                    yield item


def _field_values(key) -> set:
    """(field, value) pairs of a kernel key, numbers clipped to 3 (1, 2, 3+ select the paths)."""
    def clip(v):
        if isinstance(v, bool) or not isinstance(v, (int, tuple)):
            return v
        return min(v, 3) if isinstance(v, int) else tuple(clip(i) for i in v)

    values = {(name, clip(v)) for name, v in key._asdict().items()}
    if type(key).__name__ == "PlaneKey":  # registers per thread grow with the taps and channels
        values.add(("taps", key.kernel_size, key.stride, key.oc_block))
    if type(key).__name__ in ("TileReduceKey", "ConvTileKey"):  # and with the tile's loads per thread
        values.add(("tile", key.tile))
    return values


#: Key fields (and :func:`_field_values` extras) that set the registers a thread holds.
REGISTER_FIELDS = frozenset({"taps", "tile", "rows_per_thread", "oc_block", "micro"})


def _shown(key, dtype) -> set:
    """What compiling (key, dtype) shows: the dtype and the key's field values for its kernel
    type, the register-setting ones for its dtype's width class (8-byte, or narrower)."""
    kind, width = type(key).__name__, "8-byte" if dtype.itemsize == 8 else "narrow"
    return {(kind, "dtype", dtype.name)} | {(kind, width) + fv if fv[0] in REGISTER_FIELDS else (kind,) + fv
                                            for fv in _field_values(key)}


def covering(items):
    """Specialisations that, per kernel type, show everything :func:`_shown` names: greedily, the
    one showing the most not yet shown first (71 of 619; 138 covering every value per dtype)."""
    shows = [_shown(key, dtype) for key, dtype in items]
    seen, chosen = set(), []
    while True:
        best = max(range(len(items)), key=lambda i: len(shows[i] - seen))  # the first of the best: deterministic
        if not shows[best] - seen:
            return chosen
        seen |= shows[best]
        chosen.append(items[best])


def main(argv):
    from nbconv.cuda._compile import compile_forward, compile_key, compile_reduce
    from nbconv.cuda._reduce import ReduceKey
    from nbconv.cuda._wgrad_tiles import TileReduceKey

    cover, no_spill = "--cover" in argv, "--no-spill" in argv
    argv = [a for a in argv if a not in ("--cover", "--no-spill")]
    if no_spill:
        from sass import cuda_tool, ptxas_resources

        if not cuda_tool("ptxas"):
            print("--no-spill needs ptxas: pip install nvidia-cuda-nvcc")
            return 2
    ccs = [tuple(int(p) for p in a.split(".")) for a in argv] or [(8, 0), (9, 0)]
    items = list(specialisations())
    items = covering(items) if cover else items
    spills = 0
    for cc in ccs:
        t0 = time.perf_counter()
        for key, dtype in items:
            try:
                ptxs = compile_key(key, dtype, cc)
            except Exception as exc:
                print(f"FAILED cc={cc} dtype={dtype} {key}: {exc!r}")
                return 1
            for ptx in ptxs:
                assert ".entry" in ptx and f"sm_{cc[0]}{cc[1]}" in ptx, "not a PTX kernel for this target"
                if no_spill:
                    for fn in ptxas_resources(ptx, f"{cc[0]}{cc[1]}"):
                        if fn["spill_stores"] or fn["spill_loads"]:
                            print(f"SPILLS cc={cc} dtype={dtype} {key}: {fn}")
                            spills += 1
        # one strided-layout build per dtype: the kernels also take non-contiguous arrays; and
        # the 64-bit-index reductions (sizes past 2**32, which no test problem reaches)
        forward = next(k for k, _ in items if not isinstance(k, (ReduceKey, TileReduceKey)))
        for dtype in (np.float16, np.float32, np.float64):
            compile_forward(forward, np.dtype(dtype), cc, layout="A")
        wide = next(k for k, _ in items if isinstance(k, ReduceKey))._replace(wide_index=True)
        compile_reduce(wide, np.dtype(np.float32), cc)
        wide = next(k for k, _ in items if isinstance(k, TileReduceKey))._replace(wide_index=True)
        compile_key(wide, np.dtype(np.float32), cc)
        print(f"compiled {len(items) + 5} kernel specialisations{' (covering subset)' if cover else ''} "
              f"(forward, input-gradient, weight/bias-gradient) for cc {cc[0]}.{cc[1]}"
              f"{', checked for local-memory spills (ptxas)' if no_spill else ''} "
              f"in {time.perf_counter() - t0:.1f} s")
    if spills:
        print(f"{spills} kernel specialisations spill registers to local memory")
    return 1 if spills else 0


if __name__ == "__main__":
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        sys.exit("compile_kernels.py needs NUMBA_ENABLE_CUDASIM=0 (the simulator has no compiler)")
    sys.exit(main(sys.argv[1:]))
