"""Winograd convolution on the CPU for groups with many channels: F(m x m, r x r) tiles.

For stride 1 and no dilation, an ``m x m`` block of outputs of an ``r x r`` kernel is, per input
channel, ``A^T [(G w G^T) * (B^T d B)] A`` with ``d`` the ``t x t`` input tile (``t = m + r - 1``)
and ``*`` elementwise (Lavin & Gray 2016): the ``t x t`` products of the transformed tile and
weight replace ``m^2 r^2`` multiply-adds, so summing over the input channels becomes ``t^2``
independent matrix products ``M[p] = V[p] U[p]`` (tiles x input channels x output channels) and
the direct method's ``m^2 r^2`` multiply-adds per tile and channel pair drop to ``t^2``: 25 to
5.5 per output for 5x5 with m = 3 (4.6x fewer), 9 to 2.25 for 3x3 with m = 4.

The price is rounding: the transforms add and scale terms, so results differ from the direct
sum by a few times more than its rounding (F(3x3, 5x5) in float32: 5e-6 to 7e-6 of the largest
output against ~2e-7; ``docs/winograd_error.py`` measures it). The transforms compute in the
data's precision. The transform matrices come from the Cook-Toom construction on the points of
:data:`POINTS`, in exact rational arithmetic.

Layout: the input is packed once per call channels-last and zero-padded (``(N, groups, Hp, Wp,
C_in/groups)``), so every vector loop runs over channels: the input transform over input
channels, the matrix products and the output transform over output channels. A task is (group,
block of ``TB`` tiles of the whole batch): it transforms its tiles' inputs, then for each block
of output channels computes the ``t^2`` products and transforms them back to outputs, which it
stores with the bias. A product's register block is ``TT`` tiles x up to ``MAX_PRODUCT_VECTORS``
vectors of output channels, its sums in registers over all the group's input channels
(``_simd.tile_products``); where the block of output channels is not whole vectors, ``TT`` tiles
x ``KC`` input channels against a loop over the output channels. A tile of 49 terms (5x5
kernels) is transformed in two passes (:func:`separable_transform`). Every sum has a fixed order,
independent of the thread count.
"""

from __future__ import annotations

import functools
from fractions import Fraction
from typing import NamedTuple

import numpy as np

from .._divisors import largest_divisor
from .._version import __version__
from . import _generated, _outer, _scratch, _simd
from ._threads import thread_count

#: Outputs per tile side (m) for each kernel side (r), and the interpolation points of F(m, r)
#: (plus the point at infinity), for the forward and for the weight gradient's F(r, 3)
#: (``_winograd_wgrad``). The points with halves keep the transforms' rounding lowest among those
#: tried (``docs/winograd_error.py``).
TILE_FOR_KERNEL = {3: 4, 5: 3}
POINTS = {
    (4, 3): (0, 1, -1, Fraction(1, 2), -2),
    (3, 5): (0, 1, -1, 2, Fraction(-1, 2), Fraction(1, 2)),
    (5, 3): (0, 1, -1, 2, Fraction(-1, 2), Fraction(1, 2)),
    (3, 3): (0, 1, -1, Fraction(1, 2)),
}
#: Fewest input and output channels per group, and fewest tiles per group (over the batch): below
#: those the transforms (of the weight, for few tiles) cost more than the multiply-adds they save
#: (against ``_grouped`` at batch 8: 32 -> 32 channels on 32x32 0.99x, 256 -> 256 in 8 groups on
#: 14x14 0.92x, 64 -> 96 with 48 tiles 0.98x; 64 -> 64 on 28x28 1.9x, alexnet_g2 3.4x;
#: ``python docs/winograd_blocks.py --against-direct``).
MIN_CHANNELS = 48
MIN_TILES = 64
#: Tiles per task (a multiple of ``TT``), and tiles x input channels (at most) per register block:
#: 4 x 6 values broadcast against a vector of output channels, 24 multiply-adds per 4 sums loaded
#: and stored (alexnet_g2 at batch 8, fastest of 15: 3.4-3.9 ms, against 4.1-5.8 for 4 x 4,
#: 2 x 12, 8 x 3 or 8 tiles per task; ``python docs/winograd_blocks.py``; this machine is noisy,
#: repeat).
TB, TT, MAX_KC = 16, 4, 6
#: Most vectors of output channels per register block of the products (``TT`` x this many sums).
MAX_PRODUCT_VECTORS = 4
#: Output channels per block (at most; a divisor of the group's): the products of a block for
#: all tiles of a task stay in L2 (49 x 16 x 128 float32: 400 KiB).
MAX_OUT_BLOCK = 128
#: Most elements of the transformed weight (64 MiB of float32).
MAX_WEIGHT_ELEMS = 1 << 24


