"""Vector operations LLVM does not derive from Numba loops, written as LLVM IR (``@intrinsic``).

:func:`transpose_tile` moves a square tile of one vector register per row (64 bytes: 16 float32
or 8 float64) from rows to columns with register shuffles. The same copy as a Numba loop
(``dst[j * pd + i] = src[i * ps + j]``) compiles to one scalar load and store per element, about 4x
slower (``python docs/channels_last.py --transpose``). The kernels that keep channels in vector
lanes (``_channels_last``) use it to go from NCHW planes to channels-last blocks and back.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

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
    ones than their ``vpermt2ps`` (``python docs/channels_last.py --transpose`` times both)."""
    n = 16

    def unpack(high: bool, width: int) -> list[int]:  # per 128-bit lane q: (a, b) interleaved
        base = [4 * q + 2 * high for q in range(4)]
        if width == 1:
            return [i for b in base for i in (b, n + b, b + 1, n + b + 1)]
        return [i for b in base for i in (b, b + 1, n + b, n + b + 1)]

    def lanes_of(a: tuple[int, int], b: tuple[int, int]) -> list[int]:  # 128-bit lanes a0, a1 of a, b0, b1 of b
        return [4 * q + k for q in a for k in range(4)] + [n + 4 * q + k for q in b for k in range(4)]

    even, odd = lanes_of((0, 2), (0, 2)), lanes_of((1, 3), (1, 3))
    floats = [e for i in range(0, n, 2) for e in ((i, i, i + 1, unpack(False, 1)), (i + 1, i, i + 1, unpack(True, 1)))]
    pairs = [e for b in range(0, n, 4) for e in (
        (b, b, b + 2, unpack(False, 2)), (b + 1, b, b + 2, unpack(True, 2)),
        (b + 2, b + 1, b + 3, unpack(False, 2)), (b + 3, b + 1, b + 3, unpack(True, 2)))]
    quads = [e for b in (0, 8) for k in range(b, b + 4) for e in ((k, k, k + 4, even), (k + 4, k, k + 4, odd))]
    octets = [e for k in range(8) for e in ((k, k, k + 8, even), (k + 8, k, k + 8, odd))]
    return [floats, pairs, quads, octets]


def _index(context, builder, value, ty):
    return context.cast(builder, value, ty, types.intp)


@intrinsic
def transpose_tile(typingctx, src, s0, s_pitch, dst, d0, d_pitch):
    """``dst[d0 + j * d_pitch + i] = src[s0 + i * s_pitch + j]`` for ``i, j < lanes(dtype)``.

    ``src`` and ``dst``: 1-D contiguous float32 or float64 arrays of the same dtype; offsets and
    pitches in elements, any integer type. One vector load per source row and one store per
    destination row, unaligned; no bounds checks (the caller's offsets must be in range)."""
    arrays = (src, dst)
    if not all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" for a in arrays):
        return None
    if src.dtype != dst.dtype or src.dtype not in (types.float32, types.float64):
        return None
    if not all(isinstance(i, types.Integer) for i in (s0, s_pitch, d0, d_pitch)):
        return None
    sig = types.void(src, s0, s_pitch, dst, d0, d_pitch)

    def codegen(context, builder, signature, args):
        src_v, s0_v, sp_v, dst_v, d0_v, dp_v = args
        a_src, t_s0, t_sp, a_dst, t_d0, t_dp = signature.args
        size = a_src.dtype.bitwidth // 8
        n = VECTOR_BYTES // size
        vec = ir.VectorType(context.get_data_type(a_src.dtype), n)
        intp = context.get_value_type(types.intp)

        def row_pointers(array_value, array_type, start, pitch):
            data = context.make_array(array_type)(context, builder, array_value).data
            for i in range(n):
                index = builder.add(start, builder.mul(pitch, ir.Constant(intp, i)))
                yield builder.bitcast(builder.gep(data, [index], inbounds=True), vec.as_pointer())

        rows = [builder.load(p, align=size) for p in row_pointers(
            src_v, a_src, _index(context, builder, s0_v, t_s0), _index(context, builder, sp_v, t_sp))]
        mask_type = ir.VectorType(ir.IntType(32), n)
        for stage in transpose_plan(n):
            new = [None] * n
            for d, a, b, mask in stage:
                new[d] = builder.shuffle_vector(rows[a], rows[b], ir.Constant(mask_type, mask))
            rows = new
        for row, p in zip(rows, row_pointers(
                dst_v, a_dst, _index(context, builder, d0_v, t_d0), _index(context, builder, dp_v, t_dp))):
            builder.store(row, p, align=size)
        return context.get_dummy_value()

    return sig, codegen
