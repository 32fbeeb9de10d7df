"""Command line: ``nbconv bench``, ``nbconv explain`` and ``nbconv cache info|clear`` (also ``python -m nbconv ...``)."""

from __future__ import annotations

import argparse
import json
import sys

from ._shapes import EXTRA_SHAPES, SHAPES_BY_NAME, STANDARD_SHAPES
from .bench._networks import NETWORKS
from .bench._ops import OPS, TORCH_OP


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nbconv", description="Grouped and depthwise conv2d for NumPy and CuPy.")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser(
        "bench",
        help="time the standard shapes (checked against NumPy first), against PyTorch when installed",
        description="Times nbconv.conv2d (or, with --op, a training op) on the standard grouped/depthwise "
        "shapes. Each result is checked against a NumPy computation before it is timed. With PyTorch installed, "
        "its twin of the op runs in the same process, interleaved, with the same number of threads; the speedup "
        "is the median of paired ratios.",
    )
    b.add_argument("--op", choices=list(OPS), default="forward",
                   help="forward: conv2d; input_grad / weight_grad: nbconv.grad.conv2d_input / conv2d_weight "
                   "(vs torch.nn.grad); transpose: conv_transpose2d of the output gradient (vs F.conv_transpose2d)")
    b.add_argument("--backend", choices=["cpu", "cuda"], default="cpu")
    b.add_argument("--batch", type=int, default=None, help="batch size (default: 8 on cpu, 32 on cuda)")
    b.add_argument("--dtype", choices=["float32", "float64", "float16"], default="float32")
    b.add_argument("--quick", action="store_true", help="fewer rounds, batch 1 unless --batch, no JIT latency")
    b.add_argument("--shapes", default=None, help="comma-separated shape names (default: the standard ones)")
    b.add_argument("--extra", action="store_true", help="also the extra shapes (odd sizes, 1x1, dense, ...)")
    b.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds per shape")
    b.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    b.add_argument("--dask", action="store_true",
                   help="instead: a depthwise layer over a batch several times larger than a worker's memory, on a "
                   "local distributed cluster of 1 then 2 worker processes (needs nbconv[dask]); --batch sets the "
                   "images (default 1024, 1.85 GB; 128 with --quick)")
    b.add_argument("--network", metavar="NAME[,NAME]",
                   help="instead: every conv layer of these networks (or 'all'), forward, batch 2 unless --batch, "
                   "interleaved passes against PyTorch; one row per network, and with one network one per layer. "
                   "Known: " + ", ".join(NETWORKS))
    b.add_argument("--image", type=int, default=224, help="with --network: the image side (default 224)")
    b.add_argument("--memory-limit", default="512MiB", help="with --dask: each worker's memory limit")
    c = sub.add_parser("cache", help="where the generated CPU kernels and their compiled code are kept; clear them",
                       description="The CPU kernels generated per geometry are Python modules kept in one folder "
                       "($NBCONV_CACHE_DIR, else $NUMBA_CACHE_DIR/nbconv-generated, else ~/.cache/nbconv/generated), "
                       "with Numba's compiled code beside them. 'clear' deletes both (they are made again when needed) "
                       "and the compiled code of nbconv's own kernels that earlier versions or sources left beside the "
                       "package (upgrades keep __pycache__).")
    c.add_argument("action", choices=["info", "clear"])
    e = sub.add_parser("explain", help="which input channels feed which output channel for these groups",
                       description="Explains a grouped convolution: per group the input and output channel ranges, "
                       "the weight shape, parameters and multiply-adds against the dense layer, the depthwise "
                       "multiplier, and the allowed groups (the divisors of gcd(in_channels, out_channels)).")
    e.add_argument("in_channels", type=int)
    e.add_argument("out_channels", type=int)
    e.add_argument("groups", type=int, nargs="?", default=1)
    e.add_argument("-k", "--kernel-size", type=int, nargs="+", default=[3], metavar="K",
                   help="kernel size: K, or KH KW (default 3)")
    e.add_argument("--plot", metavar="FILE.png", help="also draw the connectivity to this file (needs matplotlib: "
                   'pip install "nbconv[plot]")')
    return p


def cache(args: argparse.Namespace) -> int:
    import os

    from . import _numba_options
    from .cpu import _generated

    if args.action == "clear":
        print(f"deleted {_generated.clear_cache()} files from {_generated.source_dir()}")
        print(f"deleted {_numba_options.remove_stale_package_code()} files of compiled code from earlier versions "
              "of nbconv's kernels")
        return 0
    stale = _numba_options.stale_package_code()
    files = _generated.cache_files()
    modules = [f for f in files if f.endswith(".py")]
    size = sum(os.path.getsize(f) for f in files if os.path.exists(f))
    print(f"generated kernels: {_generated.source_dir()}")
    print(f"  {len(modules)} modules, {len(files) - len(modules)} files of compiled code, {size / 2**20:.1f} MiB")
    print(f"Numba's on-disk cache: {'on' if _numba_options.CACHE else 'off (no writable cache folder)'}"
          + (f", NUMBA_CACHE_DIR={os.environ['NUMBA_CACHE_DIR']}" if os.environ.get("NUMBA_CACHE_DIR") else ""))
    from . import _compile_process

    print("compiled by a helper process: " + ("yes (a miss of that cache is compiled there, then loaded)"
                                               if _compile_process.enabled() else
                                               f"no ({_compile_process.ENV}=0 or no disk cache)"))
    if stale:
        stale_size = sum(os.path.getsize(f) for f in stale if os.path.exists(f))
        print(f"  {len(stale)} files ({stale_size / 2**20:.1f} MiB) of compiled code from earlier versions of nbconv's "
              "kernels: 'nbconv cache clear' deletes them")
    return 0


