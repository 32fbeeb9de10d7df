"""Vector operations LLVM does not derive from Numba loops, written as LLVM IR (``@intrinsic``).

:func:`transpose_tile` moves a square tile of one vector register per row (64 bytes: 16 float32
or 8 float64) from rows to columns with register shuffles. The same copy as a Numba loop
(``dst[j * pd + i] = src[i * ps + j]``) compiles to one scalar load and store per element, about 4x
slower (``python docs/channels_last.py --transpose``). The kernels that keep channels in vector
lanes (``_channels_last``) use it to go from NCHW planes to channels-last blocks and back.

:func:`outer_product_row` is the inner block of ``_outer``: output channels in the lanes, every
term a fused multiply-add of a weight vector and a broadcast input value, the sums kept in
registers, then transposed and stored with masks. Numba's loops give neither the broadcasts
nor the masked stores.
"""

from __future__ import annotations

import contextlib
import functools

from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ._target import target

#: Bytes of one vector register (AVX-512); a tile has this many bytes per row.
VECTOR_BYTES = 64


def lanes(dtype) -> int:
    """Elements of ``dtype`` in one vector: the side of a transposed tile."""
    return VECTOR_BYTES // dtype.itemsize


Stage = list[tuple[int, int, int, list[int]]]


def transpose_plan(n: int) -> list[Stage]:
    """The shuffles that transpose an ``n`` x ``n`` tile (``n`` a power of two): stages of ``n``
    entries ``(new row, row a, row b, mask)`` where the new row takes the elements ``mask`` of
    ``concat(a, b)``. For 16 lanes, the in-lane plan (:func:`in_lane_plan16`); otherwise
    ``log2(n)`` perfect shuffles: new rows ``2i`` and ``2i + 1`` interleave the first and the
    second halves of rows ``i`` and ``i + n/2``; after ``log2(n)`` of them element ``(i, j)`` sits
    at ``(j, i)``."""
    if n < 2 or n & (n - 1):
        raise ValueError(f"a tile side must be a power of two, not {n}")
    return in_lane_plan16() if n == 16 else perfect_shuffle_plan(n)


def perfect_shuffle_plan(n: int) -> list[Stage]:
    """``log2(n)`` perfect shuffles (see :func:`transpose_plan`); ``vpermt2ps`` on AVX-512."""
    half = n // 2
    low = [j for k in range(half) for j in (k, n + k)]
    high = [j for k in range(half, n) for j in (k, n + k)]
    stage = [entry for i in range(half) for entry in ((2 * i, i, i + half, low), (2 * i + 1, i, i + half, high))]
    return [stage] * (n.bit_length() - 1)


def in_lane_plan16() -> list[Stage]:
    """The AVX-512 16 x 16 transpose: interleave floats, then pairs of floats, within 128-bit
    lanes (``vunpck{l,h}ps``, ``vunpck{l,h}pd``), then move whole 128-bit lanes twice
    (``vshuff32x4`` with 0x88 and 0xdd). The same 64 shuffles as the perfect shuffles, but cheaper
    ones than their ``vpermt2ps`` (``python docs/channels_last.py`` times both)."""
    return in_lane_plan(16)


