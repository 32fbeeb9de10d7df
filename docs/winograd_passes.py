"""The Winograd kernels' variants compiled side by side in one process and timed alternately.

``_winograd`` transforms tiles of at least ``TWO_PASS_MIN_TERMS`` terms in two passes through
memory, and computes the products in register blocks (``_simd.tile_products``) where a block of
output channels is whole vectors. This script builds each layer's module three ways:

- ``one pass, loop``: every transform in one pass, the products as a loop over output channels
  whose sums are loaded and stored per ``KC`` input channels (the kernel before round 35);
- ``two passes, loop``: the same products, the 49-term transforms in two passes;
- ``two passes, blocks``: the products in register blocks as well (the kernel now);

and prints each variant's median time and the median of its paired ratios to the first (rounds
alternate the order). The weight gradient (``_winograd_wgrad``) has only the transforms' choice.

    python docs/winograd_passes.py [--batch 8] [--rounds 11] [--layers alexnet_g2,...]

Set ``NUMBA_CPU_NAME`` (``skylake``, say) to time the code of another target on this machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from nbconv._spec import conv2d_spec, conv_transpose2d_spec
from nbconv.cpu import _target, _winograd, _winograd_wgrad

#: name: (input channels, output channels, plane side, kernel side, groups, op)
LAYERS = {
    "alexnet_g2": (96, 256, 27, 5, 2, "forward"),
    "alexnet_g2_transposed": (96, 256, 27, 5, 2, "transposed"),
    "alexnet_g2_weight_grad": (96, 256, 27, 5, 2, "weight_grad"),
    "dense_64_28": (64, 64, 28, 3, 1, "forward"),
    "dense_128_28": (128, 128, 28, 3, 1, "forward"),
    "dense_256_14": (256, 256, 14, 3, 1, "forward"),
}
VARIANTS = {  # (TWO_PASS_MIN_TERMS, register blocks)
    "one pass, loop": (10 ** 6, False),
    "two passes, loop": (_winograd.TWO_PASS_MIN_TERMS, False),
    "two passes, blocks": (_winograd.TWO_PASS_MIN_TERMS, True),
}


def _build(spec, module_of, two_pass: int, blocks: bool):
    saved = _winograd.TWO_PASS_MIN_TERMS, _winograd.product_vectors
    _winograd.TWO_PASS_MIN_TERMS = two_pass
    if not blocks:
        _winograd.product_vectors = lambda spec: None
    try:
        return module_of.__wrapped__(spec)
    finally:
        _winograd.TWO_PASS_MIN_TERMS, _winograd.product_vectors = saved


def _runner(name: str, batch: int, rng):
    cin, cout, hw, k, groups, op = LAYERS[name]
    x = rng.standard_normal((batch, cin, hw, hw), np.float32)
    w = rng.standard_normal((cout, cin // groups, k, k), np.float32)
    gy = rng.standard_normal((batch, cout, hw, hw), np.float32)
    if op == "weight_grad":
        spec = conv2d_spec(x, w, None, 1, k // 2, 1, groups)
        dw = np.empty_like(w)
        variants = {"one pass": (10 ** 6, False), "two passes": (_winograd.TWO_PASS_MIN_TERMS, False)}
        mods = {v: _build(spec, _winograd_wgrad._module, *variants[v]) for v in variants}

        def run(mod):
            _winograd_wgrad._module = lambda s, m=mod: m
            _winograd_wgrad.winograd_weight_grad(x, gy, dw, spec)
            return dw
        return mods, run
    if op == "transposed":  # conv_transpose2d(gy, w): the weight as it is, flipped by the kernel
        spec = conv_transpose2d_spec(gy, w, None, 1, k // 2, 0, groups, 1)
        src = gy
    else:
        spec = conv2d_spec(x, w, None, 1, k // 2, 1, groups)
        src = x
    out = np.empty(spec.output_shape, np.float32)
    b = np.zeros(spec.out_channels, np.float32)
    mods = {v: _build(spec, _winograd._module, *VARIANTS[v]) for v in VARIANTS}

    def run(mod):
        _winograd._module = lambda s, m=mod: m
        _winograd.winograd_forward(src, w, b, out, spec)
        return out
    return mods, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--layers", default=",".join(LAYERS))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    module_of = _winograd._module, _winograd_wgrad._module
    print(f"target {_target.target().name} ({_target.vector_bits()}-bit vectors), batch {args.batch}, "
          f"float32, {args.rounds} alternating rounds")
    for name in args.layers.split(","):
        mods, run = _runner(name, args.batch, rng)
        firsts = {v: run(m).copy() for v, m in mods.items()}
        times = {v: [] for v in mods}
        order = list(mods)
        for r in range(args.rounds):
            for v in (order if r % 2 == 0 else order[::-1]):
                start = time.perf_counter()
                run(mods[v])
                times[v].append(time.perf_counter() - start)
        _winograd._module, _winograd_wgrad._module = module_of
        base = np.array(times[order[0]])
        for v in order:
            t = np.array(times[v])
            diff = np.abs(firsts[v] - firsts[order[0]]).max() / np.abs(firsts[order[0]]).max()
            same = "same bits" if np.array_equal(firsts[v], firsts[order[0]]) else f"max diff {diff:.1e} of the largest"
            print(f"{name:24s} {v:20s} {np.median(t) * 1e3:8.3f} ms  paired {np.median(t / base):.3f}  ({same})")


if __name__ == "__main__":
    main()
