"""Pointwise (1x1, no padding) convolution on the CPU, compiled once per dtype and target.

A 1x1 convolution is a matrix product per image and group: ``out[o, p] = b[o] + sum_c w[o, c] *
x[c, p]`` over the plane's ``H * W`` pixels ``p``. Here a block of ``O_BLOCK`` output channels x
``PIXEL_VECTORS`` vectors of pixels (pixels in the lanes, read and written where they lie in NCHW)
keeps its sums in registers over the group's input channels: per channel, one vector load per
pixel vector, one broadcast weight per output channel, ``O_BLOCK * PIXEL_VECTORS`` fused
multiply-adds (:func:`pointwise_block`, LLVM IR as in ``_simd``). Every size is a run-time value,
so one compiled kernel serves every 1x1 layer of a network (``_outer``, generated per geometry,
cost MobileNetV2's first forward about 2 s of compilation per 1x1 layer: ``python
docs/first_forward.py``).

The sum of an output is ``bias``, then the input channels in order, each multiply-add fused: the
same bits whatever the blocking, the thread count or the plane size. A block past the last output
channel moves back to end at it, and the last block of pixels moves left to end at the plane's
end (a few outputs computed twice, to the same bits); only a plane smaller than one block is
computed with masked stores (and, for its last input channels, masked loads).

From ``_blas.MIN_MACS`` multiply-adds per image and group (and as many input channels per group
as ``_blas.takes_product`` asks for the plane's size), where NumPy's OpenBLAS is found and
the target has fewer than 32 vector registers (``_blas.for_products``: with AVX-512 this kernel is
the faster), the products are the BLAS's instead (:func:`_forward_blas`): each of Numba's tasks calls a
single-threaded ``cblas_sgemm`` on a block of output channels x a chunk of pixels, its outputs
first set to the bias. On a 2-core Zen 3 (batch 2, float32) that took ResNeXt-50's 1x1 layers
from 0.56-0.88x PyTorch to 0.95-1.0x (``nbconv bench --network resnext50_32x4d``). Its sums are
in the BLAS's order; the split into tasks is a function of the sizes alone.

A stride (ResNet's downsampling shortcuts) first copies the pixels it keeps together.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .._address import data_address
from .._numba_options import njit_parallel, njit_serial
from . import _blas, _scratch
from ._simd import (
    _declared,
    _fma,
    _splat,
    _takes,
    copy_step2,
    copy_step4,
    lanes_below_bits,
    store_fence,
    vector_args,
)
from ._target import target, target_lanes
from ._threads import thread_count

#: Output channels per block: each adds a broadcast and ``PIXEL_VECTORS`` sums.
O_BLOCK = 6

#: Input channels ahead whose pixel vectors a block asks the cache for (software prefetch) while
#: it multiplies the current ones. On a 2-core Intel Xeon the hardware's stride prefetcher does
#: not follow rows more than 2 KB apart (planes over 512 float32 pixels): without it ResNeXt-50's
#: 1x1 layers on 28 x 28 and 56 x 56 planes took up to 1.26x the time (``python
#: docs/pointwise_blocks.py --only prefetch,prefetch16``, ``docs/performance.md`` round 16).
#: On AMD's Zen the prefetches only cost (:func:`prefetch_channels`).
PREFETCH_CHANNELS = 4


def prefetch_channels() -> int:
    """``PREFETCH_CHANNELS`` for the blocks that read a layer's input, or 0 (no software prefetch)
    on AMD's Zen cores (LLVM's ``znver*`` targets). On a 2-core Zen 3, over the 58 dense 1x1
    layers of the bench's networks that the own blocks compute (batch 8, ``python
    docs/pointwise_blocks.py --only prefetch_layers``, two runs), the prefetching block took
    1.03-1.04x the summed time of the same block without: 1.05x per layer on the median, and
    on 14 x 14 and 28 x 28 planes nearly always slower (its two prefetches and their addresses
    per input channel are a sixth of the block's instructions, for rows already in cache);
    on 56 x 56 and 112 x 112 planes 0.78-1.42x, about even on the median
    (``docs/performance.md``, round 25)."""
    return 0 if target().name.startswith("znver") else PREFETCH_CHANNELS


def pixel_vectors() -> int:
    """Pixel vectors per block: with 32 vector registers 4 (24 sums, 4 inputs, 1 broadcast),
    with 16 (AVX2) 2."""
    return 4 if target().vector_registers >= 32 else 2


def vector_lanes(dtype) -> int:
    """Elements of ``dtype`` per vector register of the target."""
    return target_lanes(dtype)


def applies(spec) -> bool:
    """1x1 kernel, no padding, no input dilation, at least one image, and at least ``O_BLOCK``
    output channels per group (a block moves back within its group) or two input channels per
    group (groups of fewer outputs take a block of their size, :func:`_forward_small`; depthwise
    layers with a channel multiplier under ``O_BLOCK`` stay with the depthwise kernels). A stride
    takes every ``stride``-th pixel first (ResNet's downsampling shortcuts)."""
    return (spec.kernel_size == (1, 1) and spec.lhs_dilation == (1, 1)
            and not any(spec.padding) and spec.batch > 0
            and (spec.out_per_group >= O_BLOCK or spec.in_per_group >= 2)
            and spec.in_size[0] * spec.in_size[1] > 0)


def pointwise_block(n_o: int, n_pv: int, bits: int, prefetch: int = PREFETCH_CHANNELS, stream: bool | str = False,
                    offsets: bool = False):
    """An ``@intrinsic`` ``block(x, x0, x_pitch, n_c, w, w0, w_pitch, b, b0, out, o0, out_pitch,
    n_pix)``:

    ``out[o0 + o * out_pitch + p] = b[b0 + o] + sum_{c < n_c} w[w0 + o * w_pitch + c] *
    x[x0 + c * x_pitch + p]``

    for ``o < n_o`` and ``p < min(n_pix, n_pv * lanes)``, ``lanes`` the elements of a ``bits``
    vector. All but ``n_o``, ``n_pv`` and the width are run-time values. Full blocks use plain
    vector loads and stores. A short one (``n_pix`` under the block's width) masks its stores:
    nothing past ``n_pix`` is written. Its loads are plain for the channels whose block width
    ends within ``x[x0 + (n_c - 1) * x_pitch + n_pix - 1]`` (the last element it must read; the
    lanes past ``n_pix`` then hold the next channels' pixels, whose sums are never stored) and
    masked for the rest, so nothing past that element is read (masked loads in every channel
    had their masks computed again each time). No bounds checks.

    With ``stream``, a full block whose rows all start at a multiple of the vector's bytes stores
    them with streaming (non-temporal) stores, which write past the caches without reading the
    lines first; a task that used them calls :func:`_simd.store_fence` before it ends. With
    ``stream="argument"`` the block takes a fourteenth argument, an integer: streaming stores
    where it is not 0 (one compiled kernel for both kinds of result).

    With ``offsets`` the third argument is an int64 array instead of ``x_pitch``: input channel
    (term) ``c`` is read from ``x[x0 + x_pitch[c] + p]`` (terms anywhere, as ``_stem``'s
    de-interleaved rows hold them); a short block then loads every term under its mask, and
    ``prefetch`` must be 0."""
    if offsets and prefetch:
        raise ValueError("a block with a table of offsets does not prefetch")

    def codegen(context, builder, signature, args):
        from numba.core import cgutils

        values, size, lanes, vec, intp = vector_args(context, builder, signature, args, bits)
        x_p, x0_i, x_pitch_i, n_c_i, w_p, w0_i, w_pitch_i, b_p, b0_i, out_p, o0_i, out_pitch_i, n_pix_i = values[:13]
        i32 = ir.IntType(32)

        def const(i):
            return ir.Constant(intp, i)

        def at(base, index, as_vector=True):
            p = builder.gep(base, [index], inbounds=True)
            return builder.bitcast(p, vec.as_pointer()) if as_vector else p

        mask_type = ir.VectorType(ir.IntType(1), lanes)
        nontemporal = builder.module.add_metadata([ir.Constant(i32, 1)])
        suffix = f"v{lanes}{vec.element.intrinsic_name}.p0"
        masked_load = _declared(builder, f"llvm.masked.load.{suffix}",
                                ir.FunctionType(vec, [vec.as_pointer(), i32, mask_type, vec]))
        masked_store = _declared(builder, f"llvm.masked.store.{suffix}",
                                 ir.FunctionType(ir.VoidType(), [vec, vec.as_pointer(), i32, mask_type]))

        def body(masks):
            """The block; ``masks`` None (full vectors) or one lane mask per pixel vector."""
            sums = [[cgutils.alloca_once(builder, vec) for _ in range(n_pv)] for _ in range(n_o)]
            for o in range(n_o):
                bias = _splat(builder, builder.load(at(b_p, builder.add(b0_i, const(o)), False)), vec)
                for v in range(n_pv):
                    builder.store(bias, sums[o][v])
            i8p = ir.IntType(8).as_pointer()
            prefetch_fn = _declared(builder, "llvm.prefetch.p0", ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]))
            ahead = None if offsets else builder.mul(const(prefetch), x_pitch_i)

            def channels(start, stop, load_masks):
                """The sums over input channels [start, stop), their pixel vectors loaded
                under ``load_masks`` (None: plain loads)."""
                with cgutils.for_range_slice(builder, start, stop, const(1), inc=True) as (index, _):
                    if offsets:
                        xc = builder.add(x0_i, builder.load(builder.gep(x_pitch_i, [index], inbounds=True)))
                    else:
                        xc = builder.add(x0_i, builder.mul(index, x_pitch_i))
                    for v in range(n_pv if prefetch else 0):  # never faults, even past the input
                        p = builder.gep(x_p, [builder.add(builder.add(xc, ahead), const(v * lanes))])
                        builder.call(prefetch_fn, [builder.bitcast(p, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3),
                                                ir.Constant(i32, 1)])
                    values = []
                    for v in range(n_pv):
                        pointer = at(x_p, builder.add(xc, const(v * lanes)))
                        values.append(builder.load(pointer, align=size) if load_masks is None else builder.call(
                            masked_load, [pointer, ir.Constant(i32, size), load_masks[v], ir.Constant(vec, None)]))
                    for o in range(n_o):
                        w_at = builder.add(builder.add(w0_i, builder.mul(const(o), w_pitch_i)), index)
                        weight = _splat(builder, builder.load(at(w_p, w_at, False)), vec)
                        for v in range(n_pv):
                            builder.store(_fma(builder, weight, values[v], builder.load(sums[o][v])), sums[o][v])

            if masks is None:
                channels(const(0), n_c_i, None)
            elif offsets:
                channels(const(0), n_c_i, masks)
            else:
                # Channels whose whole block width lies within the input (the lanes past
                # n_pix read the next channels' pixels, whose sums are never stored) take
                # plain loads; the last ones masked loads.
                reach = builder.sub(builder.add(builder.mul(builder.sub(n_c_i, const(1)), x_pitch_i), n_pix_i),
                                    const(n_pv * lanes))
                ok = builder.and_(builder.icmp_signed(">=", reach, const(0)),
                                  builder.icmp_signed(">", x_pitch_i, const(0)))
                pitch = builder.select(ok, x_pitch_i, const(1))
                plain = builder.select(ok, builder.add(builder.sdiv(reach, pitch), const(1)), const(0))
                plain = builder.select(builder.icmp_signed("<", plain, n_c_i), plain, n_c_i)
                channels(const(0), plain, None)
                channels(plain, n_c_i, masks)
            def store_all(streaming):
                for o in range(n_o):
                    row = builder.add(o0_i, builder.mul(const(o), out_pitch_i))
                    for v in range(n_pv):
                        pointer = at(out_p, builder.add(row, const(v * lanes)))
                        if masks is None and streaming:
                            st = builder.store(builder.load(sums[o][v]), pointer, align=size * lanes)
                            st.set_metadata("nontemporal", nontemporal)
                        elif masks is None:
                            builder.store(builder.load(sums[o][v]), pointer, align=size)
                        else:
                            builder.call(masked_store, [builder.load(sums[o][v]), pointer, ir.Constant(i32, size),
                                                        masks[v]])

            if masks is None and stream:
                # streaming stores (past the caches: no read of the line first) where every
                # row's first vector is aligned to the vector's size
                first = builder.ptrtoint(at(out_p, o0_i, False), intp)
                misaligned = builder.and_(builder.or_(first, builder.mul(out_pitch_i, const(size))),
                                          const(size * lanes - 1))
                streams = builder.icmp_signed("==", misaligned, const(0))
                if stream == "argument":
                    streams = builder.and_(streams, builder.icmp_signed("!=", values[13], const(0)))
                with builder.if_else(streams) as (then, otherwise):
                    with then:
                        store_all(True)
                    with otherwise:
                        store_all(False)
            else:
                store_all(False)

        full = builder.icmp_signed(">=", n_pix_i, const(n_pv * lanes))
        with builder.if_else(full) as (then, otherwise):
            with then:
                body(None)
            with otherwise:
                masks = [lanes_below_bits(builder, builder.sub(n_pix_i, const(v * lanes)), lanes) for v in range(n_pv)]
                body(masks)
        return context.get_dummy_value()

    def takes(x, x0, x_pitch, n_c, w, w0, w_pitch, b, b0, out, o0, out_pitch, n_pix, *more) -> bool:
        if offsets:
            if not (isinstance(x_pitch, types.Array) and x_pitch.ndim == 1 and x_pitch.dtype == types.int64):
                return False
            return _takes((x, w, b, out), (x0, n_c, w0, w_pitch, b0, o0, out_pitch, n_pix, *more))
        return _takes((x, w, b, out), (x0, x_pitch, n_c, w0, w_pitch, b0, o0, out_pitch, n_pix, *more))

    if stream == "argument":
        @intrinsic
        def block_taking(typingctx, x, x0, x_pitch, n_c, w, w0, w_pitch, b, b0, out, o0, out_pitch, n_pix, streams):
            if not takes(x, x0, x_pitch, n_c, w, w0, w_pitch, b, b0, out, o0, out_pitch, n_pix, streams):
                return None
            return types.void(x, x0, x_pitch, n_c, w, w0, w_pitch, b, b0, out, o0, out_pitch, n_pix, streams), codegen

        return block_taking

    @intrinsic
    def block(typingctx, x, x0, x_pitch, n_c, w, w0, w_pitch, b, b0, out, o0, out_pitch, n_pix):
        if not takes(x, x0, x_pitch, n_c, w, w0, w_pitch, b, b0, out, o0, out_pitch, n_pix):
            return None
        return types.void(x, x0, x_pitch, n_c, w, w0, w_pitch, b, b0, out, o0, out_pitch, n_pix), codegen

    return block