def in_lane_plan(n: int) -> list[Stage]:
    """The ``n`` x ``n`` float32 transpose in 128-bit lanes (``n`` 8: AVX2's, 16: AVX-512's):
    interleave floats, then pairs of floats, within 128-bit lanes (``vunpck{l,h}ps``,
    ``vunpck{l,h}pd``), then move whole 128-bit lanes (``vperm2f128`` for 8; twice
    ``vshuff32x4`` for 16). LLVM turns the perfect shuffles of an 8 x 8 tile into 3 times as many
    instructions on AVX2."""
    if n not in (8, 16):
        raise ValueError(f"the in-lane plan is for tiles of 8 or 16, not {n}")

    def unpack(high: bool, width: int) -> list[int]:  # per 128-bit lane q: (a, b) interleaved
        base = [4 * q + 2 * high for q in range(n // 4)]
        if width == 1:
            return [i for b in base for i in (b, n + b, b + 1, n + b + 1)]
        return [i for b in base for i in (b, b + 1, n + b, n + b + 1)]

    def lanes_of(a: tuple[int, ...], b: tuple[int, ...]) -> list[int]:  # 128-bit lanes a.. of a, b.. of b
        return [4 * q + k for q in a for k in range(4)] + [n + 4 * q + k for q in b for k in range(4)]

    floats = [e for i in range(0, n, 2) for e in ((i, i, i + 1, unpack(False, 1)), (i + 1, i, i + 1, unpack(True, 1)))]
    pairs = [e for b in range(0, n, 4) for e in (
        (b, b, b + 2, unpack(False, 2)), (b + 1, b, b + 2, unpack(True, 2)),
        (b + 2, b + 1, b + 3, unpack(False, 2)), (b + 3, b + 1, b + 3, unpack(True, 2)))]
    if n == 8:
        halves = [e for k in range(4) for e in ((k, k, k + 4, lanes_of((0,), (0,))), (k + 4, k, k + 4, lanes_of((1,), (1,))))]
        return [floats, pairs, halves]
    even, odd = lanes_of((0, 2), (0, 2)), lanes_of((1, 3), (1, 3))
    quads = [e for b in (0, 8) for k in range(b, b + 4) for e in ((k, k, k + 4, even), (k + 4, k, k + 4, odd))]
    octets = [e for k in range(8) for e in ((k, k, k + 8, even), (k + 8, k, k + 8, odd))]
    return [floats, pairs, quads, octets]


def _index(context, builder, value, ty):
    return context.cast(builder, value, ty, types.intp)


def _vector_of(context, dtype) -> tuple[int, int, ir.VectorType, ir.Type]:
    """(bytes per element, lanes, the vector register's type, intp's type) for ``dtype``."""
    size = dtype.bitwidth // 8
    n = VECTOR_BYTES // size
    return size, n, ir.VectorType(context.get_data_type(dtype), n), context.get_value_type(types.intp)


def _data(context, builder, array_value, array_type):
    """The data pointer of a Numba array value."""
    return context.make_array(array_type)(context, builder, array_value).data


def vector_args(context, builder, signature, args, bits: int):
    """What an intrinsic's codegen over one dtype starts from: ``(values, size, lanes, vec, intp)``
    with ``values`` the arguments in order (an array's data pointer, an integer as ``intp``, any
    other value as it is), ``size`` the bytes of the first array's dtype, ``lanes`` its elements
    per ``bits``-wide vector and ``vec`` that vector's type."""
    values = []
    for value, ty in zip(args, signature.args):
        if isinstance(ty, types.Array):
            values.append(_data(context, builder, value, ty))
        elif isinstance(ty, types.Integer):
            values.append(_index(context, builder, value, ty))
        else:
            values.append(value)
    dtype = next(ty.dtype for ty in signature.args if isinstance(ty, types.Array))
    size = dtype.bitwidth // 8
    lanes = bits // 8 // size
    return values, size, lanes, ir.VectorType(context.get_data_type(dtype), lanes), context.get_value_type(types.intp)


def _takes(arrays, offsets, float64_arrays=()) -> bool:
    """Whether an intrinsic's arguments are what it compiles for: 1-D C-contiguous ``arrays`` of
    one dtype, float32 or float64 (``float64_arrays`` likewise, always float64), and integer
    ``offsets``."""
    if not all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" for a in arrays + float64_arrays):
        return False
    if len({a.dtype for a in arrays}) != 1 or arrays[0].dtype not in (types.float32, types.float64):
        return False
    return all(a.dtype == types.float64 for a in float64_arrays) and all(isinstance(i, types.Integer) for i in offsets)


def transpose_tile_of_groups(pack: int):
    """An ``@intrinsic`` ``tile(src, s0, s_pitch, dst, d0, d_pitch)``: :func:`transpose_tile` with
    the source rows taken group-interleaved, ``dst[d0 + j * d_pitch + i] = src[s0 + r(i) * s_pitch
    + j]`` with ``r(o * pack + q) = q * lanes / pack + o``: the rows of ``pack`` groups of ``lanes /
    pack`` rows each, lane ``o * pack + q`` group ``q``'s row ``o`` (``_outer``'s packed weights)."""

    @intrinsic
    def tile(typingctx, src, s0, s_pitch, dst, d0, d_pitch):
        if not _takes((src, dst), (s0, s_pitch, d0, d_pitch)):
            return None
        return types.void(src, s0, s_pitch, dst, d0, d_pitch), functools.partial(_transpose_codegen, pack)

    return tile


@intrinsic
def transpose_tile(typingctx, src, s0, s_pitch, dst, d0, d_pitch):
    """``dst[d0 + j * d_pitch + i] = src[s0 + i * s_pitch + j]`` for ``i, j < lanes(dtype)``.

    ``src`` and ``dst``: 1-D contiguous float32 or float64 arrays of the same dtype; offsets and
    pitches in elements, any integer type. One vector load per source row and one store per
    destination row, unaligned; no bounds checks (the caller's offsets must be in range)."""
    if not _takes((src, dst), (s0, s_pitch, d0, d_pitch)):
        return None
    return types.void(src, s0, s_pitch, dst, d0, d_pitch), functools.partial(_transpose_codegen, 1)


def _transpose_codegen(pack, context, builder, signature, args):
    """The code of :func:`transpose_tile` (``pack`` 1) and :func:`transpose_tile_of_groups`."""
    src_v, s0_v, sp_v, dst_v, d0_v, dp_v = args
    a_src, t_s0, t_sp, a_dst, t_d0, t_dp = signature.args
    size, n, vec, intp = _vector_of(context, a_src.dtype)
    source_row = [(i % pack) * (n // pack) + i // pack for i in range(n)]

    def row_pointers(array_value, array_type, start, pitch, order):
        data = _data(context, builder, array_value, array_type)
        for i in order:
            index = builder.add(start, builder.mul(pitch, ir.Constant(intp, i)))
            yield builder.bitcast(builder.gep(data, [index], inbounds=True), vec.as_pointer())

    rows = [builder.load(p, align=size) for p in row_pointers(
        src_v, a_src, _index(context, builder, s0_v, t_s0), _index(context, builder, sp_v, t_sp), source_row)]
    rows = _shuffled(builder, rows, transpose_plan(n))
    for row, p in zip(rows, row_pointers(
            dst_v, a_dst, _index(context, builder, d0_v, t_d0), _index(context, builder, dp_v, t_dp), range(n))):
        builder.store(row, p, align=size)
    return context.get_dummy_value()


@contextlib.contextmanager
def rolled_range(builder, count):
    """``cgutils.for_range`` with ``llvm.loop.unroll.disable`` on its back edge: a loop whose body
    already holds a register block of sums. Unrolled (as LLVM does a loop of a constant trip
    count), two bodies' loads and sums outgrow AVX2's 16 registers and sums spill to the stack
    inside the loop (seen in ``_winograd_wgrad``'s products). At the blocks the kernels choose,
    rolled loops were 1.01-1.03x faster on the weight gradients of alexnet_g2, dense_64_28 and
    pw_g4_28 (batch 8, 2-core Zen 3, a one-off A/B in one process)."""
    from numba.core import cgutils

    module = builder.module
    disable = module.add_metadata([ir.MetaDataString(module, "llvm.loop.unroll.disable")])
    # a loop's own node, not one of the module's shared ones: its first operand is itself
    loop_id = ir.values.MDValue(module, (disable,), name=str(len(module.metadata)))
    loop_id.operands = (loop_id, disable)
    with cgutils.for_range(builder, count) as loop:
        yield loop
        latch = builder.basic_block
    latch.terminator.set_metadata("llvm.loop", loop_id)


def _shuffled(builder, rows: list, plan: list[Stage]) -> list:
    """``rows`` (vectors of one type) through the stages of a transpose ``plan``."""
    mask_type = ir.VectorType(ir.IntType(32), len(rows))
    for stage in plan:
        new = [None] * len(rows)
        for d, a, b, mask in stage:
            new[d] = builder.shuffle_vector(rows[a], rows[b], ir.Constant(mask_type, mask))
        rows = new
    return rows


def _splat(builder, value, vec):
    """``value`` in every lane of a ``vec`` (a broadcast)."""
    one = builder.insert_element(ir.Constant(vec, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(one, ir.Constant(vec, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), vec.count), [0] * vec.count))


def _declared(builder, name: str, fn_type):
    """The LLVM intrinsic ``name`` of ``fn_type``, declared in the module once."""
    return builder.module.globals.get(name) or ir.Function(builder.module, fn_type, name=name)


def _fma(builder, a, b, c):
    """``a * b + c`` rounded once, lane by lane for vectors (``llvm.fma``: ``vfmadd``)."""
    ty = a.type
    kind = f"v{ty.count}{ty.element.intrinsic_name}" if isinstance(ty, ir.VectorType) else ty.intrinsic_name
    return builder.call(_declared(builder, f"llvm.fma.{kind}", ir.FunctionType(ty, [ty] * 3)), [a, b, c])


def _masked_store(builder, value, pointer, count: int, align: int, lanes_on: tuple[bool, ...] | None = None):
    """Store the first ``count`` lanes of ``value`` at ``pointer`` (or the lanes ``lanes_on``;
    ``vmovups`` with a mask on AVX-512); a plain store when that is every lane."""
    vec = value.type
    if lanes_on is None and count == vec.count:
        builder.store(value, pointer, align=align)
        return
    mask_type = ir.VectorType(ir.IntType(1), vec.count)
    name = f"v{vec.count}{vec.element.intrinsic_name}"
    # the pointer's part of the name: "p0" with opaque pointers (LLVM 15+), else its pointee too
    pointer_name = "p0" if llvm_binding.llvm_version_info[0] >= 15 else f"p0{name}"
    fn = _declared(builder, f"llvm.masked.store.{name}.{pointer_name}",
                   ir.FunctionType(ir.VoidType(), [vec, pointer.type, ir.IntType(32), mask_type]))
    mask = ir.Constant(mask_type, list(lanes_on) if lanes_on is not None else [i < count for i in range(vec.count)])
    builder.call(fn, [value, pointer, ir.Constant(ir.IntType(32), align), mask])


@intrinsic
def store_fence(typingctx):
    """``store_fence()``: ``sfence`` on x86 (elsewhere a sequentially consistent fence), which
    orders the streaming (non-temporal) stores before it, weakly ordered, before every store
    after it: a task that wrote with them calls it before it ends, so that the threads reading its
    results after the parallel loop find them there."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        if llvm_binding.get_process_triple().startswith(("x86_64", "i386", "i686")):
            builder.call(_declared(builder, "llvm.x86.sse.sfence", ir.FunctionType(ir.VoidType(), [])), [])
        else:
            builder.fence("seq_cst")
        return context.get_dummy_value()

    return sig, codegen


def _run_results(builder, src_p, start, k: int, lanes_k: int, step: int, vec, size: int, intp):
    """``src[start + (k + p) * step]`` for ``p < lanes_k`` as a vector (the lanes past ``lanes_k``
    zero or undefined): one load, masked where short; at step 2 the even lanes of two loads
    (:func:`copy_run`, :func:`interleave_run`). Nothing past the last element read is touched."""
    n = vec.count

    def load(j, lanes_j):  # the first lanes_j elements of src[start + j:]
        p = builder.bitcast(builder.gep(src_p, [builder.add(start, ir.Constant(intp, j))], inbounds=True),
                            vec.as_pointer())
        return builder.load(p, align=size) if lanes_j >= n else _masked_load(builder, p, vec, lanes_j, size)

    if step == 1:
        return load(k, lanes_k)
    reads = 2 * lanes_k - 1  # elements from src[start + 2k] on
    lo, hi = load(2 * k, reads), load(2 * k + n, reads - n) if reads > n else ir.Constant(vec, None)
    return builder.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(ir.IntType(32), n), list(range(0, 2 * n, 2))))


def copy_run(count: int, step: int = 1, spread: int = 1):
    """An ``@intrinsic`` ``copy(src, s0, dst, d0)``: ``dst[d0 + j * spread] = src[s0 + j * step]``
    for ``j < count`` (``step`` 1 or 2), in whole vectors and one masked load and store for the
    rest (a copy loop of a short constant length, 14 say, is left to scalar moves or a vector of 8
    and a scalar tail; a loop at step 2 to scalar moves). At step 2 each vector of results takes
    two vector loads and one shuffle of their even lanes (a stride-2 convolution's packing into
    phase planes). At ``spread`` 2 or 4 (the planes of 2 or 4 groups interleaved, ``_outer``'s
    packed groups) each vector of results is shuffled apart into ``spread`` vectors stored with
    masks that leave the other groups' elements as they are. Unaligned; nothing past the last
    element read is touched, nothing but the ``count`` results written; no bounds checks; ``src``
    and ``dst`` must not overlap."""
    if step not in (1, 2):
        raise ValueError(f"copy_run takes steps of 1 or 2, not {step}")
    if spread not in (1, 2, 4):
        raise ValueError(f"copy_run spreads by 1, 2 or 4, not {spread}")

    @intrinsic
    def copy(typingctx, src, s0, dst, d0):
        if not _takes((src, dst), (s0, d0)):
            return None
        sig = types.void(src, s0, dst, d0)

        def codegen(context, builder, signature, args):
            src_v, s0_v, dst_v, d0_v = args
            a_src, t_s0, a_dst, t_d0 = signature.args
            size, n, vec, intp = _vector_of(context, a_src.dtype)
            src_p = context.make_array(a_src)(context, builder, src_v).data
            dst_p = context.make_array(a_dst)(context, builder, dst_v).data
            s0_i, d0_i = _index(context, builder, s0_v, t_s0), _index(context, builder, d0_v, t_d0)

            def at(base, start, k):
                p = builder.gep(base, [builder.add(start, ir.Constant(intp, k))], inbounds=True)
                return builder.bitcast(p, vec.as_pointer())

            for k in range(0, count, n):
                lanes_k = min(n, count - k)
                value = _run_results(builder, src_p, s0_i, k, lanes_k, step, vec, size, intp)
                if spread == 1:
                    _masked_store(builder, value, at(dst_p, d0_i, k), lanes_k, size)
                    continue
                for m in range(spread):  # dst[d0 + k * spread + m * n + p] for p < n: result (m * n + p) / spread
                    on = tuple((m * n + p) % spread == 0 and (m * n + p) // spread < lanes_k for p in range(n))
                    if any(on):
                        spread_out = builder.shuffle_vector(value, ir.Constant(vec, ir.Undefined), ir.Constant(
                            ir.VectorType(ir.IntType(32), n), [(m * n + p) // spread if on[p] else 0 for p in range(n)]))
                        _masked_store(builder, spread_out, at(dst_p, d0_i, k * spread + m * n), n, size, on)
            return context.get_dummy_value()

        return sig, codegen

    return copy


def interleave_run(count: int, step: int = 1, ways: int = 2):
    """An ``@intrinsic`` ``interleave(src, s0, s_pitch, dst, d0)``: ``dst[d0 + j * ways + m] =
    src[s0 + m * s_pitch + j * step]`` for ``j < count`` and ``m < ways`` (``step`` 1 or 2, ``ways``
    2 or 4): the rows of ``ways`` planes ``s_pitch`` apart (``_outer``'s packed groups) interleaved
    in one pass. Each source's vector of results is read as :func:`copy_run` reads it; the
    ``ways`` vectors are interleaved by two-source shuffles into ``ways`` whole vectors of ``dst``,
    stored unmasked but for the last of a run. ``copy_run``'s spread writes the same elements a
    source at a time, each vector shuffled apart and stored under a mask: four times the stores,
    and on AMD Zen 4 a masked store costs several plain ones (resnext_g32_s2's packing took 1.2-1.8
    ms of its 3.9-4.9 ms at batch 8, ``docs/performance.md`` round 36). Unaligned; nothing past
    the last element read is touched, nothing but the ``count * ways`` results written; no bounds
    checks; ``src`` and ``dst`` must not overlap."""
    if step not in (1, 2):
        raise ValueError(f"interleave_run takes steps of 1 or 2, not {step}")
    if ways not in (2, 4):
        raise ValueError(f"interleave_run interleaves 2 or 4 planes, not {ways}")

    @intrinsic
    def interleave(typingctx, src, s0, s_pitch, dst, d0):
        if not _takes((src, dst), (s0, s_pitch, d0)):
            return None
        sig = types.void(src, s0, s_pitch, dst, d0)

        def codegen(context, builder, signature, args):
            (src_p, s0_i, pitch_i, dst_p, d0_i), size, n, vec, intp = vector_args(
                context, builder, signature, args, 8 * VECTOR_BYTES)
            i32 = ir.IntType(32)

            def at(base, start, k):
                p = builder.gep(base, [builder.add(start, ir.Constant(intp, k))], inbounds=True)
                return builder.bitcast(p, vec.as_pointer())

            starts = [s0_i] + [builder.add(s0_i, builder.mul(pitch_i, ir.Constant(intp, m))) for m in range(1, ways)]
            per_vector = n // ways  # results of each source in one vector of dst
            for k in range(0, count, n):
                lanes_k = min(n, count - k)
                values = [_run_results(builder, src_p, start, k, lanes_k, step, vec, size, intp) for start in starts]
                # one 2n-wide vector per pair of sources, then (four ways) one 4n-wide of both pairs:
                # lane m * n + j of the concatenation is source m's result j
                while len(values) > 1:
                    values = [builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(i32, 2 * a.type.count),
                                                                       list(range(2 * a.type.count))))
                              for a, b in zip(values[::2], values[1::2])]
                whole = values[0]
                for q in range(-(-lanes_k // per_vector)):  # dst lanes p: source p % ways, result q * per_vector + p // ways
                    live = min(per_vector, lanes_k - q * per_vector) * ways
                    out = builder.shuffle_vector(whole, ir.Constant(whole.type, ir.Undefined), ir.Constant(
                        ir.VectorType(i32, n), [(p % ways) * n + q * per_vector + p // ways for p in range(n)]))
                    _masked_store(builder, out, at(dst_p, d0_i, (k + q * per_vector) * ways), live, size)
            return context.get_dummy_value()

        return sig, codegen

    return interleave


def _clamped(builder, count, lanes: int):
    """``count`` clamped to ``[0, lanes]``."""
    wide = count.type
    clamped = builder.select(builder.icmp_signed("<", count, ir.Constant(wide, 0)), ir.Constant(wide, 0), count)
    return builder.select(builder.icmp_signed(">", clamped, ir.Constant(wide, lanes)), ir.Constant(wide, lanes), clamped)


def lanes_below_bits(builder, count, lanes: int):
    """:func:`lanes_below` made from an integer's low bits instead of a vector compare: on
    AVX-512 a mask register loaded from a general-purpose one, so a loop that keeps the mask
    needs no vector register for it (``_pointwise``'s short block spilled one of its 32 with the
    compare)."""
    wide = count.type
    bits = builder.sub(builder.shl(ir.Constant(wide, 1), _clamped(builder, count, lanes)), ir.Constant(wide, 1))
    return builder.bitcast(builder.trunc(bits, ir.IntType(lanes)), ir.VectorType(ir.IntType(1), lanes))


def lanes_below(builder, count, lanes: int):
    """The mask of the lanes ``j < count`` of a ``lanes``-wide vector, for a run-time integer
    ``count`` (any value: clamped to ``[0, lanes]``, then compared as 32-bit integers, one
    ``vpcmpgtd`` on AVX2 where 64-bit lanes take four instructions)."""
    wide = count.type
    clamped = _clamped(builder, count, lanes)
    i32 = ir.IntType(32)
    narrow = builder.trunc(clamped, i32) if wide.width > 32 else clamped
    ids = ir.Constant(ir.VectorType(i32, lanes), list(range(lanes)))
    return builder.icmp_signed("<", ids, _splat(builder, narrow, ir.VectorType(i32, lanes)))


def _masked_load(builder, pointer, vec, count: int, align: int, lanes_on: tuple[bool, ...] | None = None):
    """The first ``count`` lanes of a ``vec`` at ``pointer`` (or the lanes ``lanes_on``), the
    others zero; nothing in the others is read."""
    mask_type = ir.VectorType(ir.IntType(1), vec.count)
    name = f"v{vec.count}{vec.element.intrinsic_name}"
    pointer_name = "p0" if llvm_binding.llvm_version_info[0] >= 15 else f"p0{name}"
    fn = _declared(builder, f"llvm.masked.load.{name}.{pointer_name}",
                   ir.FunctionType(vec, [pointer.type, ir.IntType(32), mask_type, vec]))
    mask = ir.Constant(mask_type, list(lanes_on) if lanes_on is not None else [i < count for i in range(vec.count)])
    return builder.call(fn, [pointer, ir.Constant(ir.IntType(32), align), mask, ir.Constant(vec, None)])


def flat_plane_sums(n_pix: int, offsets: tuple[int, ...], valid: tuple[tuple[bool, ...], ...]):
    """An ``@intrinsic`` ``sums(g, g0, x, x0, acc, a0)`` for a depthwise weight gradient on a plane
    kept flat (pixels in the lanes, ``lanes`` at a time):

    ``acc[a0 + t * lanes + l] += sum over vectors v of g[g0 + p] * (x[x0 + p + offsets[t]] if
    valid[t][p] else 0)``, ``p = v * lanes + l < n_pix``

    (``valid[t][p]``: tap ``t`` at output pixel ``p`` reads an input pixel, not padding). Each
    term is a fused multiply-add of a gradient vector (one load per vector of pixels) and a
    vector of inputs read with the tap's mask (``vmovups`` with a mask: nothing is read in the
    padding's lanes, whose zeros meet the gradient as the padding's do). The ``len(offsets)``
    sums stay in registers over the vectors, in order."""
    offsets = tuple(int(o) for o in offsets)
    valid = tuple(tuple(bool(b) for b in row) for row in valid)
    if len(valid) != len(offsets) or any(len(row) != n_pix for row in valid):
        raise ValueError("valid must have one row of n_pix flags per offset")

    @intrinsic
    def sums(typingctx, g, g0, x, x0, acc, a0):
        if not _takes((g, x, acc), (g0, x0, a0)):
            return None
        sig = types.void(g, g0, x, x0, acc, a0)

        def codegen(context, builder, signature, args):
            g_v, g0_v, x_v, x0_v, acc_v, a0_v = args
            a_g, t_g0, a_x, t_x0, a_acc, t_a0 = signature.args
            size, n, vec, intp = _vector_of(context, a_g.dtype)
            def at(base, index):  # not inbounds: a masked tap's lanes may lie outside the array
                return builder.bitcast(builder.gep(base, [index]), vec.as_pointer())

            g_p, x_p, acc_p = (_data(context, builder, v, t) for v, t in ((g_v, a_g), (x_v, a_x), (acc_v, a_acc)))
            g0_i, x0_i = _index(context, builder, g0_v, t_g0), _index(context, builder, x0_v, t_x0)
            a0_i = _index(context, builder, a0_v, t_a0)
            acc_ptrs = [at(acc_p, builder.add(a0_i, ir.Constant(intp, t * n))) for t in range(len(offsets))]
            accs = [builder.load(p, align=size) for p in acc_ptrs]
            for v in range(-(-n_pix // n)):
                count = min(n, n_pix - v * n)
                g_at = at(g_p, builder.add(g0_i, ir.Constant(intp, v * n)))
                grad = builder.load(g_at, align=size) if count == n else _masked_load(builder, g_at, vec, count, size)
                for t, off in enumerate(offsets):
                    lanes_on = tuple(valid[t][v * n + i] if i < count else False for i in range(n))
                    x_at = at(x_p, builder.add(x0_i, ir.Constant(intp, v * n + off)))
                    if not any(lanes_on):  # all padding: its zeros still meet the gradient (0 x inf is NaN)
                        value = ir.Constant(vec, None)
                    elif all(lanes_on):
                        value = builder.load(x_at, align=size)
                    else:
                        value = _masked_load(builder, x_at, vec, n, size, lanes_on)
                    accs[t] = _fma(builder, grad, value, accs[t])
            for p, value in zip(acc_ptrs, accs):
                builder.store(value, p, align=size)
            return context.get_dummy_value()

        return sig, codegen

    return sums


def outer_product_row(n_ci: int, ci_pitch: int, taps: tuple[int, ...], n_pix: int, n_vec: int,
                      w_ci_pitch: int, w_tap_pitch: int, out_pitch: int, *, pack: int = 1,
                      pixel_taps: tuple[tuple[int, ...], ...] | None = None,
                      lane_channels: tuple[int, ...] | None = None, x_pixel_step: int = 1,
                      live_groups: bool = False, overwritten: int = 0):
    """An ``@intrinsic`` ``row(xs, x0, w, w0, b, b0, out, o0)`` for one block of a convolution's
    output: ``n_pix`` consecutive output pixels x ``n_vec`` vectors of output channels (channels
    in the lanes, as oneDNN's direct convolution has them):

    ``out[o0 + lane_channels[c] * out_pitch + p] = b[b0 + c] + sum over ci < n_ci, t in
    pixel_taps[p] of w[w0 + ci * w_ci_pitch + t * w_tap_pitch + c] *
    xs[x0 + ci * ci_pitch + (taps[t] + p * x_pixel_step) * pack + c % pack]``

    for lanes ``c < n_vec * lanes`` and ``p < n_pix <= lanes``. Each term is one multiply-add of a
    weight vector (loaded once per tap, used for every pixel) and one broadcast input value; the
    ``n_pix x n_vec`` sums stay in registers over the loop on ``ci``. The sum of an output is:
    bias, then ``ci`` in order, each ``ci``'s taps in order, each multiply-add fused. At the end
    each vector block of sums is transposed in registers (:func:`transpose_plan`) and stored as
    ``lanes`` output rows of ``n_pix`` elements (masked stores: nothing past ``n_pix`` is
    written). Every size and offset but the six run-time offsets is a constant of the code.

    ``pack`` > 1 puts ``pack`` groups in one vector (groups of ``lanes / pack`` output channels):
    their inputs are interleaved in ``xs`` (element ``j`` of each run of ``pack`` is group ``j``'s),
    a run is broadcast whole (``vbroadcastsd`` for pairs of float32), and lane ``c`` computes group
    ``c % pack``'s channel ``c // pack`` (``lane_channels`` says which output row it goes to; by
    default lane ``c``'s). ``pixel_taps[p]``: the taps pixel ``p`` sums (default all), so that a
    transposed convolution skips the zeros between its input pixels, and a convolution that reads
    its input where it lies (``x_pixel_step`` its column stride) skips the padding.

    ``live_groups``: the intrinsic takes a ninth argument ``live``, and only the lanes of the
    first ``live`` of the ``pack`` groups are stored (a layer whose group count is not a multiple
    of ``pack`` computes its last vector with idle groups, their weights zeros).

    ``overwritten``: elements past ``n_pix`` in each output row that a later store of the caller
    writes again (the row's next blocks). Where the rows' ``n_pix`` elements rounded up to whole
    vectors of the target reach no further, they are stored whole, plain stores instead of masked
    ones, and the lanes past ``n_pix`` write zeros there for the later store to replace. AVX2 has
    no masked stores of its own (``vmaskmovps`` is microcoded on AMD's Zen 2 and 3); AVX-512's
    masks cost nothing, and there the masked stores stay.
    """
    taps = tuple(int(t) for t in taps)
    target_bits = target().vector_bits
    if pixel_taps is None:
        pixel_taps = (tuple(range(len(taps))),) * n_pix
    if len(pixel_taps) != n_pix:
        raise ValueError(f"pixel_taps has {len(pixel_taps)} entries for {n_pix} pixels")

    def codegen(context, builder, signature, args):
        from numba.core import cgutils

        xs_v, x0_v, w_v, w0_v, b_v, b0_v, out_v, o0_v = args[:8]
        a_xs, t_x0, a_w, t_w0, a_b, t_b0, a_out, t_o0 = signature.args[:8]
        scalar = context.get_data_type(a_xs.dtype)
        size = a_xs.dtype.bitwidth // 8
        n = VECTOR_BYTES // size
        if n_pix > n:
            raise ValueError(f"at most {n} pixels per row block, not {n_pix}")
        if n % pack:
            raise ValueError(f"{pack} groups do not share a vector of {n} lanes")
        channels = lane_channels or tuple(range(n_vec * n))
        vec = ir.VectorType(scalar, n)
        run = ir.VectorType(scalar, pack)
        intp = context.get_value_type(types.intp)

        data = functools.partial(_data, context, builder)

        def at(base, index, vector_type=None):
            p = builder.gep(base, [index], inbounds=True)
            return builder.bitcast(p, vector_type.as_pointer()) if vector_type else p

        def const(i):
            return ir.Constant(intp, i)

        def broadcast(index):
            if pack == 1:
                return _splat(builder, builder.load(at(xs_p, index)), vec)
            value = builder.load(at(xs_p, index, run), align=size)
            return builder.shuffle_vector(value, ir.Constant(run, ir.Undefined),
                                          ir.Constant(ir.VectorType(ir.IntType(32), n), [i % pack for i in range(n)]))

        xs_p, w_p, b_p, out_p = (data(v, t) for v, t in ((xs_v, a_xs), (w_v, a_w), (b_v, a_b), (out_v, a_out)))
        x0_i = _index(context, builder, x0_v, t_x0)
        w0_i = _index(context, builder, w0_v, t_w0)
        b0_i = _index(context, builder, b0_v, t_b0)
        o0_i = _index(context, builder, o0_v, t_o0)
        live_i = _index(context, builder, args[8], signature.args[8]) if live_groups else None
        sums = [[cgutils.alloca_once(builder, vec) for _ in range(n_vec)] for _ in range(n_pix)]
        for v in range(n_vec):
            bias = builder.load(at(b_p, builder.add(b0_i, const(v * n)), vec), align=size)
            for p in range(n_pix):
                builder.store(bias, sums[p][v])
        with cgutils.for_range(builder, const(n_ci)) as loop:
            xb = builder.add(x0_i, builder.mul(loop.index, const(ci_pitch)))
            wb = builder.add(w0_i, builder.mul(loop.index, const(w_ci_pitch)))
            for t, tap in enumerate(taps):
                users = [p for p in range(n_pix) if t in pixel_taps[p]]
                if not users:
                    continue
                weights = [builder.load(at(w_p, builder.add(wb, const(t * w_tap_pitch + v * n)), vec), align=size)
                           for v in range(n_vec)]
                for p in users:
                    value = broadcast(builder.add(xb, const((tap + p * x_pixel_step) * pack)))
                    for v in range(n_vec):
                        builder.store(_fma(builder, weights[v], value, builder.load(sums[p][v])), sums[p][v])
        t_lanes = target_bits // (8 * size)
        if t_lanes < n:  # AVX2: tiles of the target's vectors
            tvec = ir.VectorType(scalar, t_lanes)
            _store_by_target_tiles(
                builder, sums, n_pix, n_vec, n, tvec, overwritten, size,
                lambda v, c, p: at(out_p, builder.add(o0_i, const(channels[v * n + c] * out_pitch + p)), tvec),
                None if live_i is None else (lambda c: builder.icmp_signed("<", const(c % pack), live_i)))
            return context.get_dummy_value()
        zero = ir.Constant(vec, None)
        for v in range(n_vec):
            rows = [builder.load(sums[p][v]) for p in range(n_pix)] + [zero] * (n - n_pix)
            rows = _shuffled(builder, rows, transpose_plan(n))
            for c in range(n):
                target = at(out_p, builder.add(o0_i, const(channels[v * n + c] * out_pitch)), vec)
                if live_i is None:
                    _masked_store(builder, rows[c], target, n_pix, size)
                    continue
                with cgutils.if_likely(builder, builder.icmp_signed("<", const(c % pack), live_i)):
                    _masked_store(builder, rows[c], target, n_pix, size)
        return context.get_dummy_value()

    if live_groups:
        @intrinsic
        def row_of_live_groups(typingctx, xs, x0, w, w0, b, b0, out, o0, live):
            if not _takes((xs, w, b, out), (x0, w0, b0, o0, live)):
                return None
            return types.void(xs, x0, w, w0, b, b0, out, o0, live), codegen

        return row_of_live_groups

    @intrinsic
    def row(typingctx, xs, x0, w, w0, b, b0, out, o0):
        if not _takes((xs, w, b, out), (x0, w0, b0, o0)):
            return None
        return types.void(xs, x0, w, w0, b, b0, out, o0), codegen

    return row


def _store_by_target_tiles(builder, sums, n_pix: int, n_vec: int, n: int, tvec: ir.VectorType, overwritten: int,
                           size: int, pointer_to, stored):
    """:func:`outer_product_row`'s stores where the target's vectors hold ``t`` < ``n`` lanes
    (AVX2): each ``n``-lane vector of sums is ``n / t`` target vectors of channels, and each
    ``t x t`` tile of (pixels, channels) is transposed by itself (:func:`target_tile_plan`), not
    the whole ``n x n`` block, whose shuffles cross the target's vectors (on a 2-core Zen 3, batch
    8, against the 16 x 16 transposes in one process: resnext_g32_s2's transposed convolution
    1.23-1.38x faster, resnext_g32_14's forward 1.15x, RegNetY's and ResNeXt's other grouped
    3x3 layers within 2%; a one-off A/B). A channel's run of ``t`` pixels is stored whole where
    it is all the block's, or where its lanes past ``n_pix`` are ``overwritten`` by a later store
    (zeros there first); else with a mask.
    ``pointer_to(v, c, p)``: a ``tvec`` pointer to pixel ``p`` of the row of channel ``c`` of
    vector ``v``; ``stored(c)``: None, or the condition under which lane ``c``'s row is stored."""
    from numba.core import cgutils

    t = tvec.count
    mask_type = ir.VectorType(ir.IntType(32), t)
    zero = ir.Constant(tvec, None)
    plan = target_tile_plan(t)
    for v in range(n_vec):
        full = [builder.load(sums[p][v]) for p in range(n_pix)]
        for k in range(n // t):
            part = ir.Constant(mask_type, list(range(k * t, (k + 1) * t)))
            channels = [builder.shuffle_vector(row, ir.Constant(row.type, ir.Undefined), part) for row in full]
            for i in range(-(-n_pix // t)):
                count = min(t, n_pix - i * t)
                rows = _shuffled(builder, channels[i * t:i * t + count] + [zero] * (t - count), plan)
                whole = count == t or t - count <= overwritten
                for c in range(t):
                    pointer = pointer_to(v, k * t + c, i * t)
                    with (cgutils.if_likely(builder, stored(k * t + c)) if stored else contextlib.nullcontext()):
                        if whole:
                            builder.store(rows[c], pointer, align=size)
                        else:
                            _masked_store(builder, rows[c], pointer, count, size)


def target_tile_plan(t: int) -> list[Stage]:
    """The transpose of a ``t x t`` tile of the target's vectors: AVX2's in-lane plan for 8
    float32 (:func:`in_lane_plan`), else :func:`transpose_plan`."""
    return in_lane_plan(8) if t == 8 else transpose_plan(t)


def outer_product_sums(n_c: int, c_pitch: int, taps: tuple[int, ...], n_vec: int, g_pitch: int, tot_c_pitch: int,
                       row_len: int, x_row_pitch: int, regions: tuple[tuple[int, int, int, int, tuple[int, ...]], ...] | None = None,
                       x_col_step: int = 1):
    """An ``@intrinsic`` ``sums(g, g0, xs, x0, n, tot, t0)``: a weight gradient's block of
    ``n_c`` input channels x every tap x ``n_vec`` vectors of output channels (in the lanes),
    over ``n`` output rows of ``row_len`` pixels:

    ``tot[t0 + c * tot_c_pitch + t * g_pitch + o] += sum over r < n, j < row_len of
    g[g0 + (r * row_len + j) * g_pitch + o] * xs[x0 + c * c_pitch + taps[t] + r * x_row_pitch + j * x_col_step]``

    for ``c < n_c`` and ``o < n_vec * lanes`` (``g``: the output gradient with channels last,
    its pixels dense; ``xs``: input rows ``x_row_pitch`` apart, so no padding column is summed).
    Each term is a fused multiply-add of a gradient vector (loaded once per pixel) and a broadcast
    input value; the ``n_c x len(taps) x n_vec`` vector sums stay in registers over the pixels
    (in order: a fixed order) and are then added to ``tot`` (float64: a float32 sum is widened
    first).

    ``regions``, ``((row_lo, row_hi, col_lo, col_hi, tap indices), ...)``, sums instead only the
    listed taps of each region's pixels (rows ``row_lo <= r < min(row_hi, n)``, columns
    ``col_lo <= j < col_hi``), the regions in order: a weight gradient that leaves out the terms
    of padding pixels (:func:`nbconv.cpu._valid.valid_tap_regions`), and so can read its input
    where it lies (``taps`` negative offsets, ``x_col_step`` the stride).
    """
    taps = tuple(int(t) for t in taps)
    if regions is None:
        regions = ((0, None, 0, row_len, tuple(range(len(taps)))),)
    regions = tuple((int(r0), r1 if r1 is None else int(r1), int(j0), int(j1), tuple(int(t) for t in ts))
                    for r0, r1, j0, j1, ts in regions)

    @intrinsic
    def sums(typingctx, g, g0, xs, x0, n, tot, t0):
        if not _takes((g, xs), (g0, x0, n, t0), (tot,)):
            return None
        sig = types.void(g, g0, xs, x0, n, tot, t0)

        def codegen(context, builder, signature, args):
            from numba.core import cgutils

            g_v, g0_v, xs_v, x0_v, n_v, tot_v, t0_v = args
            a_g, t_g0, a_xs, t_x0, t_n, a_tot, t_t0 = signature.args
            size, lanes_n, vec, intp = _vector_of(context, a_g.dtype)
            wide = ir.VectorType(ir.DoubleType(), lanes_n)

            data = functools.partial(_data, context, builder)

            def at(base, index, vector_type=None):
                p = builder.gep(base, [index], inbounds=True)
                return builder.bitcast(p, vector_type.as_pointer()) if vector_type else p

            def const(i):
                return ir.Constant(intp, i)

            g_p, xs_p, tot_p = data(g_v, a_g), data(xs_v, a_xs), data(tot_v, a_tot)
            g0_i, x0_i = _index(context, builder, g0_v, t_g0), _index(context, builder, x0_v, t_x0)
            n_i, t0_i = _index(context, builder, n_v, t_n), _index(context, builder, t0_v, t_t0)
            blocks = [(c, t, v) for c in range(n_c) for t in range(len(taps)) for v in range(n_vec)]
            acc = {k: cgutils.alloca_once_value(builder, ir.Constant(vec, None)) for k in blocks}
            for r0, r1, j0, j1, region_taps in regions:
                if j1 <= j0 or not region_taps:
                    continue
                r_end = n_i if r1 is None else builder.select(builder.icmp_signed("<", n_i, const(r1)), n_i, const(r1))
                with rolled_range(builder, builder.sub(r_end, const(r0))) as rows:
                    r = builder.add(rows.index, const(r0))
                    g_row = builder.add(g0_i, builder.mul(r, const(row_len * g_pitch)))
                    x_row = builder.add(x0_i, builder.mul(r, const(x_row_pitch)))
                    with rolled_range(builder, const(j1 - j0)) as loop:
                        q = builder.add(loop.index, const(j0))
                        gq = builder.add(g_row, builder.mul(q, const(g_pitch)))
                        grads = [builder.load(at(g_p, builder.add(gq, const(v * lanes_n)), vec), align=size)
                                 for v in range(n_vec)]
                        xq = builder.add(x_row, builder.mul(q, const(x_col_step)))
                        for c in range(n_c):
                            for t in region_taps:
                                x_at = builder.add(xq, const(c * c_pitch + taps[t]))
                                value = _splat(builder, builder.load(at(xs_p, x_at)), vec)
                                for v in range(n_vec):
                                    builder.store(_fma(builder, grads[v], value, builder.load(acc[c, t, v])), acc[c, t, v])
            for c, t, v in blocks:
                total = at(tot_p, builder.add(t0_i, const(c * tot_c_pitch + t * g_pitch + v * lanes_n)), wide)
                part = builder.load(acc[c, t, v])
                if vec.element != wide.element:
                    part = builder.fpext(part, wide)
                builder.store(builder.fadd(builder.load(total, align=8), part), total, align=8)
            return context.get_dummy_value()

        return sig, codegen

    return sums


def tile_products(n_t: int, n_vec: int, n_c: int, v_pitch: int, u_pitch: int, m_pitch: int):
    """An ``@intrinsic`` ``products(v, v0, u, u0, m, m0)``: a register block of the Winograd
    forward's products (``_winograd``), ``n_t`` tiles x ``n_vec`` vectors of output channels,

    ``m[m0 + t * m_pitch + o] = sum over c < n_c of v[v0 + t * v_pitch + c] * u[u0 + c * u_pitch + o]``

    for ``t < n_t`` and ``o < n_vec * lanes``. The ``n_t x n_vec`` sums stay in registers over
    every ``c`` (in order, each term a fused multiply-add of a weight vector and a broadcast tile
    value; the first term is the product alone), and are stored once. No bounds checks."""

    @intrinsic
    def products(typingctx, v, v0, u, u0, m, m0):
        if not _takes((v, u, m), (v0, u0, m0)):
            return None
        sig = types.void(v, v0, u, u0, m, m0)

        def codegen(context, builder, signature, args):
            from numba.core import cgutils

            v_v, v0_v, u_v, u0_v, m_v, m0_v = args
            a_v, t_v0, a_u, t_u0, a_m, t_m0 = signature.args
            size, lanes_n, vec, intp = _vector_of(context, a_v.dtype)

            def const(i):
                return ir.Constant(intp, i)

            def at(base, index, vector_type=None):
                p = builder.gep(base, [index], inbounds=True)
                return builder.bitcast(p, vector_type.as_pointer()) if vector_type else p

            v_p, u_p, m_p = _data(context, builder, v_v, a_v), _data(context, builder, u_v, a_u), \
                _data(context, builder, m_v, a_m)
            v0_i, u0_i = _index(context, builder, v0_v, t_v0), _index(context, builder, u0_v, t_u0)
            m0_i = _index(context, builder, m0_v, t_m0)
            blocks = [(t, k) for t in range(n_t) for k in range(n_vec)]
            acc = {b: cgutils.alloca_once_value(builder, ir.Constant(vec, None)) for b in blocks}
            with rolled_range(builder, const(n_c)) as loop:
                c = loop.index
                u_row = builder.add(u0_i, builder.mul(c, const(u_pitch)))
                weights = [builder.load(at(u_p, builder.add(u_row, const(k * lanes_n)), vec), align=size)
                           for k in range(n_vec)]
                for t in range(n_t):
                    v_at = builder.add(v0_i, builder.add(c, const(t * v_pitch)))
                    value = _splat(builder, builder.load(at(v_p, v_at)), vec)
                    for k in range(n_vec):
                        builder.store(_fma(builder, weights[k], value, builder.load(acc[t, k])), acc[t, k])
            for t, k in blocks:
                m_at = builder.add(m0_i, const(t * m_pitch + k * lanes_n))
                builder.store(builder.load(acc[t, k]), at(m_p, m_at, vec), align=size)
            return context.get_dummy_value()

        return sig, codegen

    return products


def copy_span(step: int):
    """An ``@intrinsic`` ``copy(src, s0, dst, d0, n)``: ``dst[d0 + j] = src[s0 + j * step]`` for
    ``j < n`` (``step`` 1, 2 or 4, ``n`` a run-time count), in whole vectors of the target, the
    last one loaded with a mask (nothing past the last element is read) and stored whole with
    zeros in the lanes past ``n``: up to a vector minus one of zeros land past ``dst[d0 + n - 1]``
    (a masked store is microcoded and slow on AMD's AVX2). At step 2 each vector of results is
    the even lanes of two loads, at step 4 every fourth lane of four. No bounds checks; ``src``
    and ``dst`` must not overlap."""
    if step not in (1, 2, 4):
        raise ValueError(f"copy_span takes steps of 1, 2 or 4, not {step}")

    @intrinsic
    def copy(typingctx, src, s0, dst, d0, n):
        if not _takes((src, dst), (s0, d0, n)):
            return None
        sig = types.void(src, s0, dst, d0, n)

        def codegen(context, builder, signature, args):
            from numba.core import cgutils

            (src_p, s0_i, dst_p, d0_i, n_i), size, lanes, vec, intp = vector_args(
                context, builder, signature, args, target().vector_bits)
            i32 = ir.IntType(32)
            mask_type = ir.VectorType(ir.IntType(1), lanes)
            suffix = f"v{lanes}{vec.element.intrinsic_name}.p0"
            masked_load = _declared(builder, f"llvm.masked.load.{suffix}",
                                    ir.FunctionType(vec, [vec.as_pointer(), i32, mask_type, vec]))
            kept = ir.Constant(ir.VectorType(i32, 2 * lanes // step), list(range(0, 2 * lanes, step)))
            halves = ir.Constant(ir.VectorType(i32, lanes), list(range(lanes)))

            def const(i):
                return ir.Constant(intp, i)

            def at(base, index):
                return builder.bitcast(builder.gep(base, [index], inbounds=True), vec.as_pointer())

            def below(count):  # the lanes under a run-time count
                return lanes_below(builder, count, lanes)

            def load(index, count=None):
                if count is None:
                    return builder.load(at(src_p, index), align=size)
                return builder.call(masked_load, [at(src_p, index), ir.Constant(i32, size), below(count),
                                                  ir.Constant(vec, None)])

            def results(k, count=None):  # results k .. k + lanes - 1 (the first ``count`` of them)
                if step == 1:
                    return load(builder.add(s0_i, k), count)
                first = builder.add(s0_i, builder.mul(k, const(step)))
                if count is None:
                    loads = [load(builder.add(first, const(v * lanes))) for v in range(step)]
                else:  # the elements up to the last result's
                    reads = builder.add(builder.mul(builder.sub(count, const(1)), const(step)), const(1))
                    loads = [load(builder.add(first, const(v * lanes)), builder.sub(reads, const(v * lanes)))
                             for v in range(step)]
                parts = [builder.shuffle_vector(loads[v], loads[v + 1], kept) for v in range(0, step, 2)]
                return parts[0] if step == 2 else builder.shuffle_vector(parts[0], parts[1], halves)

            # at steps 2 and 4 a whole vector's last load reads up to 3 elements past its last
            # result: the last vector always goes through the masked loads, which read none
            full = builder.sdiv(n_i if step == 1 else builder.sub(n_i, const(1)), const(lanes))
            full = builder.select(builder.icmp_signed("<", full, const(0)), const(0), full)
            with cgutils.for_range(builder, full) as loop:
                k = builder.mul(loop.index, const(lanes))
                builder.store(results(k), at(dst_p, builder.add(d0_i, k)), align=size)
            k = builder.mul(full, const(lanes))
            rest = builder.sub(n_i, k)
            with builder.if_then(builder.icmp_signed(">", rest, const(0))):
                builder.store(results(k, rest), at(dst_p, builder.add(d0_i, k)), align=size)
            return context.get_dummy_value()

        return sig, codegen

    return copy


#: The two copies the CPU kernels pack planes and columns with (``_depthwise``, ``_im2col``).
copy_step1, copy_step2 = copy_span(1), copy_span(2)
#: Every fourth element (ConvNeXt's 4 x 4 patches at stride 4, ``_im2col._patches``).
copy_step4 = copy_span(4)