def _vandermonde(points, cols: int) -> list[list[Fraction]]:
    rows = [[Fraction(a) ** j for j in range(cols)] for a in points]
    return rows + [[Fraction(0)] * (cols - 1) + [Fraction(1)]]  # the point at infinity


def _inverse(m: list[list[Fraction]]) -> list[list[Fraction]]:
    n = len(m)
    a = [row[:] + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(m)]
    for c in range(n):
        p = next(r for r in range(c, n) if a[r][c] != 0)
        a[c], a[p] = a[p], a[c]
        a[c] = [v / a[c][c] for v in a[c]]
        for r in range(n):
            if r != c and a[r][c] != 0:
                f = a[r][c]
                a[r] = [u - f * v for u, v in zip(a[r], a[c])]
    return [row[n:] for row in a]


@functools.cache
def transform_matrices(m: int, r: int) -> tuple[tuple, tuple, tuple]:
    """(A^T (m x t), G (t x r), B^T (t x t)) of F(m, r), exact: the correlation of a length-t
    input d with a length-r kernel w is ``A^T ((G w) * (B^T d))``.

    From the Cook-Toom algorithm for the linear convolution of a length-m and a length-r
    polynomial (evaluate both at the t points, multiply, interpolate) and the transposition
    principle: with Vandermonde matrices V_k (t x k) of the points, A^T = V_m^T, G = V_r,
    B^T = V_t^-T."""
    t = m + r - 1
    points = POINTS[(m, r)]
    vm, vr, vt = _vandermonde(points, m), _vandermonde(points, r), _vandermonde(points, t)
    vt_inv = _inverse(vt)
    at = tuple(tuple(vm[k][i] for k in range(t)) for i in range(m))
    bt = tuple(tuple(vt_inv[i][k] for i in range(t)) for k in range(t))
    return at, tuple(tuple(row) for row in vr), bt


assert TB % TT == 0, "a task's tiles must be whole register blocks"


class Geometry(NamedTuple):
    """The tiling of a spec's output planes (every kernel side in ``TILE_FOR_KERNEL``)."""

    mh: int  #: outputs per tile: rows
    mw: int  #: columns
    th: int  #: inputs per tile (mh + kH - 1)
    tw: int
    ty_n: int  #: tiles per output plane: rows
    tx_n: int  #: columns
    hp: int  #: rows of a packed (zero-padded) input plane: ty_n * mh + kH - 1
    wp: int

    @property
    def positions(self) -> int:
        """Positions of a transformed tile (th x tw)."""
        return self.th * self.tw


