"""The 1x1 block's choices, each timed against its alternative in one process, interleaved
(median of paired time ratios, above 1: the kept choice is the faster), float32, on this
machine's threads:

* ``aligned``: wide blocks from the first vector-aligned pixel (``_pointwise.aligning_shift``)
  against blocks from the plane's start, on an input 16 bytes into a 64-byte line (where
  NumPy's large arrays start);
* ``prefetch``: the block with the target's software prefetch (``_pointwise.prefetch_channels``:
  ``PREFETCH_CHANNELS``, or none on AMD's Zen) against the same block with the other choice, in
  one driver over whole pixel blocks, the input on a 64-byte line; ``prefetch16``: the same, the
  input 16 bytes into a line (as for planes the aligned blocks do not take);
* ``prefetch_layers``: the same two blocks in the whole 1x1 kernel (``_pointwise._forward``), on
  every dense 1x1 layer of the bench's networks that the kernel's own blocks compute, batch 8;
* ``columns``: the networks' 3x3 stems (``_im2col``'s columns, in each task's scratch) by the
  blocks without prefetch that ``_im2col`` takes against the prefetching ones, batch 8 and 2;
* ``three``: 7 x 7 planes by three vectors and the images' left pixels
  (``_pointwise._three_vectors_and_rest``) against the 4-vector block (both the kernels' own
  products, with the BLAS off where the target would call it);
* ``stem``: ConvNeXt's 4x4 stride-4 stem as patches (``_im2col.takes_patches``) against columns;
* ``patches``: ConvNeXt-T's stem and 2x2 downsamplings at batches 8 and 2, patches copied and
  multiplied a span of output rows per task (``_im2col._forward_patch_spans``) against the whole
  batch's patches copied first, each call after a 64 MiB buffer is written (``cold``, as in a
  network pass, where a layer meets its input out of cache) or right after the last (``warm``);
  ``kept`` is what ``_im2col.patch_span_rows`` chooses, the other the alternative (spans of a
  size chosen without its bound on wasted lanes);
* ``rest``: ResNeXt-50's 1x1 layers on 14 x 14 planes (batches 8 and 2), whole blocks per
  image and the images' last 4 pixels together as one plane (``_pointwise._wide_blocks_and_rest``)
  against a narrow block for each image's last pixels (``_forward``), with the
  ``REST_MIN_MACS`` bound lifted;
* ``blas``: the kernel's own products against NumPy's OpenBLAS forced on (what
  ``_blas.for_products`` gives on targets under 32 vector registers), where the BLAS is found.

Run: ``python docs/pointwise_blocks.py [--rounds 15] [--only aligned,prefetch,prefetch16,prefetch_layers,columns,three,stem,patches,
     rest,blas]``
"""

from __future__ import annotations

import argparse
import platform
import time

import numba
import numpy as np

import nbconv
from nbconv._numba_options import CPU_PARALLEL
from nbconv._spec import conv2d_spec
from nbconv.cpu import _blas, _im2col, _pointwise

LARGE = [(128, 256, 56, 8), (256, 128, 56, 8), (64, 256, 56, 8), (256, 512, 28, 8), (512, 512, 28, 8),
         (256, 512, 28, 2), (128, 256, 56, 2), (1024, 512, 14, 8)]


def _paired(kept, other, rounds: int) -> tuple[float, float, float]:
    """(median time of ``kept``, of ``other``, median of other / kept per round)."""
    kept(), other()
    t_k, t_o = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        other()
        t_o.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        kept()
        t_k.append(time.perf_counter() - t0)
    return float(np.median(t_k)), float(np.median(t_o)), float(np.median(np.array(t_o) / np.array(t_k)))


def _line_offset(shape, offset_bytes: int, rng) -> np.ndarray:
    n = int(np.prod(shape))
    buf = np.empty(n + 32, np.float32)
    start = ((-buf.ctypes.data + offset_bytes) % 64) // 4
    a = buf[start:start + n].reshape(shape)
    a[...] = rng.standard_normal(shape)
    return a


def _row(name: str, flops: float, kept: float, other: float, ratio: float) -> str:
    return (f"| {name} | {kept * 1e3:.3f} | {flops / kept / 1e9:.0f} | {other * 1e3:.3f} | {flops / other / 1e9:.0f} "
            f"| {ratio:.2f} |")


