"""Whole-network passes with NumPy's BLAS for every 1x1 product against ``_blas.takes_product``'s
rule (narrower products by the kernels' own blocks), alternated in one process, and each dense 1x1 layer's time both ways. Only meaningful where the BLAS is used:
an AVX2 target (performance.md round 21's environment variables on an AVX-512 machine).

    python docs/blas_rule.py [--batch 8] [--passes 3] [--networks regnet_y_400mf,mobilenet_v2]

With ``--per-layer``, instead: each distinct dense layer of the networks (``all`` for the eight)
that a product computes (1x1, or im2col: stems, ConvNeXt's downsampling), by the kernels' own
blocks and by the BLAS, alternately in one process (medians of ``--rounds`` rounds, ms), with
which one the rule takes.

With ``--splits``, instead: ResNeXt-50's dense 1x1 products that go to the BLAS, per image as
``_blas.product_split`` splits them and with other task sizes (rows per task / multiply-adds per
task: "512/2^25" ...), each call after 64 MiB of other memory is touched (the caches cold, as in
a network's pass), GFLOP/s; and "merged": the batch's images side by side in one product, its
rows split as ``product_split`` splits them (the BLAS alone, without the copies it needs), with
how many outputs then differ in their bits from the images computed one by one.
"""

from __future__ import annotations

import argparse

from nbconv.bench._networks import format_layer_table, run_network_bench
from nbconv.cpu import _blas


def per_layer(networks: list[str], batch: int, rounds: int) -> None:
    """The ``--per-layer`` table."""
    import numpy as np
    from _timing import interleaved_medians

    import nbconv
    from nbconv._spec import conv2d_spec
    from nbconv.bench._networks import _arrays, conv_layers
    from nbconv.cpu import _im2col, _launch

    takes, im2col_rule, for_products = _blas.takes_product, _im2col.MIN_BLAS_TERMS, _blas.for_products

    def run(x, w, b, layer, by_blas):
        if by_blas:
            _blas.takes_product, _im2col.MIN_BLAS_TERMS = (lambda terms, pixels: True), 0
        else:
            _blas.for_products = lambda: None
        try:
            return nbconv.conv2d(x, w, b, stride=layer.stride, padding=layer.pad)
        finally:
            _blas.takes_product, _im2col.MIN_BLAS_TERMS, _blas.for_products = takes, im2col_rule, for_products

    print(f"batch {batch}, float32: medians of {rounds} alternated rounds (ms); ratio = BLAS / own")
    print("| layer | networks | kernel | terms | pixels | own | BLAS | ratio | the rule |")
    print("|---|---|---|---:|---:|---:|---:|---:|---|")
    seen: dict = {}
    for name in networks:
        for layer in conv_layers(name):
            if layer.groups == 1 and layer.side > 1:
                seen.setdefault(layer._replace(count=1), []).append(name)
    rng = np.random.default_rng(0)
    sums = {"own": 0.0, "BLAS": 0.0, "the rule": 0.0, "the faster": 0.0}
    for layer, names in seen.items():
        x, w, b = _arrays(layer, batch, "float32", rng)
        spec = conv2d_spec(x, w, b, layer.stride, layer.pad, 1, 1)
        kernel = _launch.forward_kernel(spec)
        if kernel not in ("pointwise", "im2col"):
            continue
        oh, ow = spec.out_size
        terms = layer.c_in * layer.k * layer.k
        if kernel == "im2col" and not _im2col.takes_patches(spec):
            rule = "BLAS" if terms >= im2col_rule else "own"
        else:  # 1x1, or patches: a 1x1 product of ``terms`` channels
            rule = "BLAS" if takes(terms, oh * ow) else "own"
        t_own, t_blas = interleaved_medians(lambda: run(x, w, b, layer, False), lambda: run(x, w, b, layer, True),
                                            rounds=rounds)
        print(f"| {layer.label} | {','.join(n.split('_')[0] for n in names)} | {kernel} | {terms} | {oh * ow} | "
              f"{t_own:.3f} | {t_blas:.3f} | {t_blas / t_own:.2f} | {rule} |", flush=True)
        for what, t in (("own", t_own), ("BLAS", t_blas), ("the rule", t_blas if rule == "BLAS" else t_own),
                        ("the faster", min(t_own, t_blas))):
            sums[what] += t
    print("sums over these layers (ms, each layer once): " + ", ".join(f"{k} {v:.2f}" for k, v in sums.items()))