def bench_dask(args: argparse.Namespace) -> int:
    try:
        import dask.array  # noqa: F401
        import distributed  # noqa: F401
    except ImportError as e:
        print(f'nbconv bench --dask: {e}; pip install "nbconv[dask]"', file=sys.stderr)
        return 2
    from .bench._dask import format_dask_table, run_dask_bench

    batch = args.batch or (128 if args.quick else 1024)
    results = run_dask_bench(batch=batch, memory_limit=args.memory_limit)
    print("\nnbconv bench --dask: nbconv.dask.conv2d, depthwise 3x3, float32, NumPy chunks")
    print(format_dask_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def bench_network(args: argparse.Namespace) -> int:
    from .bench._networks import format_layer_table, format_network_table, network_json, run_network_bench
    from .bench._run import _torch, machine_description

    names = list(NETWORKS) if args.network == "all" else args.network.split(",")
    unknown = [n for n in names if n not in NETWORKS]
    if unknown or args.dtype == "float16" or args.backend != "cpu":
        print(f"nbconv bench --network: unknown networks {unknown}; known: {', '.join(NETWORKS)}" if unknown
              else "nbconv bench --network: the CPU backend in float32 or float64 only", file=sys.stderr)
        return 2
    torch = _torch("cpu")
    if torch is not None:
        import numba

        torch.set_num_threads(numba.get_num_threads())
    batch = args.batch or 2
    rounds = args.rounds or (3 if args.quick else 15)
    results = [run_network_bench(n, batch, args.dtype, rounds, args.image, torch) for n in names]
    m = machine_description("cpu")
    print(f"\nnbconv bench --network: every conv layer, forward, batch {batch}, {args.image} x {args.image}, "
          f"{args.dtype}, NCHW, {rounds} passes; {m['processor']}, {m['threads']} threads"
          + (f", torch {m['torch']} (F.conv2d)" if "torch" in m else ", PyTorch not installed (no comparison)"))
    print(format_network_table(results))
    if len(results) == 1:
        print()
        print(format_layer_table(results[0]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(network_json(results, m), f, indent=2)
        print(f"wrote {args.json}")
    return 0


def bench(args: argparse.Namespace) -> int:
    from .bench._run import first_call_latency, format_table, results_json, run_bench

    if args.dask:
        return bench_dask(args)
    if args.network:
        return bench_network(args)

    if args.dtype == "float16" and args.backend == "cpu":
        print("nbconv bench: float16 is supported on the CUDA backend only", file=sys.stderr)
        return 2
    if args.shapes:
        unknown = [s for s in args.shapes.split(",") if s not in SHAPES_BY_NAME]
        if unknown:
            print(f"nbconv bench: unknown shapes {unknown}; known: {sorted(SHAPES_BY_NAME)}", file=sys.stderr)
            return 2
        shapes = [SHAPES_BY_NAME[s] for s in args.shapes.split(",")]
    else:
        shapes = list(STANDARD_SHAPES) + (list(EXTRA_SHAPES) if args.extra else [])
    batch = args.batch or (1 if args.quick else (8 if args.backend == "cpu" else 32))
    rounds = args.rounds or (5 if args.quick else 15)

    first_call = None
    if not args.quick:
        print("first-call latency (fresh interpreters) ...", file=sys.stderr, flush=True)
        cold, warm = first_call_latency(shapes[0], batch, args.dtype, args.backend, args.op)
        first_call = {"shape": shapes[0].name, "op": args.op, "cold_s": cold, "warm_cache_s": warm}
    results = run_bench(shapes, args.backend, batch, args.dtype, rounds, args.op)
    report = results_json(results, args.backend, first_call)
    m = report["machine"]
    twin = f" (PyTorch: {TORCH_OP[args.op]})" if "torch" in m else ""
    print(f"\nnbconv bench --backend {args.backend} --op {args.op}{twin}: "
          f"batch {batch}, {args.dtype}, NCHW, {rounds} rounds; "
          f"{m.get('gpu', m['processor'])}, {m['threads']} threads"
          + (f", torch {m['torch']}" if "torch" in m else ", PyTorch not installed (no comparison)"))
    print(format_table(results))
    if first_call:
        print(f"\nfirst call ({first_call['shape']}, {args.op}, includes JIT): cold cache {first_call['cold_s']:.2f} s, "
              f"warm on-disk cache {first_call['warm_cache_s']:.2f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def explain(args: argparse.Namespace) -> int:
    from ._explain import explain as explain_channels

    if len(args.kernel_size) > 2:
        print("nbconv explain: --kernel-size takes K or KH KW", file=sys.stderr)
        return 2
    kernel = tuple(args.kernel_size) if len(args.kernel_size) == 2 else args.kernel_size[0]
    try:
        result = explain_channels(args.in_channels, args.out_channels, args.groups, kernel)
    except (TypeError, ValueError) as e:
        print(f"nbconv {e}", file=sys.stderr)
        return 2
    print(result)
    if not result.valid:
        return 1
    if args.plot:
        try:
            result.plot(path=args.plot)
        except ImportError as e:
            print(f"nbconv explain: {e}", file=sys.stderr)
            return 2
        print(f"wrote {args.plot}")
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    commands = {"bench": bench, "cache": cache, "explain": explain}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