def geometry(spec) -> Geometry:
    (kh, kw), (oh, ow) = spec.kernel_size, spec.out_size
    mh, mw = TILE_FOR_KERNEL[kh], TILE_FOR_KERNEL[kw]
    ty_n, tx_n = -(-oh // mh), -(-ow // mw)
    return Geometry(mh, mw, mh + kh - 1, mw + kw - 1, ty_n, tx_n, ty_n * mh + kh - 1, tx_n * mw + kw - 1)


def applies(spec) -> bool:
    """Stride 1, no dilation of either kind, kernel sides with a tile (3 or 5), at least
    ``MIN_CHANNELS`` input and output channels per group and ``MIN_TILES`` tiles, a transformed
    weight of at most ``MAX_WEIGHT_ELEMS``."""
    if not (spec.batch > 0 and spec.stride == (1, 1) and spec.dilation == (1, 1) and spec.lhs_dilation == (1, 1)
            and all(k in TILE_FOR_KERNEL for k in spec.kernel_size)
            and min(spec.in_per_group, spec.out_per_group) >= MIN_CHANNELS):
        return False
    geo = geometry(spec)
    if spec.batch * geo.ty_n * geo.tx_n < MIN_TILES:
        return False
    return geo.positions * spec.in_per_group * spec.out_channels <= MAX_WEIGHT_ELEMS


def _lincomb(coeffs, names) -> str:
    """``sum c * name`` over the non-zero coefficients, as source (``0.0`` when none). A
    coefficient is written ``_T(c)``, ``_T`` the data's scalar type (:func:`scalar_type_line`):
    a bare float literal is a float64 to Numba, and made every float32 transform a float64 one,
    converted back at the store (twice the vector instructions for the same values; the Winograd
    layers took 1.02-1.07x the time so, ``docs/performance.md`` round 34)."""
    terms = []
    for c, name in zip(coeffs, names):
        if c == 0:
            continue
        if c == 1:
            terms.append(f"+ {name}")
        elif c == -1:
            terms.append(f"- {name}")
        else:
            terms.append(f"{'+' if c > 0 else '-'} _T({float(abs(c))!r}) * {name}")
    if not terms:
        return "0.0"
    expr = " ".join(terms)
    return expr[2:] if expr.startswith("+ ") else "-" + expr[2:]


def scalar_type_line(dtype) -> str:
    """The generated module's line that names ``_T``, the scalar type of its data (float32 or
    float64): its transforms compute in the data's precision."""
    return f"\n_T = numba.{np.dtype(dtype).name}\n"


#: Fewest terms of a tile (``th x tw``) transformed in two passes (:func:`separable_transform`);
#: smaller tiles in one. Patched by ``docs/winograd_passes.py``, which measures both.
TWO_PASS_MIN_TERMS = 42


def offset(*terms: tuple[int | str, int]) -> str:
    """Source for ``sum index * scale`` over ``terms`` of (index, scale): the integer indices
    folded into one constant, the named ones (run-time loop variables) kept as products."""
    const = sum(i * k for i, k in terms if isinstance(i, int))
    names = [f"{i} * {k}" for i, k in terms if not isinstance(i, int)]
    return " + ".join(names + [str(const)]) if names else str(const)


def separable_transform(loop: str, src, dst, rows, cols, finish=None, setup=(), mid=None) -> list[str]:
    """Source lines for ``dst(i, j) = finish(sum_a rows[i][a] sum_b cols[j][b] src(a, b))`` for
    every ``i, j``, vector loops over the index of ``loop`` (a ``for`` header). ``src``, ``mid``
    and ``dst`` map indices (integers, or the name of a loop variable: use :func:`offset`) to
    element expressions; ``finish`` (source -> source) and ``setup`` (lines run before the sums
    along the rows) add what the stores need (the bias).

    A tile of at least :data:`TWO_PASS_MIN_TERMS` terms is transformed in two passes through
    memory, each a loop over the tile's rows or columns around the vector loop. First, per row
    ``a``, its combinations along the columns, stored at ``mid(a, j)``. Then, per column ``j``,
    the combinations along the rows of those, stored at ``dst(i, j)``. ``mid`` may be the places of
    ``src`` or of ``dst`` (the default): every pass loads all its terms before it stores. In one pass, the whole
    tile is live at once. For F(3x3, 5x5) that is 49 terms, more than the vector registers, and
    the spills (714 stack accesses in the input transform's loop with AVX-512) cost more than the
    two passes' stores and loads (at batch 8, two passes took 0.95x the time of one for
    alexnet_g2's forward and transposed convolution and 0.84x for its weight gradient, ``python
    docs/winograd_passes.py``; dense_64_28's 36-term tiles took 1.15x in two, a one-off A/B:
    ``docs/performance.md`` round 35). Each value is the same sum in the same order either way, so
    the results are the same bits."""
    n_a, n_b = len(rows[0]), len(cols[0])
    finish = finish or (lambda expr: expr)
    mid = mid or dst
    if n_a * n_b < TWO_PASS_MIN_TERMS:
        body = [f"r{a}_{b} = {src(a, b)}" for a in range(n_a) for b in range(n_b)]
        body += [f"s{a}_{j} = {_lincomb(cols[j], [f'r{a}_{b}' for b in range(n_b)])}"
                 for a in range(n_a) for j in range(len(cols))]
        body += list(setup)
        body += [f"{dst(i, j)} = {finish(_lincomb(rows[i], [f's{a}_{j}' for a in range(n_a)]))}"
                 for i in range(len(rows)) for j in range(len(cols))]
        return [loop, *_generated.nested(body)]
    body = [f"r{b} = {src('_ra', b)}" for b in range(n_b)]
    body += [f"s{j} = {_lincomb(cols[j], [f'r{b}' for b in range(n_b)])}" for j in range(len(cols))]
    body += [f"{mid('_ra', j)} = s{j}" for j in range(len(cols))]
    lines = [f"for _ra in range({n_a}):", *_generated.nested([loop, *_generated.nested(body)])]
    body = [*setup, *(f"r{a} = {mid(a, '_cj')}" for a in range(n_a))]
    body += [f"s{i} = {_lincomb(rows[i], [f'r{a}' for a in range(n_a)])}" for i in range(len(rows))]
    body += [f"{dst(i, '_cj')} = {finish(f's{i}')}" for i in range(len(rows))]
    return lines + [f"for _cj in range({len(cols)}):", *_generated.nested([loop, *_generated.nested(body)])]


def chunk_count(n_tiles: int, groups: int, threads: int) -> int:
    """Chunks of each group's ``n_tiles`` tiles (of the whole batch), each at most ``TB`` tiles, for
    the forward's tasks: the fewest whose tasks (``groups`` x chunks) the threads share evenly, if
    at most ``threads - 1`` chunks more than ``TB`` tiles a chunk need. Where 7 chunks of 16 tiles
    went to 2 threads as 4 and 3 (98 tiles: 64 against 34, so 2 threads were only 1.5x as fast as
    1), 8 chunks of 12-16 tiles go as 4 and 4 (52 against 46 tiles). Which chunk a tile falls in
    changes no sum: the result does not depend on the thread count."""
    fewest = -(-n_tiles // TB)
    for chunks in range(fewest, fewest + threads):
        if groups * chunks % threads == 0:
            return chunks
    return fewest


def blocking(spec) -> tuple[int, int]:
    """(input channels per register block, output channels per block)."""
    return largest_divisor(spec.in_per_group, MAX_KC), largest_divisor(spec.out_per_group, MAX_OUT_BLOCK)


_DRIVER = '''

@njit_parallel
def transform_weight(w, u, wt_buf):
    \"\"\"u[g, p, c, o] = (G w[g * {cout_g} + o, c] G^T)[p], w flat {weight_layout}. A task's
    taps are first copied output channel last (``wt_buf``, a row per thread), so that the
    transform's loop over the output channels reads and writes consecutive elements (a vector
    loop).\"\"\"
    for task in numba.prange({groups} * {cin_g}):
        wt = wt_buf[numba.get_thread_id()]
        g = task // {cin_g}
        c = task % {cin_g}
        for o in range({cout_g}):
            w0 = {weight_first}
            for k in range({kk}):
                wt[k * {cout_g} + o] = w[_U({weight_tap})]
        {weight_body}


@njit_parallel
def pack(x, xp):
    \"\"\"xp[n, g, y, x, c] = x[n, g * {cin_g} + c, y - {pt}, x - {pl}] for y < {rows_read}, x < {cols_read}
    (the pixels some output reads), zero elsewhere.\"\"\"
    n_img = x.shape[0]
    for task in numba.prange(n_img * {groups} * {hp}):
        y = task % {hp}
        ng = task // {hp}
        n = ng // {groups}
        g = ng % {groups}
        r0 = (ng * {hp} + y) * {wp} * {cin_g}
        iy = y - {pt}
        if iy < 0 or iy >= {in_h} or y >= {rows_read}:
            for i in range({wp} * {cin_g}):
                xp[r0 + i] = 0.0
            continue
        for ix in range({wp}):
            sx = ix - {pl}
            if sx < 0 or sx >= {in_w} or ix >= {cols_read}:
                for c in range({cin_g}):
                    xp[r0 + ix * {cin_g} + c] = 0.0
            else:
                for c in range({cin_g}):
                    xp[r0 + ix * {cin_g} + c] = x[n, g * {cin_g} + c, iy, sx]


@njit_serial
def _input_transform(xp, base, v, v0):
    \"\"\"v[v0 + p * {cin_g} + c] = (B^T d B)[p] of the tile at xp[base:], every input channel c.\"\"\"
    {input_body}


@njit_serial
def _products(m, m0, v, v0, u, u0):
    \"\"\"m[m0 + t * {ob} + o] = sum_c v[v0 + t * {v_tile} + c] * u[u0 + c * {cout_g} + o] for {tt} tiles t
    and {ob} output channels o: {products_how}.\"\"\"
    {gemm_body}


@njit_serial
def _output_transform(m, m0, b, y, y0):
    \"\"\"y[y0 + (a * {mw} + c) * {ob} + o] = (A^T M A)[a, c] + b[o] of the tile whose products are at m[m0:]
    (position p at a stride of {tb} x {ob}), every output channel o of the block.\"\"\"
    {output_body}


@numba.njit(inline="always")
def _tile(q):
    """(image, tile row, tile column) of tile q of the batch."""
    return q // {tiles_img}, (q // {tx_n}) % {ty_n}, q % {tx_n}


@njit_parallel
def forward(xp, u, b, out, v_buf, m_buf, y_buf, n_chunks):
    \"\"\"out (N, {c_out}, {oh}, {ow}) from the packed input and transformed weight: tasks of (group,
    chunk of the batch's tiles in (image, tile row, tile column) order). The tiles' register blocks
    of {tt} are shared out as evenly as whole blocks allow among ``n_chunks`` chunks of at most {tb}
    tiles (``chunk_count``); a tile's sums do not depend on its chunk.\"\"\"
    n_img = out.shape[0]
    n_tiles = n_img * {tiles_img}
    n_blocks = (n_tiles + {tt} - 1) // {tt}
    out_flat = out.reshape(-1)
    for task in numba.prange({groups} * n_chunks):
        tid = numba.get_thread_id()
        v = v_buf[tid]
        m = m_buf[tid]
        y = y_buf[tid]
        g = task // n_chunks
        chunk = task % n_chunks
        q0 = (chunk * n_blocks // n_chunks) * {tt}
        nq = min(((chunk + 1) * n_blocks // n_chunks) * {tt}, n_tiles) - q0
        for t in range(nq):
            n, ty, tx = _tile(q0 + t)
            _input_transform(xp, (((n * {groups} + g) * {hp} + ty * {mh}) * {wp} + tx * {mw}) * {cin_g}, v,
                             t * {v_tile})
        for ob0 in range(0, {cout_g}, {ob}):
            for p in range({p_n}):
                for t0 in range(0, nq, {tt}):  # the tiles past nq use stale values; they are not stored
                    _products(m, (p * {tb} + t0) * {ob}, v, t0 * {v_tile} + p * {cin_g}, u,
                              (g * {p_n} + p) * {cin_g} * {cout_g} + ob0)
            for t in range(nq):
                _output_transform(m, t * {ob}, b[g * {cout_g} + ob0:], y, t * {y_tile})
            for t in range(nq):
                n, ty, tx = _tile(q0 + t)
                rows = min({mh}, {oh} - ty * {mh})
                cols = min({mw}, {ow} - tx * {mw})
                o_base = ((n * {c_out} + g * {cout_g} + ob0) * {oh} + ty * {mh}) * {ow} + tx * {mw}
                for o in range({ob}):
                    for a in range(rows):
                        for c in range(cols):
                            out_flat[o_base + o * {plane} + a * {ow} + c] = y[t * {y_tile} + (a * {mw} + c) * {ob} + o]
'''


def product_vectors(spec) -> tuple[int, ...] | None:
    """Vectors of output channels per register block of the products (:func:`product_lines`), in
    order across a block of output channels, or None where the block is not whole vectors. At most
    ``MAX_PRODUCT_VECTORS`` and the target's register budget (``_outer.block_sums()`` sums of
    ``TT`` tiles), spread evenly: 48 channels of float32 are one block of 3 vectors, 128 two of 4."""
    lanes, ob = _simd.lanes(spec.dtype), blocking(spec)[1]
    if ob % lanes:
        return None
    n = ob // lanes
    most = max(1, min(MAX_PRODUCT_VECTORS, _outer.block_sums() // TT))
    blocks = -(-n // most)
    return tuple(n // blocks + (i < n % blocks) for i in range(blocks))


def product_lines(spec, v_tile: int) -> tuple[list[str], str, str]:
    """(the body of ``_products``, what its docstring says of it, module lines it needs).

    Where the output channels of a block are whole vectors (:func:`product_vectors`), each
    register block of ``TT`` tiles x those vectors keeps its sums in registers over every input
    channel (``_simd.tile_products``) and stores them once. Else ``TT`` tiles x ``kc`` input
    channels at a time against a loop over the output channels, whose sums are loaded and stored
    per ``kc`` channels (the vector loop LLVM makes of it)."""
    kc, ob = blocking(spec)
    cin_g, cout_g = spec.in_per_group, spec.out_per_group
    vectors = product_vectors(spec)
    if vectors is not None:
        lanes = _simd.lanes(spec.dtype)
        header = "\nfrom nbconv.cpu._simd import tile_products\n\n" + "".join(
            f"_tp{n} = tile_products({TT}, {n}, {cin_g}, {v_tile}, {cout_g}, {ob})\n" for n in sorted(set(vectors)))
        lines, o = [], 0
        for n in vectors:
            lines.append(f"_tp{n}(v, v0, u, u0 + {o}, m, m0 + {o})")
            o += n * lanes
        how = f"blocks of {TT} tiles x {'+'.join(map(str, vectors))} vectors, sums in registers over the input channels"
        return lines, how, header
    gemm = []
    for first in (True, False):  # the first input channels start the sums, the others add to them
        c0 = "0" if first else "c0"
        block = [f"a{t}_{k} = v[_U(v0 + {t * v_tile + k} + {c0})]" for t in range(TT) for k in range(kc)]
        block += [f"for o in range({ob}):"]
        per_output = [f"w{k} = u[_U(u0 + ({c0} + {k}) * {cout_g} + o)]" for k in range(kc)]
        for t in range(TT):
            terms = " + ".join(f"a{t}_{k} * w{k}" for k in range(kc))
            acc = "" if first else f"m[_U(m0 + {t * ob} + o)] + "
            per_output += [f"m[_U(m0 + {t * ob} + o)] = {acc}{terms}"]
        block += _generated.nested(per_output)
        gemm += block if first else [f"for c0 in range({kc}, {cin_g}, {kc}):", *_generated.nested(block)]
    how = f"{kc} input channels at a time, their {TT} x {kc} tile values in registers"
    return gemm, how, ""


def module_source(spec) -> str:
    (kh, kw), (oh, ow) = spec.kernel_size, spec.out_size
    mh, mw, th, tw, ty_n, tx_n, hp, wp = geo = geometry(spec)
    ath, gh, bth = transform_matrices(mh, kh)
    atw, gw, btw = transform_matrices(mw, kw)
    cin_g, cout_g = spec.in_per_group, spec.out_per_group
    ob = blocking(spec)[1]
    p_n = geo.positions
    # the weight's, the input's and the products' transforms: vector loops over channels; in two passes
    # (large tiles), the first stores in the places the second reads (``separable_transform``)
    weight_body = separable_transform(
        f"for o in range({cout_g}):", lambda a, b: f"wt[_U({offset((a, kw * cout_g), (b, cout_g))} + o)]",
        lambda i, j: f"u[_U((g * {p_n * cin_g} + {offset((i, tw * cin_g), (j, cin_g))} + c) * {cout_g} + o)]", gh, gw)
    input_body = separable_transform(
        f"for c in range({cin_g}):", lambda a, b: f"xp[_U(base + {offset((a, wp * cin_g), (b, cin_g))} + c)]",
        lambda i, j: f"v[_U(v0 + {offset((i, tw * cin_g), (j, cin_g))} + c)]", bth, btw)
    output_body = separable_transform(
        f"for o in range({ob}):", lambda a, b: f"m[_U(m0 + {offset((a, tw * TB * ob), (b, TB * ob))} + o)]",
        lambda i, j: f"y[_U(y0 + {offset((i, mw * ob), (j, ob))} + o)]",
        ath, atw, finish=lambda expr: f"{expr} + bias", setup=["bias = b[o]"],
        mid=lambda a, j: f"m[_U(m0 + {offset((a, tw * TB * ob), (j, TB * ob))} + o)]")
    v_tile = p_n * cin_g
    gemm, products_how, header = product_lines(spec, v_tile)
    what = f"Winograd F({mh}x{mw}, {kh}x{kw}), {cin_g} -> {cout_g} channels per group, {oh}x{ow} outputs"
    if spec.transposed_weight:  # the transposed convolution's own weight, flipped here
        weight_layout = f"(C_in = {spec.groups} x {cin_g}, {cout_g}, {kh}, {kw}), a transposed convolution's"
        weight_first, weight_tap = f"((g * {cin_g} + c) * {cout_g} + o) * {kh * kw}", f"w0 + {kh * kw - 1} - k"
    else:
        weight_layout = f"(C_out, {cin_g}, {kh}, {kw})"
        weight_first, weight_tap = f"((g * {cout_g} + o) * {cin_g} + c) * {kh * kw}", "w0 + k"
    fmt = dict(groups=spec.groups, cin_g=cin_g, cout_g=cout_g, kh=kh, kw=kw, kk=kh * kw, pt=spec.padding[0],
               pl=spec.padding[2], hp=hp, wp=wp, rows_read=oh + kh - 1, cols_read=ow + kw - 1,
               in_h=spec.in_size[0], in_w=spec.in_size[1], ob=ob, products_how=products_how,
               weight_layout=weight_layout, weight_first=weight_first, weight_tap=weight_tap, tt=TT, tb=TB,
               v_tile=v_tile, tiles_img=ty_n * tx_n, tx_n=tx_n, ty_n=ty_n, y_tile=mh * mw * ob, plane=oh * ow,
               mh=mh, mw=mw,
               oh=oh, ow=ow, p_n=p_n, c_out=spec.out_channels,
               weight_body=weight_body, input_body=input_body, output_body=output_body, gemm_body=gemm)
    return (_generated.HEADER.format(generator=__name__, version=__version__, what=what)
            + scalar_type_line(spec.dtype) + header + _generated.fill(_DRIVER, **fmt))


@functools.lru_cache(maxsize=64)
def _module(spec):
    return _generated.load(module_source(spec), "nbconv_winograd")


def winograd_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, out: np.ndarray, spec) -> None:
    """``out`` = the convolution of ``spec`` (C-contiguous arrays; ``w`` in (C_out, C_in/groups, kH, kW),
    or for ``spec.transposed_weight`` the transposed convolution's own (C_in, C_out/groups, kH, kW)).
    Non-finite pixels or weights make the tiles that hold them non-finite: the launcher checks."""
    mod, geo = _module(spec), geometry(spec)
    threads, p_n, ob = thread_count(), geo.positions, blocking(spec)[1]

    def make():
        return (np.empty(p_n * spec.in_per_group * spec.out_channels, x.dtype),
                np.empty((threads, spec.kernel_size[0] * spec.kernel_size[1] * spec.out_per_group), x.dtype),
                np.empty(spec.batch * spec.groups * geo.hp * geo.wp * spec.in_per_group, x.dtype),
                np.zeros((threads, TB * p_n * spec.in_per_group), x.dtype),
                np.empty((threads, p_n * TB * ob), x.dtype),
                np.empty((threads, TB * geo.mh * geo.mw * ob), x.dtype))

    # every element of u and xp is written per call (xp's padding too); v, m, y are per-task
    # scratch: kept between calls (``_scratch``), their pages are not faulted in again each call
    u, wt, xp, v, m, y = _scratch.reused(("winograd", spec, threads), make)
    mod.transform_weight(w.reshape(-1), u, wt)
    mod.pack(x, xp)
    mod.forward(xp, u, b, out, v, m, y, chunk_count(spec.batch * geo.ty_n * geo.tx_n, spec.groups, threads))
