"""How long a network's first CPU forward takes, compilation included: MobileNetV2's 52 conv
layers (batch 2, 224 x 224, float32 by default) through ``nbconv.conv2d`` on NumPy arrays.

Each case runs in a fresh process, in this order, sharing one pair of cache folders
(``NUMBA_CACHE_DIR``, ``NBCONV_CACHE_DIR``) made empty at the start:

* ``cold``: empty caches, the given batch;
* ``warm``: the same again, now from the disk caches;
* ``new batch``: the disk caches, batch ``--new-batch``;
* ``new size``: the disk caches, images of ``--new-size`` pixels (the same layer types).

For each it prints the first pass (every layer's first call: compilation, loading and the
computation), the steady pass after it (the median of ``--repeat`` passes), and in the cold
and new-size cases the first-call seconds summed per kernel
(``nbconv.cpu._launch.forward_kernel``) with how many distinct layer geometries each kernel met.
``--network NAME`` takes instead the distinct conv layers of one of ``nbconv bench
--network``'s tables (``regnet_y_400mf``, ...), each once per pass. Needs only NumPy and
nbconv::

    python docs/first_forward.py [--network mobilenet_v2] [--batch 2] [--new-batch 7] [--new-size 192] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from nbconv.bench._run import _cpu_model

#: MobileNetV2 (torchvision's ``mobilenet_v2``, width 1.0) as (input channels, output channels,
#: kernel side, stride, groups), in forward order; the input side of each layer follows from the
#: image side and the strides before it. Every layer pads ``k // 2`` and has no bias (batch
#: norm follows it).
MOBILENET_V2 = [(3, 32, 3, 2, 1)]


def _inverted_residuals() -> list[tuple[int, int, int, int, int]]:
    layers, c_in = [], 32
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(n):
            hidden = c_in * t
            if t != 1:
                layers.append((c_in, hidden, 1, 1, 1))  # expand
            layers.append((hidden, hidden, 3, s if i == 0 else 1, hidden))  # depthwise
            layers.append((hidden, c, 1, 1, 1))  # project
            c_in = c
    return layers


MOBILENET_V2 += _inverted_residuals() + [(320, 1280, 1, 1, 1)]
assert len(MOBILENET_V2) == 52


def layer_shapes(size: int) -> list[tuple[tuple[int, int, int, int, int], int]]:
    """(layer, input side) for images of ``size`` pixels."""
    out = []
    for layer in MOBILENET_V2:
        out.append((layer, size))
        k, s = layer[2], layer[3]
        size = (size + 2 * (k // 2) - k) // s + 1
    return out


def network_layers(network: str, size: int) -> list[tuple[int, int, int, int, int, int, int]]:
    """(input channels, output channels, kernel side, stride, padding, groups, input side) of the
    network's conv layers for images of ``size`` pixels: MobileNetV2's 52 as above, or the
    distinct layers of ``nbconv.bench._networks``' table of that name."""
    if network == "mobilenet_v2":
        return [(c_in, c_out, k, s, k // 2, g, side) for (c_in, c_out, k, s, g), side in layer_shapes(size)]
    from nbconv.bench._networks import conv_layers

    return [(la.c_in, la.c_out, la.k, la.stride, la.pad, la.groups, la.at(size).side) for la in conv_layers(network)]


def _child(network: str, batch: int, size: int, dtype: str, repeat: int) -> dict:
    """One process's measurement (run with the cache folders already set in the environment)."""
    t_import = time.perf_counter()
    import numpy as np

    import nbconv
    from nbconv._spec import conv2d_spec
    from nbconv.cpu._launch import forward_kernel

    import_s = time.perf_counter() - t_import
    rng = np.random.default_rng(0)
    calls = []
    for c_in, c_out, k, s, pad, g, side in network_layers(network, size):
        x = rng.standard_normal((batch, c_in, side, side)).astype(dtype)
        w = rng.standard_normal((c_out, c_in // g, k, k)).astype(dtype)
        spec = conv2d_spec(x, w, None, s, pad, 1, g)
        calls.append((x, w, {"stride": s, "padding": pad, "groups": g}, forward_kernel(spec),
                      (c_in, c_out, k, s, g, side)))
    first, per_kernel, geometries = [], {}, {}
    t0 = time.perf_counter()
    for x, w, kw, kernel, geo in calls:
        t = time.perf_counter()
        nbconv.conv2d(x, w, **kw)
        dt = time.perf_counter() - t
        first.append(dt)
        per_kernel[kernel] = per_kernel.get(kernel, 0.0) + dt
        geometries.setdefault(kernel, set()).add(geo)
    first_pass = time.perf_counter() - t0
    steady = []
    for _ in range(repeat):
        t = time.perf_counter()
        for x, w, kw, _, _ in calls:
            nbconv.conv2d(x, w, **kw)
        steady.append(time.perf_counter() - t)
    slowest = sorted(((dt, c[3], list(c[4])) for dt, c in zip(first, calls)), reverse=True)[:5]
    return {"network": network, "batch": batch, "size": size, "dtype": dtype, "import_s": import_s, "first_pass_s": first_pass,
            "steady_pass_s": float(np.median(steady)), "per_kernel_s": per_kernel,
            "geometries": {k: len(v) for k, v in geometries.items()}, "slowest_first_calls": slowest}


def _run_case(env: dict, network: str, batch: int, size: int, dtype: str, repeat: int) -> dict:
    args = [sys.executable, __file__, "--child", "--network", network, "--batch", str(batch), "--size", str(size),
            "--dtype", dtype, "--repeat", str(repeat)]
    t = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"child failed:\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - t
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", default="mobilenet_v2")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--new-batch", type=int, default=7)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--new-size", type=int, default=192)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--cases", default="cold,warm,new batch,new size",
                        help="comma-separated subset of: cold, warm, new batch, new size")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = parser.parse_args(argv)
    if a.child:
        print(json.dumps(_child(a.network, a.batch, a.size, a.dtype, a.repeat)))
        return 0
    folder = tempfile.mkdtemp(prefix="nbconv-first-forward-")
    env = dict(os.environ, NUMBA_CACHE_DIR=os.path.join(folder, "numba"),
               NBCONV_CACHE_DIR=os.path.join(folder, "nbconv"))
    plan = {"cold": (a.batch, a.size), "warm": (a.batch, a.size), "new batch": (a.new_batch, a.size),
            "new size": (a.batch, a.new_size)}
    results = {}
    try:
        for case in a.cases.split(","):
            batch, size = plan[case.strip()]
            r = results[case.strip()] = _run_case(env, a.network, batch, size, a.dtype, a.repeat)
            print(f"{case.strip():>9}: batch {batch}, {size}x{size}: first pass {r['first_pass_s']:7.2f} s, "
                  f"steady pass {r['steady_pass_s']:6.3f} s, import {r['import_s']:.2f} s, "
                  f"process {r['process_s']:.1f} s", flush=True)
            if case.strip() in ("cold", "new size"):
                for kernel, s in sorted(r["per_kernel_s"].items(), key=lambda kv: -kv[1]):
                    print(f"           {kernel:>13}: {s:6.2f} s over {r['geometries'][kernel]} geometries")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    machine = f"{platform.machine()} {_cpu_model()}, {os.cpu_count()} CPUs"
    print(f"machine: {machine}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": machine, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
