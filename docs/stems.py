"""The networks' stems (their 3-channel first layers) alone, by the network bench's passes.

Each distinct stem of the networks ``nbconv bench --network`` knows, timed as that command
times a network's layers (interleaved passes against PyTorch's ``F.conv2d``, medians of paired
ratios) with each library's minor page faults per pass: a stem's output is the largest of a
network's, and a library that writes it into memory fresh from the system pays for the first
touch. ``--kernel`` puts the CPU kernel named (a name of ``nbconv.cpu._launch.FORWARDS``) on the
stems instead of the one the launcher picks.

    python docs/stems.py [--batch 8] [--rounds 9] [--kernel default|im2col|grouped|packed] [--image 224]
"""

from __future__ import annotations

import argparse
import sys


def stem_layers(square_only: bool = False) -> list:
    """The distinct stems (layers of 3 input channels) of the known networks, each once."""
    from nbconv.bench._networks import NETWORKS

    stems = {layer._replace(count=1) for layers in NETWORKS.values() for layer in layers if layer.c_in == 3}
    return sorted(s for s in stems if not square_only or s.k == 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--image", type=int, default=224)
    parser.add_argument("--kernel", default="default", help="a CPU forward kernel's name, or default")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        torch = None
    from nbconv.bench import _networks
    from nbconv.cpu import _launch

    stems = stem_layers(square_only=args.kernel != "default")  # the forced kernels: the 3x3 stems
    if args.kernel != "default" and args.kernel not in _launch.FORWARDS:
        parser.error(f"--kernel: one of {', '.join(['default', *_launch.FORWARDS])}")
    chosen, real_layers = _launch.direct_forward_kernel, _networks.conv_layers
    if args.kernel != "default":
        _launch.direct_forward_kernel = lambda spec: args.kernel if spec.in_channels == 3 else chosen(spec)
    _networks.conv_layers = lambda name: stems
    try:
        if torch is not None:
            torch.set_num_threads(__import__("numba").get_num_threads())
        result = _networks.run_network_bench("stems", batch=args.batch, rounds=args.rounds, image=args.image,
                                             torch=torch)
    finally:
        _launch.direct_forward_kernel, _networks.conv_layers = chosen, real_layers
    print(f"Stems, batch {args.batch}, {args.image} x {args.image}, {args.rounds} passes, kernel {args.kernel}:\n")
    print(_networks.format_layer_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