def aligned(rounds: int, rng) -> list[str]:
    rows = []
    lanes = _pointwise.vector_lanes(np.float32)
    pix_block = _pointwise.pixel_vectors() * lanes
    for ci, co, hw, n in LARGE:
        p = hw * hw
        x, w = _line_offset((n, ci, p), 16, rng), rng.standard_normal((co, ci)).astype(np.float32)
        b = rng.standard_normal(co).astype(np.float32)
        out = np.empty((n, co, p), np.float32)
        chunks = _pointwise.output_chunks(n * -(-p // pix_block), co)
        shift = _pointwise.aligning_shift(x, p, pix_block, co)

        def run(s, x=x, w=w, b=b, out=out, ci=ci, co=co, p=p, chunks=chunks):
            _pointwise._forward(x.reshape(-1), w.reshape(-1), b, out.reshape(-1), 1, ci, co, p, chunks, pix_block,
                                lanes, s)

        rows.append(_row(f"{ci} -> {co} @{hw}, batch {n}, shift {shift}", 2 * ci * co * p * n,
                         *_paired(lambda: run(shift), lambda: run(0), rounds)))
    return rows


def _whole_blocks_driver(block):
    @numba.njit(**CPU_PARALLEL)
    def run(x, w, b, out, cin, cout, hw, pix_block):
        n_img = x.shape[0] // (cin * hw)
        p_blocks = hw // pix_block
        o_blocks = cout // _pointwise.O_BLOCK
        for task in numba.prange(n_img * p_blocks):
            n, p0 = task // p_blocks, (task % p_blocks) * pix_block
            for ob in range(o_blocks):
                oc = ob * _pointwise.O_BLOCK
                block(x, n * cin * hw + p0, hw, cin, w, oc * cin, cin, b, oc, out, (n * cout + oc) * hw + p0, hw,
                      pix_block)
    return run


def _prefetch_choices() -> tuple[int, int]:
    """(the target's prefetch distance, the other choice)."""
    kept = _pointwise.prefetch_channels()
    return kept, 0 if kept else _pointwise.PREFETCH_CHANNELS


def prefetch(rounds: int, rng, offset_bytes: int = 0) -> list[str]:
    bits, lanes = _pointwise._BITS, _pointwise.vector_lanes(np.float32)
    pix_block = _pointwise.pixel_vectors() * lanes
    kept_pf, other_pf = _prefetch_choices()
    kept = _whole_blocks_driver(_pointwise.pointwise_block(_pointwise.O_BLOCK, _pointwise._N_PV, bits, kept_pf))
    other = _whole_blocks_driver(_pointwise.pointwise_block(_pointwise.O_BLOCK, _pointwise._N_PV, bits, other_pf))
    rows = []
    for ci, co, hw, n in LARGE:
        p = hw * hw
        co -= co % _pointwise.O_BLOCK  # whole blocks only
        x, w = _line_offset((n, ci, p), offset_bytes, rng), rng.standard_normal((co, ci)).astype(np.float32)
        b = rng.standard_normal(co).astype(np.float32)
        o1, o2 = np.empty((n, co, p), np.float32), np.empty((n, co, p), np.float32)
        args = (x.reshape(-1), w.reshape(-1), b)
        rows.append(_row(f"{ci} -> {co} @{hw}, batch {n}, prefetch {kept_pf} / {other_pf}",
                         2 * ci * co * (p - p % pix_block) * n,
                         *_paired(lambda: kept(*args, o1.reshape(-1), ci, co, p, pix_block),
                                  lambda: other(*args, o2.reshape(-1), ci, co, p, pix_block), rounds)))
        whole = p - p % pix_block
        assert np.array_equal(o1[..., :whole], o2[..., :whole])
    return rows


def _recompiled(fn, **names):
    """``fn`` (a kernel of nbconv's) compiled again with some of its module's globals replaced
    (another block, say), not cached."""
    import types

    py = fn.py_func
    scope = dict(py.__globals__)
    scope.update(names)
    options = {k: v for k, v in CPU_PARALLEL.items() if k != "cache"}
    return numba.njit(**options)(types.FunctionType(py.__code__, scope, py.__name__))


def _swapped(module, name: str, replacement):
    """A call of ``fn`` with ``module.name`` replaced for its duration."""
    def call(fn):
        saved = getattr(module, name)
        setattr(module, name, replacement)
        try:
            return fn()
        finally:
            setattr(module, name, saved)
    return call


def prefetch_layers(rounds: int, rng, batch: int = 8) -> list[str]:
    from nbconv.bench._networks import NETWORKS

    bits = _pointwise._BITS
    kept_pf, other_pf = _prefetch_choices()
    other_forward = _recompiled(
        _pointwise._forward,
        _block=_pointwise.pointwise_block(_pointwise._N_O, _pointwise._N_PV, bits, other_pf),
        _block_narrow=_pointwise.pointwise_block(_pointwise._N_O_NARROW, 1, bits, other_pf))
    with_other = _swapped(_pointwise, "_forward", other_forward)
    layers = sorted({(la.c_in, la.c_out, la.side, la.stride) for layers in NETWORKS.values() for la in layers
                     if la.k == 1 and la.groups == 1 and la.side >= 14})
    rows = []
    for ci, co, side, stride in layers:
        hw = (side // stride) ** 2
        if _blas.for_products() is not None and _blas.takes_product(ci, hw):
            continue  # the BLAS's product, not the blocks
        x = rng.standard_normal((batch, ci, side, side)).astype(np.float32)
        w = rng.standard_normal((co, ci, 1, 1)).astype(np.float32)
        o1, o2 = (np.empty((batch, co, side // stride, side // stride), np.float32) for _ in range(2))
        kept = lambda: nbconv.conv2d(x, w, stride=stride, out=o1)  # noqa: E731
        other = lambda: with_other(lambda: nbconv.conv2d(x, w, stride=stride, out=o2))  # noqa: E731
        rows.append(_row(f"{ci} -> {co} s{stride} @{side}, batch {batch}, prefetch {kept_pf} / {other_pf}",
                         2 * ci * co * hw * batch, *_paired(kept, other, rounds)))
        assert np.array_equal(o1, o2)
    return rows


def columns(rounds: int, rng) -> list[str]:
    from nbconv.bench._networks import NETWORKS

    bits = _pointwise._BITS
    prefetching = _recompiled(
        _im2col._forward, _block=_pointwise.pointwise_block(_pointwise._N_O, _pointwise._N_PV, bits,
                                                            _pointwise.PREFETCH_CHANNELS))
    with_prefetch = _swapped(_im2col, "_forward", prefetching)
    stems = sorted({(la.c_in, la.c_out, la.k, la.stride, la.pad, la.side) for layers in NETWORKS.values()
                    for la in layers if la.c_in == 3 and la.k == 3})
    rows = []
    for batch in (8, 2):
        for ci, co, k, stride, pad, side in stems:
            x = rng.standard_normal((batch, ci, side, side)).astype(np.float32)
            w = rng.standard_normal((co, ci, k, k)).astype(np.float32)
            o1 = nbconv.conv2d(x, w, stride=stride, padding=pad)
            o2 = np.empty_like(o1)
            kept = lambda: nbconv.conv2d(x, w, stride=stride, padding=pad, out=o1)  # noqa: E731
            other = lambda: with_prefetch(lambda: nbconv.conv2d(x, w, stride=stride, padding=pad, out=o2))  # noqa: E731
            oh, ow = o1.shape[2:]
            rows.append(_row(f"{ci} -> {co} {k}x{k} s{stride} @{side}, batch {batch}",
                             2 * ci * co * k * k * oh * ow * batch, *_paired(kept, other, rounds)))
            assert np.array_equal(o1, o2)
    return rows


def three(rounds: int, rng) -> list[str]:
    for_products = _blas.for_products
    _blas.for_products = lambda: None  # the own blocks, also where the BLAS would take these products
    try:
        return _three(rounds, rng)
    finally:
        _blas.for_products = for_products


def _three(rounds: int, rng) -> list[str]:
    rows = []
    for ci, co, n in [(1024, 2048, 8), (2048, 1024, 8), (192, 1152, 8), (320, 1280, 8), (1024, 2048, 2)]:
        x = rng.standard_normal((n, ci, 49)).astype(np.float32)
        w, b = rng.standard_normal((co, ci)).astype(np.float32), rng.standard_normal(co).astype(np.float32)
        o1, o2 = np.empty((n, co, 49), np.float32), np.empty((n, co, 49), np.float32)
        rows.append(_row(f"{ci} -> {co} @7, batch {n}", 2 * ci * co * 49 * n,
                         *_paired(lambda: _pointwise.plane_products(x, w, b, o1, 1, 49),
                                  lambda: _pointwise._products(x.reshape(-1), w.reshape(-1), b, o2.reshape(-1), n, 1,
                                                               ci, co, 49), rounds)))
        assert np.array_equal(o1, o2)
    return rows


def stem(rounds: int, rng) -> list[str]:
    rows = []
    takes = _im2col.takes_patches
    for n in (8, 2, 1):
        x = rng.standard_normal((n, 3, 224, 224)).astype(np.float32)
        w, b = rng.standard_normal((96, 3, 4, 4)).astype(np.float32), rng.standard_normal(96).astype(np.float32)

        def columns():
            _im2col.takes_patches = lambda spec: False
            try:
                nbconv.conv2d(x, w, b, stride=4)
            finally:
                _im2col.takes_patches = takes

        rows.append(_row(f"3 -> 96 4x4 s4 @224, batch {n}", 2 * 48 * 96 * 56 * 56 * n,
                         *_paired(lambda: nbconv.conv2d(x, w, b, stride=4), columns, rounds)))
    return rows


def _paired_after(before, kept, other, rounds: int) -> tuple[float, float, float]:
    """As :func:`_paired`, ``before()`` run untimed ahead of every timed call."""
    kept(), other()
    t_k, t_o = [], []
    for _ in range(rounds):
        for fn, times in ((other, t_o), (kept, t_k)):
            before()
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return float(np.median(t_k)), float(np.median(t_o)), float(np.median(np.array(t_o) / np.array(t_k)))


def patches(rounds: int, rng) -> list[str]:
    rows = []
    threads = numba.get_num_threads()
    junk = np.zeros(1 << 24, np.float32)
    for n in (8, 2):
        for ci, co, k, side in [(3, 96, 4, 224), (96, 192, 2, 56), (192, 384, 2, 28), (384, 768, 2, 14)]:
            x = rng.standard_normal((n, ci, side, side), dtype=np.float32)
            w = rng.standard_normal((co, ci, k, k), dtype=np.float32)
            b = rng.standard_normal(co, dtype=np.float32)
            spec = conv2d_spec(x, w, b, k)
            out = np.empty((n, co) + spec.out_size, np.float32)
            chosen = _im2col.patch_span_rows(spec, threads)
            saved = _im2col.PATCH_SPAN_MAX_WORK
            _im2col.PATCH_SPAN_MAX_WORK = float("inf")
            try:
                span_rows = chosen or _im2col.patch_span_rows(spec, threads) or spec.out_size[0]
            finally:
                _im2col.PATCH_SPAN_MAX_WORK = saved
            lanes = _pointwise.vector_lanes(np.float32)
            size = ci * k * k * span_rows * spec.out_size[1]
            scratch = np.empty((threads, size), np.float32)
            oh, ow = spec.out_size

            def spans(x=x, w=w, b=b, out=out, scratch=scratch, k=k, oh=oh, ow=ow, span_rows=span_rows):
                _im2col._forward_patch_spans(x, w, b, out, scratch, 1, k, k, oh, ow, span_rows,
                                             _pointwise.pixel_vectors() * lanes, lanes)

            def whole(x=x, w=w, b=b, out=out, spec=spec):
                keep = _im2col.patch_span_rows
                _im2col.patch_span_rows = lambda spec, threads: 0
                try:
                    _im2col.im2col_forward(x, w, b, out, spec)
                finally:
                    _im2col.patch_span_rows = keep

            kept, other = (spans, whole) if chosen else (whole, spans)
            kind = f"spans of {span_rows} rows" if chosen else f"whole batch (spans of {span_rows} rows)"
            flops = 2 * ci * k * k * co * oh * ow * n
            for label, before in (("cold", lambda: junk.__iadd__(1)), ("warm", lambda: None)):
                rows.append(_row(f"{ci} -> {co} {k}x{k} s{k} @{side}, batch {n}, {label}: {kind}", flops,
                                 *_paired_after(before, kept, other, rounds)))
    return rows


def rest(rounds: int, rng) -> list[str]:
    rows = []
    takes, bound = _pointwise._takes_wide_blocks_and_rest, _pointwise.REST_MIN_MACS
    for ci, co, n in [(1024, 512, 8), (512, 1024, 8), (1024, 1024, 8), (1024, 512, 2), (1024, 1024, 2),
                      (256, 1024, 8), (672, 112, 8), (96, 576, 8), (64, 384, 2)]:
        x = rng.standard_normal((n, ci, 196)).astype(np.float32)
        w, b = rng.standard_normal((co, ci)).astype(np.float32), rng.standard_normal(co).astype(np.float32)
        out = np.empty((n, co, 196), np.float32)

        def run(gathered: bool, x=x, w=w, b=b, out=out):
            _pointwise.REST_MIN_MACS = 0
            _pointwise._takes_wide_blocks_and_rest = takes if gathered else (lambda *args: False)
            try:
                _pointwise.plane_products(x, w, b, out, 1, 196)
            finally:
                _pointwise._takes_wide_blocks_and_rest, _pointwise.REST_MIN_MACS = takes, bound

        macs = n * 196 * ci * co
        rows.append(_row(f"{ci} -> {co} @14, batch {n}{' (taken)' if macs >= bound else ''}", 2 * macs,
                         *_paired(lambda: run(True), lambda: run(False), rounds)))
    return rows


def blas(rounds: int, rng) -> list[str]:
    if _blas.gemm_functions() is None:
        return ["| (no usable BLAS found) | | | | | |"]
    rows = []
    own = _blas.faster_than_own_blocks
    for ci, co, hw, n in [(1024, 2048, 7, 8), (1024, 512, 14, 8), (256, 512, 28, 8), (32, 192, 28, 8),
                          (1024, 2048, 7, 2)]:
        x = rng.standard_normal((n, ci, hw * hw)).astype(np.float32)
        w, b = rng.standard_normal((co, ci)).astype(np.float32), rng.standard_normal(co).astype(np.float32)
        out = np.empty((n, co, hw * hw), np.float32)

        def by_blas(x=x, w=w, b=b, out=out, hw=hw):
            _blas.faster_than_own_blocks = lambda: True
            try:
                _pointwise.plane_products(x, w, b, out, 1, hw * hw)
            finally:
                _blas.faster_than_own_blocks = own

        rows.append(_row(f"{ci} -> {co} @{hw}, batch {n}", 2 * ci * co * hw * hw * n,
                         *_paired(lambda: _pointwise.plane_products(x, w, b, out, 1, hw * hw), by_blas, rounds)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--only", default="aligned,prefetch,prefetch16,prefetch_layers,columns,three,"
                                          "stem,patches,rest,blas")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{platform.processor() or platform.machine()}, {numba.get_num_threads()} threads, float32, "
          f"{args.rounds} interleaved rounds; ratio = other's time / kept's (median of pairs)")
    sections = {"aligned": ("aligned blocks", "from the plane's start", aligned),
                "prefetch": ("target's prefetch", "other", prefetch),
                "prefetch16": ("target's prefetch", "other", lambda rounds, rng: prefetch(rounds, rng, 16)),
                "prefetch_layers": ("target's prefetch", "other", prefetch_layers),
                "columns": ("no prefetch", "prefetch", columns),
                "three": ("three vectors and the rest", "4-vector block", three),
                "stem": ("patches", "columns", stem),
                "patches": ("kept", "other", patches),
                "rest": ("wide blocks and the rest", "narrow blocks", rest),
                "blas": ("own products", "NumPy's BLAS", blas)}
    for key in args.only.split(","):
        kept, other, fn = sections[key]
        print(f"\n{key}\n| layer | {kept} ms | GFLOP/s | {other} ms | GFLOP/s | ratio |\n|---|---:|---:|---:|---:|---:|")
        print("\n".join(fn(args.rounds, rng)), flush=True)


if __name__ == "__main__":
    main()
