"""Two values of one nbconv setting against each other over whole network passes, interleaved.

A module-level constant that a CPU kernel's choice reads at each call (a bound, a switch) is set
to value A, then to B, pass by pass in alternating order (ABBA...), in one process, over every
conv layer of the networks ``nbconv bench --network`` knows (the same layers, arrays and passes).
Printed per network: the median pass time with each value and the median of the paired ratios
B / A (above 1: A is faster); and each layer whose median paired ratio is off 1 by more than
``--show`` (default 6%). The last line is the geometric mean of the networks' ratios.

    python docs/network_ab.py nbconv.cpu._pointwise STREAM_BYTES "4 << 20" "1 << 62" \\
        [--networks mobilenet_v2,efficientnet_b0] [--batch 8] [--rounds 9] [--show 0.06]

Both values are run once (their first calls, compiles included) before the timed passes.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import math
import statistics
import sys


def _value(text: str):
    """A Python literal, or a small integer expression such as ``4 << 20``."""
    tree = ast.parse(text, mode="eval")
    allowed = (ast.Expression, ast.Constant, ast.BinOp, ast.UnaryOp, ast.operator, ast.unaryop, ast.Tuple)
    if not all(isinstance(node, allowed) for node in ast.walk(tree)):
        raise argparse.ArgumentTypeError(f"not a literal or arithmetic on literals: {text!r}")
    return eval(compile(tree, "<value>", "eval"), {"__builtins__": {}})


def main(argv: list[str] | None = None) -> int:
    from nbconv.bench import _networks
    from nbconv.bench._timing import warm_allocator

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", help="the module holding the setting, e.g. nbconv.cpu._pointwise")
    parser.add_argument("name", help="the setting's name in that module")
    parser.add_argument("a", type=_value, help="value A")
    parser.add_argument("b", type=_value, help="value B")
    parser.add_argument("--networks", default=",".join(_networks.NETWORKS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--image", type=int, default=224)
    parser.add_argument("--show", type=float, default=0.06, help="list layers whose ratio is off 1 by more")
    args = parser.parse_args(argv)
    module = importlib.import_module(args.module)
    if not hasattr(module, args.name):
        parser.error(f"{args.module} has no {args.name}")
    original = getattr(module, args.name)
    print(f"{args.module}.{args.name}: A = {args.a!r}, B = {args.b!r}; batch {args.batch}, {args.image} x {args.image},"
          f" {args.rounds} passes each, alternating\n")
    ratios = []
    try:
        for name in args.networks.split(","):
            layers = [layer.at(args.image) for layer in _networks.conv_layers(name)]
            calls, _, _ = _networks._calls(layers, args.batch, "float32", None)
            warm_allocator()
            for value in (args.a, args.b):
                setattr(module, args.name, value)
                for call in calls:
                    call()
            passes: tuple[list, list] = ([], [])
            for i in range(args.rounds):
                for who in ((0, 1) if i % 2 == 0 else (1, 0)):
                    setattr(module, args.name, (args.a, args.b)[who])
                    passes[who].append(_networks._timed_pass(calls, layers)[0])
            a_passes, b_passes = passes
            ratio = statistics.median(sum(b) / sum(a) for a, b in zip(a_passes, b_passes))
            ratios.append(ratio)
            print(f"{name}: A {statistics.median(sum(a) for a in a_passes) * 1e3:.1f} ms, "
                  f"B {statistics.median(sum(b) for b in b_passes) * 1e3:.1f} ms, B / A {ratio:.3f}")
            for j, layer in enumerate(layers):
                r = statistics.median(b[j] / a[j] for a, b in zip(a_passes, b_passes))
                if abs(r - 1) > args.show:
                    print(f"    {layer.label:36s} A {statistics.median(a[j] for a in a_passes) * 1e3:8.3f} ms"
                          f"  B {statistics.median(b[j] for b in b_passes) * 1e3:8.3f} ms  B / A {r:.2f}")
    finally:
        setattr(module, args.name, original)
    print(f"\ngeometric mean of B / A over {len(ratios)} networks: "
          f"{math.exp(sum(math.log(r) for r in ratios) / len(ratios)):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