#: The target's block, fixed per process (Numba's disk cache keeps a compiled kernel per target).
_N_O, _N_PV, _BITS = O_BLOCK, pixel_vectors(), target().vector_bits
_block = pointwise_block(_N_O, _N_PV, _BITS, prefetch_channels())
#: The narrow block: one vector of pixels by as many output channels as the wide block has sums
#: (24 with 32 vector registers, 12 with 16). It takes a plane's last pixels where they fill at
#: most one vector (a 14 x 14 plane is three wide blocks of 64 and 4 pixels; the wide block moved
#: back would compute 60 of its 64 pixels twice) and planes of fewer pixels than a vector.
_N_O_NARROW = O_BLOCK * _N_PV
_block_narrow = pointwise_block(_N_O_NARROW, 1, _BITS, prefetch_channels())


#: The block for planes of whole runs of three vectors and a few pixels (7 x 7 float32: 48 + 1):
#: 3 vectors by 8 output channels with 32 vector registers (one run: 3 x 16 pixels), by 4 with
#: 16 (two runs of 3 x 8), as many sums as the wide block; the few pixels left of every image are
#: computed together afterwards (:func:`_three_vectors_and_rest`). With 16 registers the 4 x 3
#: block loads 7 values per 12 multiply-adds where the wide block loads 8.
_N_O_THREE = 8 if _N_PV == 4 else 4
_THREE_RUNS = 1 if _N_PV == 4 else 2
_block_three = pointwise_block(_N_O_THREE, 3, _BITS, prefetch_channels())
#: With 16 vector registers, the 4 x 3 block takes groups of fewer weights (input channels x
#: output channels) than this, the BLAS the rest. Every task re-reads its 4 outputs' weights for
#: each image: on a 2-core Zen 3 ResNeXt-50's 1024 -> 2048 and 2048 -> 1024 at 7 x 7 (8 MiB of
#: weights) took 1.11-1.39x the BLAS's time at batch 2, 1.0-1.18x at batch 8, where layers of
#: at most 1152 x 320 weights ran faster by the block (``docs/performance.md``, round 29).
_THREE_MAX_WEIGHTS = 1 << 20

