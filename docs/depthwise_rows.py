"""Output rows per block of the size-generic depthwise kernel (``nbconv/cpu/_depthwise.py``): the
module as shipped (blocks of ``SMALL_ROWS`` on planes of ``SMALL_PLANE_ROWS`` output rows, of
``ROWS`` elsewhere) against the same module with blocks of ``ROWS`` everywhere, both loaded side by
side in one process and called interleaved on the same arrays (stride 1, batch 8, float32; the
results must have the same bits: the rows of a block do not change the order of any sum)::

    python docs/depthwise_rows.py [--rounds 21]
"""

from __future__ import annotations

import argparse
import os
import sys

import numba
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _timing import interleaved_medians

from nbconv._spec import conv2d_spec
from nbconv.bench._run import _cpu_model
from nbconv.cpu import _depthwise, _generated, _scratch
from nbconv.cpu._target import target

#: (output side, channels, kernel side): MobileNetV2's, EfficientNet's and ConvNeXt's planes
SHAPES = [(7, 768, 7), (14, 384, 7), (28, 192, 7), (56, 96, 7), (7, 960, 3), (14, 576, 3), (28, 192, 3),
          (56, 144, 3), (112, 32, 3), (7, 1152, 5), (14, 672, 5)]


def _modules(k: int):
    """(the shipped module, one with blocks of ``ROWS`` everywhere) for a k x k kernel."""
    shipped = _generated.load(_depthwise.module_source((k, k), (1, 1), (1, 1)), "nbconv_depthwise")
    saved = _depthwise.SMALL_PLANE_ROWS
    _depthwise.SMALL_PLANE_ROWS = range(0)
    try:
        fours = _generated.load(_depthwise.module_source((k, k), (1, 1), (1, 1)), "nbconv_depthwise")
    finally:
        _depthwise.SMALL_PLANE_ROWS = saved
    return shipped, fours


def _call(module, x, w, b, out, spec):
    """``_depthwise.depthwise_forward``'s call of ``module`` (stride 1)."""
    hc, wc = _depthwise.plane_geometry(spec)
    slack = target().vector_bits // 32
    threads = numba.get_num_threads()
    key = ("depthwise_rows.py", x.dtype.str, spec.in_size, spec.padding[0], hc, wc, threads)
    scratch, = _scratch.reused(key, lambda: (np.zeros((threads, hc * wc + 2 * slack), x.dtype),))
    module.forward(x, w, b, out, scratch, 1, 1, spec.padding[0], spec.padding[2], hc, wc,
                   _depthwise.reads_directly(spec, _depthwise.vector_lanes(x.dtype)), 0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=21)
    a = parser.parse_args(argv)
    print(f"{_cpu_model()} ({target().name}), {numba.get_num_threads()} threads, batch 8, float32, medians of "
          f"{a.rounds} (ms); blocks of {_depthwise.SMALL_ROWS} rows on planes of {_depthwise.SMALL_PLANE_ROWS.start}-"
          f"{_depthwise.SMALL_PLANE_ROWS.stop - 1} rows")
    print("| plane | channels | kernel | blocks of 4 | shipped | ratio | same bits |\n|---:|---:|---|---:|---:|---:|---|")
    modules = {}
    for side, c, k in SHAPES:
        shipped, fours = modules.setdefault(k, _modules(k))
        rng = np.random.default_rng(0)
        x = rng.standard_normal((8, c, side, side), dtype=np.float32)
        w = rng.standard_normal((c, 1, k, k), dtype=np.float32)
        b = rng.standard_normal(c).astype(np.float32)
        spec = conv2d_spec(x, w, b, 1, k // 2, 1, c)
        out_4, out_s = np.empty(spec.output_shape, np.float32), np.empty(spec.output_shape, np.float32)
        t_4, t_s = interleaved_medians(lambda: _call(fours, x, w, b, out_4, spec),
                                       lambda: _call(shipped, x, w, b, out_s, spec), rounds=a.rounds)
        print(f"| {side} | {c} | {k}x{k} | {t_4:.3f} | {t_s:.3f} | {t_s / t_4:.2f} | {np.array_equal(out_4, out_s)} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
