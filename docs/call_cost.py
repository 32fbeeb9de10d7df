"""The cost of one small CPU call: tiny layers, where the time is Python, dispatch and launch.

Each case (one image of 8 x 4 x 4, float32: a 1x1 layer, by the pointwise kernel, and a
depthwise 3x3 one, by the packed kernel) is called ``--calls`` times back to back, ``--rounds``
rounds, nbconv's and PyTorch's (when installed, 2 threads) alternating round by round; printed:
the median microseconds a call. With ``--parts``, also the parts of nbconv's 1x1 call: the spec
(validation, cached per geometry), the dispatch (the result's allocation and the backend's call)
and the launcher (the kernel's choice and its compiled call).

    python docs/call_cost.py [--rounds 15] [--calls 2000] [--parts]
"""

from __future__ import annotations

import argparse
import statistics
import time


def _per_call(fn, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    import nbconv
    from nbconv import _dispatch, _spec
    from nbconv.bench._timing import warm_allocator
    from nbconv.cpu import _launch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--parts", action="store_true")
    args = parser.parse_args(argv)
    warm_allocator()
    try:
        import torch

        torch.set_num_threads(2)
    except ImportError:
        torch = None
    x = np.ones((1, 8, 4, 4), np.float32)
    w1, wd = np.ones((8, 8, 1, 1), np.float32), np.ones((8, 1, 3, 3), np.float32)
    cases = {"1x1, 8 -> 8": (w1, 0, 1), "depthwise 3x3, 8 channels": (wd, 1, 8)}
    timed = {}
    for name, (w, pad, groups) in cases.items():
        timed[f"nbconv {name}"] = lambda w=w, pad=pad, groups=groups: nbconv.conv2d(x, w, None, 1, pad, 1, groups)
        if torch is not None:
            tx, tw = torch.from_numpy(x), torch.from_numpy(w)
            timed[f"PyTorch {name}"] = (lambda tx=tx, tw=tw, pad=pad, groups=groups:
                                        torch.nn.functional.conv2d(tx, tw, None, 1, pad, 1, groups))
    if args.parts:
        spec = _spec.conv2d_spec(x, w1, None, 1, 0, 1, 1)
        out = np.empty(spec.output_shape, np.float32)
        timed["nbconv 1x1: the spec"] = lambda: _spec.conv2d_spec(x, w1, None, 1, 0, 1, 1)
        timed["nbconv 1x1: dispatch and launcher"] = lambda: _dispatch.conv2d_forward(spec, x, w1, None, None)
        timed["nbconv 1x1: launcher (into a given result)"] = lambda: _launch.conv2d_forward(spec, x, w1, None, out)
    samples = {name: [] for name in timed}
    for fn in timed.values():
        _per_call(fn, 100)
    for _ in range(args.rounds):
        for name, fn in timed.items():
            samples[name].append(_per_call(fn, args.calls))
    print(f"| call (1 x 8 x 4 x 4, float32) | us per call (median of {args.rounds} x {args.calls}) |")
    print("|---|---:|")
    for name, values in samples.items():
        print(f"| {name} | {statistics.median(values):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