#: The wide and narrow blocks without software prefetch, for columns that a task has just
#: copied into its scratch (``_im2col``: in L2 by construction), on every target. On a 2-core
#: Zen 3 the networks' 3x3 stems took 1.05-1.21x the time with the prefetching blocks (``python
#: docs/pointwise_blocks.py --only columns``, batches 8 and 2).
_block_cached = pointwise_block(_N_O, _N_PV, _BITS, 0)
#: The same, with streaming stores where its last argument is not 0 (``_im2col``'s large results).
_block_cached_streams = pointwise_block(_N_O, _N_PV, _BITS, 0, stream="argument")
_block_narrow_cached = pointwise_block(_N_O_NARROW, 1, _BITS, 0)


#: Blocks of all a group's output channels where it has fewer than ``O_BLOCK`` (grouped 1x1 layers
#: of 1-5 outputs per group), one per size; compiled with :func:`_forward_small`, on its first use.
_block1, _block2, _block3, _block4, _block5 = (pointwise_block(n, _N_PV, _BITS, prefetch_channels())
                                                    for n in range(1, O_BLOCK))


@njit_serial
def task_block(task, o_chunks, p_blocks, groups, hw, pix_block, shift):
    """(image, group, pixel block, its first pixel, its pixels, chunk of output-channel blocks)
    of task ``task`` among ``images x groups x p_blocks x o_chunks``. Pixel blocks start at
    ``shift + k * pix_block``, after a head block (``pb`` 0, left to the caller) where ``shift``
    > 0. The last pixel block moves left to end at the plane's end (its first pixels computed
    twice, to the same bits, by two tasks): only a plane under one block is left to the masked
    block."""
    chunk = task % o_chunks
    rest = task // o_chunks
    pb = rest % p_blocks
    rest //= p_blocks
    p0, n_pix = block_pixels(pb, hw, pix_block, shift)
    return rest // groups, rest % groups, pb, p0, n_pix, chunk


