"""How many vector sums the weight-gradient kernels may keep in registers on this CPU: ``_wgrad``'s
passes under several budgets (each a module of its own, called side by side) on the standard and
extra shapes that take ``_wgrad``, then ``_outer``'s weight gradient (blocks for AVX-512's budget,
and one channel vector per block) against ``_wgrad`` on grouped 3x3 and 5x5 layers. Interleaved
medians in milliseconds, batch 8, float32, Numba's threads::

    python docs/wgrad_budget.py [--budgets 25,12,8] [--rounds 11]
"""

from __future__ import annotations

import argparse
import os
import sys

import numba
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import outer
from _timing import interleaved_medians

from nbconv._shapes import EXTRA_SHAPES, STANDARD_SHAPES
from nbconv._spec import conv2d_spec
from nbconv.bench._run import _cpu_model
from nbconv.cpu import (
    _channels_last,
    _flat,
    _generated,
    _launch,
    _outer,
    _packed,
    _rowblock,
    _wgrad,
    _winograd_wgrad,
)
from nbconv.cpu._target import target

#: Grouped layers whose output channels per group are whole vectors (``_outer``'s weight
#: gradient): ``docs/outer.py``'s, and one more of 16 channels per group.
OUTER_SHAPES = [s for s in outer.SHAPES if s[0] in {"resnext_g32_14", "g8_128_56", "g16_s2_56", "g32_1024_7",
                                                      "dw_mult16_28", "g32_k5_14"}]
OUTER_SHAPES.append(("g16_28", 256, 28, 256, 3, 1, 1, 16))


def _arrays(shape_in, weight_shape, conv_args, rng):
    x = rng.standard_normal(shape_in, dtype=np.float32)
    w = rng.standard_normal(weight_shape, dtype=np.float32)
    spec = conv2d_spec(x, w, None, **conv_args)
    return x, w, rng.standard_normal(spec.output_shape, dtype=np.float32), spec


def _takes_wgrad(spec) -> bool:
    """Whether the launcher's weight gradient for ``spec`` is ``_wgrad``'s (on this target)."""
    if not _launch.worth_generating(spec) or _winograd_wgrad.applies(spec):
        return False
    if spec.out_size[1] < _rowblock.MIN_OUT_WIDTH and (_flat.applies_weight_grad(spec)
                                                       or _channels_last.applies_weight_grad(spec)):
        return False
    return not _outer.applies_weight_grad(spec) and _wgrad.applies(spec)


def _wgrad_call(spec, x, gy, budget: int):
    """``_wgrad``'s weight gradient of ``spec`` with passes for ``budget`` sums (its own module
    and buffers), and the passes' label."""
    threads = numba.get_num_threads()
    stack = _launch.choose_weight_stack(spec)
    saved = _wgrad.sum_budget
    _wgrad.sum_budget = lambda: budget
    _wgrad.choose_passes.cache_clear()
    _wgrad._module.cache_clear()
    try:
        ob, split = _wgrad.choose_passes(spec)
        module = _wgrad._module(spec, stack)
    finally:
        _wgrad.sum_budget = saved
        _wgrad.choose_passes.cache_clear()
        _wgrad._module.cache_clear()
    ocs = _generated.channels_per_slice(spec.out_per_group, _wgrad.task_slices(spec, threads), ob)
    scratch = np.zeros((threads, _packed.packed_geometry(spec, stack).scratch_elems), np.float32)
    gy_buf = np.empty((threads, ob * _wgrad._grad_pitch(spec, stack)), np.float32)
    tot = np.empty((threads, ocs * spec.in_per_group * spec.kernel_size[0] * spec.kernel_size[1]), np.float64)
    dw = np.empty((spec.out_channels, spec.in_per_group) + spec.kernel_size, np.float32)
    return (lambda: module.weight_grad(x, gy, dw, scratch, gy_buf, tot, ocs, np.float32(0))), f"{ob}x{split}"


def _outer_call(spec, x, gy, budget: int):
    """``_outer``'s weight gradient of ``spec`` with blocks for ``budget`` sums (its module and
    block put in place for the call only)."""
    saved = _outer.block_sums, _outer._weight_grad_module, _outer.weight_grad_block
    _outer.block_sums = lambda: budget
    try:
        module = _generated.load(_outer.weight_grad_source(spec, True), "nbconv_outer_wgrad")
        block = _outer.weight_grad_block(spec)
    finally:
        _outer.block_sums = saved[0]
    dw = np.empty((spec.out_channels, spec.in_per_group) + spec.kernel_size, np.float32)

    def call():
        _outer._weight_grad_module = lambda s, direct=True: module
        _outer.weight_grad_block = lambda s: block
        try:
            _outer.outer_weight_grad(x, gy, dw, spec)
        finally:
            _outer._weight_grad_module, _outer.weight_grad_block = saved[1], saved[2]
    return call


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", default="25,12,8")
    parser.add_argument("--rounds", type=int, default=11)
    a = parser.parse_args(argv)
    budgets = [int(b) for b in a.budgets.split(",")]
    t = target()
    print(f"{_cpu_model()} ({t.name}, {t.vector_bits}-bit vectors), {numba.get_num_threads()} threads, batch 8, "
          f"float32, medians of {a.rounds} (ms)")
    print(f"\n_wgrad (budget now: {_wgrad.sum_budget()} sums)\n\n| shape | "
          + " | ".join(f"budget {b}" for b in budgets) + " |\n|---|" + "---:|" * len(budgets))
    rng = np.random.default_rng(0)
    for s in STANDARD_SHAPES + EXTRA_SHAPES:
        x, w, gy, spec = _arrays(s.input_shape(8), s.weight_shape(), s.conv_args(), rng)
        if not _takes_wgrad(spec):
            continue
        calls = [_wgrad_call(spec, x, gy, b) for b in budgets]
        times = interleaved_medians(*(c for c, _ in calls), rounds=a.rounds)
        print(f"| {s.name} | " + " | ".join(f"{ms:.2f} ({label})" for ms, (_, label) in zip(times, calls)) + " |",
              flush=True)
    print(f"\n_outer's weight gradient against _wgrad (_outer's budget now: {_outer.block_sums()} sums)\n\n"
          "| shape | outer, AVX-512 blocks | outer, one vector | wgrad |\n|---|---:|---:|---:|")
    for name, c_in, hw, c_out, k, stride, pad, groups in OUTER_SHAPES:
        x, w, gy, spec = _arrays((8, c_in, hw, hw), (c_out, c_in // groups, k, k),
                                 {"stride": stride, "padding": pad, "groups": groups}, rng)
        if not (_outer.applies(spec) and _outer.group_pack(spec) == 1):
            continue
        calls = [_outer_call(spec, x, gy, budget) for budget in (_outer.SUM_BUDGET, 1)]
        calls.append(_wgrad_call(spec, x, gy, _wgrad.sum_budget())[0])
        big, one, other = interleaved_medians(*calls, rounds=a.rounds)
        print(f"| {name} | {big:.2f} | {one:.2f} | {other:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