def _split(rows: int, inner: int, columns: int, task_rows: int, task_macs: int) -> tuple[int, int]:
    """``_blas.product_split``'s rule with other bounds, its column chunks made equal."""
    parts = -(-rows // task_rows)
    part_rows = -(-rows // parts)
    chunks = max(1, -(-part_rows * inner * columns // task_macs))
    per_chunk = -(-columns // chunks)
    return min(columns, max(256, -(-per_chunk // 64) * 64)), parts


def splits(batch: int, rounds: int) -> None:
    """The ``--splits`` table."""
    import statistics
    import time

    import numpy as np

    from nbconv.cpu import _pointwise

    fn = _blas.gemm_functions().address(np.float32)
    bounds = {"512/2^24": (512, 1 << 24), "512/2^25": (512, 1 << 25), "1024/2^25": (1024, 1 << 25)}
    shapes = [(256, 128, 56), (128, 256, 56), (256, 256, 56), (512, 256, 28), (512, 512, 28), (512, 1024, 14),
              (1024, 512, 14), (1024, 1024, 14), (1024, 2048, 7), (2048, 1024, 7)]
    flush = np.ones(16 << 20, np.float32)
    rng = np.random.default_rng(0)
    print(f"batch {batch}, float32, GFLOP/s (medians of {rounds} alternated rounds), (column chunk, row parts)")
    print("| c_in -> c_out @ side | product_split | " + " | ".join(bounds) + " | merged | bits differing |")
    print("|---|---|" + "---|" * len(bounds) + "---:|---:|")
    totals = dict.fromkeys(["product_split", *bounds], 0.0)
    with _blas.single_threaded(_blas.gemm_functions()):
        for c_in, c_out, side in shapes:
            hw = side * side
            x = rng.standard_normal(batch * c_in * hw).astype(np.float32)
            w = rng.standard_normal(c_out * c_in).astype(np.float32)
            b = np.zeros(c_out, np.float32)
            out = np.empty(batch * c_out * hw, np.float32)
            merged_x = np.ascontiguousarray(x.reshape(batch, c_in, hw).transpose(1, 0, 2)).reshape(-1)
            merged_out = np.empty_like(out)
            chosen = {"product_split": _blas.product_split(c_out, c_in, hw)}
            chosen.update({k: _split(c_out, c_in, hw, *v) for k, v in bounds.items()})
            calls = {k: (lambda c=c: _pointwise._forward_blas(fn, x, w, b, out, 1, c_in, c_out, hw, *c))
                     for k, c in chosen.items()}
            calls["merged"] = lambda: _pointwise._forward_blas(fn, merged_x, w, b, merged_out, 1, c_in, c_out,
                                                               batch * hw, batch * hw, chosen["product_split"][1])
            times = {k: [] for k in calls}
            for call in calls.values():
                call()
            for r in range(rounds):
                for k in (list(calls) if r % 2 else list(calls)[::-1]):
                    flush[::16] += 1.0
                    t0 = time.perf_counter()
                    calls[k]()
                    times[k].append(time.perf_counter() - t0)
            calls["product_split"]()
            calls["merged"]()
            alone = out.reshape(batch, c_out, hw)
            together = merged_out.reshape(c_out, batch, hw).transpose(1, 0, 2)
            flops = 2 * batch * c_in * c_out * hw
            medians = {k: statistics.median(v) for k, v in times.items()}
            for k in totals:
                totals[k] += medians[k]
            cells = [f"{flops / medians[k] / 1e9:.0f} {chosen[k]}" for k in chosen]
            print(f"| {c_in} -> {c_out} @ {side} | " + " | ".join(cells) +
                  f" | {flops / medians['merged'] / 1e9:.0f} | {int((alone != together).sum())} |", flush=True)
    print("sums over these layers (ms): " + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in totals.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--networks", default="regnet_y_400mf,mobilenet_v2")
    parser.add_argument("--per-layer", action="store_true")
    parser.add_argument("--splits", action="store_true")
    parser.add_argument("--rounds", type=int, default=15, help="with --per-layer or --splits")
    args = parser.parse_args()
    if _blas.for_products() is None:
        print("the BLAS is not used for products on this target: nothing to compare")
        return
    if args.splits:
        splits(args.batch, args.rounds)
        return
    if args.per_layer:
        from nbconv.bench._networks import NETWORKS

        per_layer(list(NETWORKS) if args.networks == "all" else args.networks.split(","), args.batch, args.rounds)
        return
    rule = _blas.takes_product
    choices = {"all": lambda terms, pixels: True, "rule": rule}
    for name in args.networks.split(","):
        passes, layers = {"all": [], "rule": []}, {}
        for _ in range(args.passes):
            for choice, takes in choices.items():
                _blas.takes_product = takes
                try:
                    result = run_network_bench(name, batch=args.batch, rounds=11)
                finally:
                    _blas.takes_product = rule
                passes[choice].append(result.time_s * 1e3)
                for line in format_layer_table(result).splitlines():
                    cells = [c.strip() for c in line.split("|")]
                    if len(cells) > 3 and "1x1 dense" in cells[1]:
                        layers.setdefault(cells[1], {"all": [], "rule": []})[choice].append(float(cells[3]))
        print(f"\n{name}, batch {args.batch}: network ms, BLAS for all "
              f"{' / '.join(f'{t:.1f}' for t in passes['all'])}; the rule "
              f"{' / '.join(f'{t:.1f}' for t in passes['rule'])}")
        print("| dense 1x1 layer | BLAS for all (ms) | the rule (ms) |\n|---|---:|---:|")
        for label, times in layers.items():
            print(f"| {label} | {min(times['all']):.3f} | {min(times['rule']):.3f} |")

if __name__ == "__main__":
    main()