@njit_serial
def block_pixels(pb, hw, pix_block, shift):
    """(first pixel, pixels) of pixel block ``pb`` as :func:`task_block` places it (the head
    block, where ``shift`` > 0, left to the caller)."""
    head = 1 if shift > 0 else 0
    p0 = max(0, min(shift + (pb - head) * pix_block, hw - pix_block))
    return p0, min(pix_block, hw - p0)


@njit_serial
def narrow_tail(hw, pix_block, lanes, cout_g):
    """Whether the plane's last pixel block is a narrow one: at most ``lanes`` pixels past the
    wide blocks, and a group wide enough for the narrow block's output channels."""
    tail = hw % pix_block
    return 0 < tail <= lanes and cout_g >= _N_O_NARROW


def output_chunks(tasks: int, out_per_group: int) -> int:
    """Chunks of a group's output-channel blocks per task: 1 unless fewer than 4 tasks per
    thread would remain (each chunk reads its pixel block's inputs again)."""
    o_blocks = -(-out_per_group // O_BLOCK)
    return max(1, min(o_blocks, -(-4 * thread_count() // max(1, tasks))))


@njit_parallel
def _forward(x, w, b, out, groups, cin_g, cout_g, hw, o_chunks, pix_block, lanes, shift):
    """out (N, groups * cout_g, hw) = x (N, groups * cin_g, hw) by w (groups * cout_g, cin_g) + b,
    all flat: tasks of (image, group, pixel block, chunk of output-channel blocks). A last block
    of at most ``lanes`` pixels (:func:`narrow_tail`) is one vector wide, ending at the plane's
    end (masked where the plane is narrower than a vector). With ``shift`` > 0
    (:func:`aligning_shift`) the wide blocks start ``shift`` pixels on, where their loads take
    whole cache lines, and a narrow block (one vector from the plane's start, ``lanes - shift``
    of its pixels computed a second time, to the same bits) takes the pixels before."""
    c_in, c_out = groups * cin_g, groups * cout_g
    n_img = x.shape[0] // (c_in * hw)
    head = 1 if shift > 0 else 0
    p_blocks = head + (hw - shift + pix_block - 1) // pix_block
    narrow = narrow_tail(hw - shift, pix_block, lanes, cout_g)
    o_blocks = (cout_g + _N_O - 1) // _N_O
    per_chunk = (o_blocks + o_chunks - 1) // o_chunks
    for task in numba.prange(n_img * groups * p_blocks * o_chunks):
        n, g, pb, p0, n_pix, chunk = task_block(task, o_chunks, p_blocks, groups, hw, pix_block, shift)
        if (narrow and pb == p_blocks - 1) or (head and pb == 0):
            p0 = 0 if pb == 0 and head else max(0, hw - lanes)
            n_pix = min(lanes, hw - p0)
            x0 = (n * c_in + g * cin_g) * hw + p0
            for nb in range(chunk, (cout_g + _N_O_NARROW - 1) // _N_O_NARROW, o_chunks):  # chunks take turns
                oc = g * cout_g + min(nb * _N_O_NARROW, cout_g - _N_O_NARROW)
                _block_narrow(x, x0, hw, cin_g, w, oc * cin_g, cin_g, b, oc, out, (n * c_out + oc) * hw + p0, hw,
                              n_pix)
            continue
        x0 = (n * c_in + g * cin_g) * hw + p0
        for ob in range(chunk * per_chunk, min(o_blocks, (chunk + 1) * per_chunk)):
            oc = g * cout_g + min(ob * _N_O, cout_g - _N_O)
            _block(x, x0, hw, cin_g, w, oc * cin_g, cin_g, b, oc, out, (n * c_out + oc) * hw + p0, hw, n_pix)


#: Pixel blocks a streaming task writes for each output-channel block in turn.
STREAM_SPAN_BLOCKS = 4
#: The wide block with streaming stores (:func:`_forward_streaming`).
_block_streaming = pointwise_block(_N_O, _N_PV, _BITS, prefetch_channels(), stream=True)

#: Results of at least this many bytes are written with streaming stores (:func:`streaming_shift`,
#: and ``_im2col``'s and ``_depthwise``'s kernels): a plain store reads each line it writes
#: first, and a result this large leaves the caches before the next layer reads much of it.
#: The bound is the fastest of 1, 4 and 16 MiB over whole network passes (``python
#: docs/network_ab.py``; ``docs/performance.md``, round 28).
STREAM_BYTES = 4 << 20
#: Bytes of a cache line: streaming stores of whole lines are written to memory as they are.
LINE_BYTES = 64


def streaming_shift(out: np.ndarray, hw: int, cout_g: int) -> int:
    """Pixels from a plane's start to the first at a cache line's start, where :func:`plane_products`
    writes ``out`` (N, C_out, hw...) by :func:`_forward_streaming`; else -1. Taken for results of
    ``STREAM_BYTES`` or more whose planes are whole lines (so that every plane starts at the same
    offset in a line), of two wide blocks or more, in groups of ``O_BLOCK`` outputs or more."""
    size = out.dtype.itemsize
    line = LINE_BYTES // size
    if out.nbytes < STREAM_BYTES or hw % line or hw < 2 * pixel_vectors() * vector_lanes(out.dtype) or cout_g < O_BLOCK:
        return -1
    address = out.ctypes.data  # (a ctypes object: asked only of results that may stream)
    return -1 if address % size else (-(address // size)) % line


def streams_whole_rows(out: np.ndarray) -> bool:
    """Whether a kernel that writes ``out`` (N, C, H, W) a row at a time in whole vectors writes it
    with streaming stores: a result of ``STREAM_BYTES`` or more whose rows are whole cache lines
    from a line's start. A line written in part by streaming stores, or by one and then by a
    plain store (where a row's last vector moves left), goes to memory more than once: several
    times slower than plain stores (``docs/performance.md``, round 28)."""
    return (out.nbytes >= STREAM_BYTES and (out.shape[-1] * out.itemsize) % LINE_BYTES == 0
            and out.ctypes.data % LINE_BYTES == 0)


@njit_parallel
def _forward_streaming(x, w, b, out, groups, cin_g, cout_g, hw, o_chunks, pix_block, shift, span):
    """:func:`_forward`'s result by :func:`_block_streaming`: tasks of (image, group, run of
    ``span`` pixel blocks, chunk of output-channel blocks), each output-channel block over the
    run's pixel blocks in turn (a channel's lines written one after the other), pixel blocks
    from ``shift`` (:func:`streaming_shift`) on, each row of their outputs starting at a cache
    line's start and written with streaming stores, a head block (pixels ``[0, pix_block)``,
    where ``shift`` > 0) and the last block (moved left to end at the plane's end) with plain
    ones; a few outputs computed twice, to the same bits. Each task ends with a fence, which
    orders its streaming stores before the loop's end."""
    c_in, c_out = groups * cin_g, groups * cout_g
    n_img = x.shape[0] // (c_in * hw)
    head = 1 if shift > 0 else 0
    p_blocks = head + (hw - shift + pix_block - 1) // pix_block
    runs = (p_blocks + span - 1) // span
    o_blocks = (cout_g + _N_O - 1) // _N_O
    per_chunk = (o_blocks + o_chunks - 1) // o_chunks
    for task in numba.prange(n_img * groups * runs * o_chunks):
        chunk = task % o_chunks
        rest = task // o_chunks
        run = rest % runs
        n, g = (rest // runs) // groups, (rest // runs) % groups
        for ob in range(chunk * per_chunk, min(o_blocks, (chunk + 1) * per_chunk)):
            oc = g * cout_g + min(ob * _N_O, cout_g - _N_O)
            for pb in range(run * span, min(p_blocks, (run + 1) * span)):
                p0, n_pix = block_pixels(pb, hw, pix_block, shift)
                if head and pb == 0:
                    p0, n_pix = 0, pix_block
                _block_streaming(x, (n * c_in + g * cin_g) * hw + p0, hw, cin_g, w, oc * cin_g, cin_g, b, oc, out,
                                 (n * c_out + oc) * hw + p0, hw, n_pix)
        store_fence()


@njit_parallel
def _forward_small(x, w, b, out, groups, cin_g, cout_g, hw, pix_block):
    """As :func:`_forward` for groups of ``cout_g`` < ``O_BLOCK`` output channels: tasks of (image,
    group, pixel block), each one block of all the group's outputs (``cout_g`` x the wide block's
    pixel vectors). Sums as :func:`_forward`'s: bias, then the input channels in order."""
    c_in, c_out = groups * cin_g, groups * cout_g
    n_img = x.shape[0] // (c_in * hw)
    p_blocks = (hw + pix_block - 1) // pix_block
    for task in numba.prange(n_img * groups * p_blocks):
        n, g, _, p0, n_pix, _ = task_block(task, 1, p_blocks, groups, hw, pix_block, 0)
        x0 = (n * c_in + g * cin_g) * hw + p0
        oc = g * cout_g
        o0 = (n * c_out + oc) * hw + p0
        if cout_g == 1:
            _block1(x, x0, hw, cin_g, w, oc * cin_g, cin_g, b, oc, out, o0, hw, n_pix)
        elif cout_g == 2:
            _block2(x, x0, hw, cin_g, w, oc * cin_g, cin_g, b, oc, out, o0, hw, n_pix)
        elif cout_g == 3:
            _block3(x, x0, hw, cin_g, w, oc * cin_g, cin_g, b, oc, out, o0, hw, n_pix)
        elif cout_g == 4:
            _block4(x, x0, hw, cin_g, w, oc * cin_g, cin_g, b, oc, out, o0, hw, n_pix)
        else:
            _block5(x, x0, hw, cin_g, w, oc * cin_g, cin_g, b, oc, out, o0, hw, n_pix)


def pointwise_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, out: np.ndarray, spec) -> None:
    """``out`` = the 1x1 convolution of ``spec`` (C-contiguous arrays, ``w`` (C_out, C_in/groups,
    1, 1), where :func:`applies`). With a stride, the pixels it keeps are copied together first:
    the kernel's input is then a plane of the output's size (ResNeXt-50's 1024 -> 2048 at 14 x 14,
    stride 2, batch 2: 37 ms by ``_outer`` before, 6-7 ms so, on a 2-core Zen 3). Planes of fewer
    pixels than a vector (squeeze-and-excitation layers on 1 x 1) from two images on are computed
    as one plane of the batch's pixels (:func:`_batch_as_pixels`) where the narrow block applies."""
    oh, ow = spec.out_size
    if spec.stride != (1, 1):
        shape = x.shape[:2] + (oh, ow)
        x_kept, = _scratch.reused(("subsample", x.dtype.str, shape), lambda: (np.empty(shape, x.dtype),))
        _subsample(x, x_kept, *spec.stride, vector_lanes(x.dtype))  # every element written: reusable
        x = x_kept
    plane_products(x, w, b, out, spec.groups, oh * ow)


def plane_products(x: np.ndarray, w: np.ndarray, b: np.ndarray, out: np.ndarray, groups: int, hw: int,
                   blas: bool = True) -> None:
    """``out[n, o, p] = b[o] + sum_c w[o, c] x[n, g * C_in/groups + c, p]`` (``g`` the group of
    ``o``): the products of a 1x1 convolution, x (N, C_in, hw...) and out (N, C_out, hw...)
    C-contiguous, ``w`` (C_out, C_in/groups, ...) with one element per input channel. Planes of
    runs of three vectors and a few pixels by :func:`_three_vectors_and_rest` (the images' last
    few pixels as one plane); by the BLAS where ``blas``, :func:`_blas.for_products` gives one and
    the product is large enough; with streaming stores for large results
    (:func:`_forward_streaming`); as one plane of the batch's pixels where planes are under a
    vector (:func:`_batch_as_pixels`), with the images' last few pixels as one plane where planes
    are whole wide blocks and a few pixels (:func:`_wide_blocks_and_rest`), by
    :func:`_forward_small` for groups of fewer than ``O_BLOCK`` outputs, else by
    :func:`_forward`."""
    n, cin_g, cout_g = x.shape[0], x.shape[1] // groups, out.shape[1] // groups
    if _takes_three_vectors_and_rest(n, cin_g, cout_g, hw, vector_lanes(x.dtype)):
        _three_vectors_and_rest(x, w, b, out, groups, hw)
        return
    functions = _blas.for_products() if blas else None
    if functions is not None and _blas.takes_product(cin_g, hw) and hw * cin_g * cout_g >= _blas.MIN_MACS:
        pix_chunk, o_parts = _blas.product_split(cout_g, cin_g, hw)
        with _blas.single_threaded(functions):
            _forward_blas(functions.address(x.dtype), x.reshape(-1), w.reshape(-1), b, out.reshape(-1), groups,
                          cin_g, cout_g, hw, pix_chunk, o_parts)
        return
    shift = streaming_shift(out, hw, cout_g)
    if shift >= 0:
        pix_block = pixel_vectors() * vector_lanes(x.dtype)
        span = STREAM_SPAN_BLOCKS
        o_chunks = output_chunks(n * groups * -(-hw // (pix_block * span)), cout_g)
        _forward_streaming(x.reshape(-1), w.reshape(-1), b, out.reshape(-1), groups, cin_g, cout_g, hw, o_chunks,
                           pix_block, shift, span)
        return
    if hw < vector_lanes(x.dtype) and n > 1 and cout_g >= _N_O_NARROW:
        _batch_as_pixels(x, w, b, out, groups, hw)
        return
    if _takes_wide_blocks_and_rest(n, cin_g, cout_g, hw, vector_lanes(x.dtype)):
        _wide_blocks_and_rest(x, w, b, out, groups, hw)
        return
    if cout_g < O_BLOCK:
        _forward_small(x.reshape(-1), w.reshape(-1), b, out.reshape(-1), groups, cin_g, cout_g, hw,
                       pixel_vectors() * vector_lanes(x.dtype))
        return
    _products(x.reshape(-1), w.reshape(-1), b, out.reshape(-1), n, groups, cin_g, cout_g, hw)


def _products(x, w, b, out, images: int, groups: int, cin_g: int, cout_g: int, hw: int) -> None:
    """:func:`_forward` on flat arrays, its pixel block and task chunks chosen for the sizes."""
    lanes = vector_lanes(x.dtype)
    pix_block = pixel_vectors() * lanes
    o_chunks = output_chunks(images * groups * -(-hw // pix_block), cout_g)
    _forward(x, w, b, out, groups, cin_g, cout_g, hw, o_chunks, pix_block, lanes,
             aligning_shift(x, hw, pix_block, cout_g))


def aligning_shift(x: np.ndarray, hw: int, pix_block: int, cout_g: int) -> int:
    """Pixels from a plane's start to the first whose address is a multiple of a vector's bytes,
    where every plane's rows share that offset (``hw`` a whole number of vectors), the plane
    holds two blocks or more and a group the narrow block's outputs; else 0. NumPy's large
    arrays start 16 bytes past a 64-byte line (glibc's allocator), and on an Intel Xeon loads
    that straddle two lines made the 1x1 layers on 28 x 28 and 56 x 56 planes slower
    (``python docs/pointwise_blocks.py``, ``docs/performance.md`` round 16)."""
    size = x.dtype.itemsize
    lanes = vector_lanes(x.dtype)
    if hw % lanes or hw < 2 * pix_block or cout_g < _N_O_NARROW:
        return 0
    address = data_address(x)
    return 0 if address % size else (-(address // size)) % lanes


def _takes_three_vectors_and_rest(images: int, cin_g: int, cout_g: int, hw: int, lanes: int) -> bool:
    """Planes of ``_THREE_RUNS`` runs of three whole vectors and 1 to ``lanes - 1`` pixels more
    (7 x 7 float32: 48 + 1 pixels), groups of at least ``_N_O_THREE`` outputs.

    With 32 vector registers (one run) the wide block's fourth vector would hold the few pixels
    left (1 of its 16 on 7 x 7) and the rest of its lanes would be work for nothing: taken where
    the images' left pixels together fill fewer vectors than there are images (7 x 7 from batch
    2 on). With 16 (two runs) at every batch, in place of the BLAS's products (a result must not
    depend on the batch it comes in, and the BLAS's sums depend on how a product is split): as
    fast as they are over whole networks at batch 2, a little faster at batch 8
    (``docs/performance.md``, round 28), for groups of fewer than ``_THREE_MAX_WEIGHTS`` weights
    (round 29)."""
    whole = 3 * _THREE_RUNS * lanes
    if not (whole < hw < whole + lanes and cout_g >= _N_O_THREE):
        return False
    if _N_PV == 4:
        return -(-images * (hw - whole) // lanes) < images
    return cin_g * cout_g < _THREE_MAX_WEIGHTS


@njit_parallel
def _forward_three(x, w, b, out, groups, cin_g, cout_g, hw, lanes):
    """out[n, o, p] for the first ``_THREE_RUNS * 3 * lanes`` pixels ``p`` of each plane: tasks of
    (image, group, block of ``_N_O_THREE`` output channels, run of three vectors), each one
    :func:`_block_three` (the last block of a group moved back to end at its last output)."""
    c_in, c_out = groups * cin_g, groups * cout_g
    n_img = x.shape[0] // (c_in * hw)
    o_blocks = (cout_g + _N_O_THREE - 1) // _N_O_THREE
    for task in numba.prange(n_img * groups * o_blocks * _THREE_RUNS):
        p0 = (task % _THREE_RUNS) * 3 * lanes
        rest = task // _THREE_RUNS
        ob = rest % o_blocks
        g = (rest // o_blocks) % groups
        n = rest // (o_blocks * groups)
        oc = g * cout_g + min(ob * _N_O_THREE, cout_g - _N_O_THREE)
        _block_three(x, (n * c_in + g * cin_g) * hw + p0, hw, cin_g, w, oc * cin_g, cin_g, b, oc, out,
                     (n * c_out + oc) * hw + p0, hw, 3 * lanes)


def _three_vectors_and_rest(x: np.ndarray, w: np.ndarray, b: np.ndarray, out: np.ndarray, groups: int,
                            hw: int) -> None:
    """The products for planes of three vectors and a few pixels more: the three vectors by
    :func:`_forward_three`, the pixels past them, from all images, as one plane (copied to
    (C_in, N, rest), the product, copied back). Each output's sum is the same (bias, then the
    input channels in order), so are the bits. On 7 x 7 planes at batch 8 a fourth fewer
    multiply-adds than the 4-vector block (``python docs/pointwise_blocks.py --only three``)."""
    c_in, c_out = x.shape[1], out.shape[1]
    lanes = vector_lanes(x.dtype)
    _forward_three(x.reshape(-1), w.reshape(-1), b, out.reshape(-1), groups, c_in // groups, c_out // groups, hw,
                   lanes)
    _rest_as_one_plane(x, w, b, out, groups, hw, 3 * _THREE_RUNS * lanes)


def _rest_as_one_plane(x: np.ndarray, w: np.ndarray, b: np.ndarray, out: np.ndarray, groups: int, hw: int,
                       start: int) -> None:
    """``out``'s pixels from ``start`` on in every plane, from all images as one plane: copied
    to (C_in, N, hw - start), its product, copied back."""
    n, c_in, c_out = x.shape[0], x.shape[1], out.shape[1]
    rest = hw - start
    x_rest = np.ascontiguousarray(x.reshape(n, c_in, hw)[:, :, start:].transpose(1, 0, 2))
    out_rest = np.empty((c_out, n, rest), out.dtype)
    plane_products(x_rest.reshape(1, c_in, n * rest), w, b, out_rest.reshape(1, c_out, n * rest), groups, n * rest,
                   blas=False)  # the blocks' sums, whatever the batch
    out.reshape(n, c_out, hw)[:, :, start:] = out_rest.transpose(1, 0, 2)


#: Multiply-adds per group from which :func:`_wide_blocks_and_rest` takes a layer: below, its
#: copies and second parallel loop cost more than the narrow blocks it saves. On a 2-core Intel
#: Xeon (``python docs/pointwise_blocks.py --only rest``) ResNeXt-50's 1x1 layers on 14 x 14
#: planes took 1.02-1.08x its time the narrow way, the smaller layers of EfficientNet and
#: MobileNetV2 0.84-0.95x.
REST_MIN_MACS = 1 << 28


def _takes_wide_blocks_and_rest(images: int, cin_g: int, cout_g: int, hw: int, lanes: int) -> bool:
    """Planes of whole wide blocks and at most a vector of pixels more, which no shift aligns
    (``hw`` not a whole number of vectors: 14 x 14), from two images on, in groups wide enough
    for the narrow block that :func:`_forward` would give those pixels (one vector of 16 lanes
    for 4 pixels of each image), from ``REST_MIN_MACS`` on (``python docs/pointwise_blocks.py
    --only rest``)."""
    pix_block = pixel_vectors() * lanes
    return (images > 1 and hw > pix_block and hw % lanes != 0 and 0 < hw % pix_block <= lanes
            and cout_g >= _N_O_NARROW and images * hw * cin_g * cout_g >= REST_MIN_MACS)


@njit_parallel
def _forward_wide(x, w, b, out, groups, cin_g, cout_g, hw, wide, o_chunks, pix_block):
    """out[n, o, p] for the first ``wide`` pixels ``p`` of each plane (a multiple of
    ``pix_block``): tasks of (image, group, pixel block, chunk of output-channel blocks), each
    a whole :func:`_block` (the last of a group moved back to end at its last output)."""
    c_in, c_out = groups * cin_g, groups * cout_g
    n_img = x.shape[0] // (c_in * hw)
    p_blocks = wide // pix_block
    o_blocks = (cout_g + _N_O - 1) // _N_O
    per_chunk = (o_blocks + o_chunks - 1) // o_chunks
    for task in numba.prange(n_img * groups * p_blocks * o_chunks):
        n, g, _, p0, _, chunk = task_block(task, o_chunks, p_blocks, groups, wide, pix_block, 0)
        x0 = (n * c_in + g * cin_g) * hw + p0
        for ob in range(chunk * per_chunk, min(o_blocks, (chunk + 1) * per_chunk)):
            oc = g * cout_g + min(ob * _N_O, cout_g - _N_O)
            _block(x, x0, hw, cin_g, w, oc * cin_g, cin_g, b, oc, out, (n * c_out + oc) * hw + p0, hw, pix_block)


def _wide_blocks_and_rest(x: np.ndarray, w: np.ndarray, b: np.ndarray, out: np.ndarray, groups: int,
                          hw: int) -> None:
    """The products for planes of whole wide blocks and a few pixels more: the blocks by
    :func:`_forward_wide`, the pixels past them, from all images, as one plane (copied to
    (C_in, N, rest), the product, copied back), as :func:`_three_vectors_and_rest` does. Each
    output's sum is the same (bias, then the input channels in order), so are the bits, where
    the rest plane is the kernel's own too: with a BLAS for the products (AVX2), a rest plane of
    N x rest pixels that ``_blas.takes_product`` gives the BLAS has its sums in the BLAS's order
    (from ``REST_MIN_MACS``, a layer of 128-255 input channels per group on 14 x 14 planes, say)."""
    n, c_in, c_out = x.shape[0], x.shape[1], out.shape[1]
    pix_block = pixel_vectors() * vector_lanes(x.dtype)
    wide = hw - hw % pix_block
    cin_g, cout_g = c_in // groups, c_out // groups
    o_chunks = output_chunks(n * groups * (wide // pix_block), cout_g)
    _forward_wide(x.reshape(-1), w.reshape(-1), b, out.reshape(-1), groups, cin_g, cout_g, hw, wide, o_chunks,
                  pix_block)
    _rest_as_one_plane(x, w, b, out, groups, hw, wide)


def _batch_as_pixels(x: np.ndarray, w: np.ndarray, b: np.ndarray, out: np.ndarray, groups: int, hw: int) -> None:
    """The 1x1 convolution of N images of ``hw`` pixels as one of ``N * hw`` pixels: the input
    copied to (groups, C_in/groups, N, hw), the product, and its (C_out, N, hw) copied into ``out``
    (N, C_out, hw). Each output's sum is the same (bias, then the input channels in order), so the
    bits are too; what changes is that a vector holds the batch's pixels, not one image's few
    (at batch 8 on 1 x 1 planes, an eighth of the multiply-adds)."""
    n, c_in, c_out = x.shape[0], x.shape[1], out.shape[1]
    x_t = np.ascontiguousarray(x.reshape(n, c_in, hw).transpose(1, 0, 2))
    out_t = np.empty((c_out, n, hw), out.dtype)
    _products(x_t.reshape(-1), w.reshape(-1), b, out_t.reshape(-1), 1, groups, c_in // groups, c_out // groups,
              n * hw)
    out.reshape(n, c_out, hw)[...] = out_t.transpose(1, 0, 2)


@njit_serial
def copy_plane_rows(xf, src, row_pitch, step, of, dst, oh, ow, lanes):
    """of[dst + r * ow + q] = xf[src + r * row_pitch + q * step] for r < oh, q < ow: one output
    plane of ``oh`` rows taken every ``row_pitch`` elements, every ``step``-th element of each
    (flat arrays). At steps 2 and 4 each row is a vector copy of every ``step``-th lane of
    ``step`` loads (``_simd.copy_step2``, ``copy_step4``); its up to a vector of zeros past the
    row's end lands on the rows written next, and the plane's last ``lanes - 1`` elements are
    copied one by one, so that nothing lands past the plane (another task's). Other steps copy
    element by element."""
    for r in range(oh):
        s, d = src + r * row_pitch, dst + r * ow
        vector_part = 0
        if step == 2 or step == 4:  # its store's zeros end within the plane
            vector_part = max(0, min(ow, (oh - r) * ow - lanes + 1))
            if step == 2:
                copy_step2(xf, s, of, d, vector_part)
            else:
                copy_step4(xf, s, of, d, vector_part)
        for q in range(vector_part, ow):
            of[d + q] = xf[s + q * step]


@njit_parallel
def _subsample(x, out, sh, sw, lanes):
    """out[n, c, i, j] = x[n, c, i * sh, j * sw] (both C-contiguous): the pixels a strided 1x1
    layer reads, a task per plane (:func:`copy_plane_rows`: vector copies at column stride 2,
    ResNet's and RegNet's downsampling; a scalar loop per pixel was 3-5 cycles a pixel, and
    RegNetY's 32 -> 48 at 112 x 112, batch 8, spent 1.4 ms copying, more than its product)."""
    n_img, c, oh, ow = out.shape
    h, wd = x.shape[2], x.shape[3]
    xf, of = x.reshape(-1), out.reshape(-1)
    for task in numba.prange(n_img * c):
        copy_plane_rows(xf, task * h * wd, sh * wd, sw, of, task * oh * ow, oh, ow, lanes)


@njit_serial
def task_span_from(task, parts, spans, pitch, groups, hw, shift):
    """:func:`task_span` with the spans from pixel ``shift`` on, after a head span of the pixels
    before it where ``shift`` > 0 (``spans`` counts it)."""
    part = task % parts
    rest = task // parts
    k = rest % spans
    rest //= spans
    if shift > 0:
        if k == 0:
            return rest // groups, rest % groups, 0, shift, part
        s0 = shift + (k - 1) * pitch
    else:
        s0 = k * pitch
    return rest // groups, rest % groups, s0, min(pitch, hw - s0), part


@njit_serial
def task_span(task, parts, spans, pitch, groups, hw):
    """(image, group, first pixel, pixels, part of the output channels) of task ``task`` among
    ``images x groups x spans x parts``, the plane's pixels in spans of ``pitch`` (the last one
    shorter)."""
    part = task % parts
    rest = task // parts
    s0 = (rest % spans) * pitch
    rest //= spans
    return rest // groups, rest % groups, s0, min(pitch, hw - s0), part


@njit_parallel
def _forward_blas(fn, x, w, b, out, groups, cin_g, cout_g, hw, pix_chunk, o_parts):
    """As :func:`_forward`, by the BLAS at address ``fn`` (``_blas.gemm``): tasks of (image, group,
    chunk of ``pix_chunk`` pixels, part of the group's output channels), each setting its outputs
    to the bias and adding its product of the weights by the input pixels (``beta = 1``)."""
    c_in, c_out = groups * cin_g, groups * cout_g
    n_img = x.shape[0] // (c_in * hw)
    chunks = (hw + pix_chunk - 1) // pix_chunk
    rows = (cout_g + o_parts - 1) // o_parts
    for task in numba.prange(n_img * groups * chunks * o_parts):
        n, g, p0, m, part = task_span(task, o_parts, chunks, pix_chunk, groups, hw)
        r0 = g * cout_g + part * rows
        r1 = min((g + 1) * cout_g, r0 + rows)
        if r1 > r0:
            _blas.product_onto_bias(fn, r1 - r0, m, cin_g, w, r0 * cin_g, b, r0, x, (n * c_in + g * cin_g) * hw + p0,
                                    hw, out, (n * c_out + r0) * hw + p0, hw)
