"""The weight gradient by Winograd on the CPU, for groups with many channels (alexnet_g2's
48 -> 128 with 5x5 kernels).

``dW[o, c, kh, kw] = sum over images and output pixels of gy[n, o, y, x] * x_pad[n, c, y + kh,
x + kw]`` splits the output gradient into ``m x m`` tiles (``m = TILE``); per tile it is the
correlation of a ``t x t`` input tile (``t = r + m - 1``) with the ``m x m`` gradient tile, which
gives the ``r x r`` taps: Winograd's F(r x r, m x m) (Lavin & Gray 2016), the roles of
:mod:`nbconv.cpu._winograd`'s forward with the kernel and the output swapped. Summing over the
tiles commutes with the last transform, so per group

``dW = A^T [sum over tiles of (G g G^T) * (B^T d B)] A``

where the sum is ``t^2`` matrix products ``M[p] = U[p]^T V[p]`` (output channels x tiles x
input channels) and the output transform runs once per call. For 5x5 taps and 3x3 tiles
(t = 7) that is 49 multiply-adds per tile and channel pair instead of 225 (4.6x fewer).

Per image: the input (zero-padded) and the output gradient are copied channels-last, every tile
is transformed (vectors over the channels), and tasks of (group, position) add the image's
products to float64 totals (``_simd.outer_product_sums``: blocks of input channels x vectors of
output channels in registers over the tiles). Images are added in order and every total has one
task: the results do not depend on the thread count. The transforms round: the error is a few
times the direct sum's (``tests/test_cpu_winograd_wgrad.py`` bounds it).
"""

from __future__ import annotations

import functools

import numpy as np

from .._divisors import largest_divisor
from .._version import __version__
from . import _generated, _outer, _scratch, _simd, _winograd
from ._winograd import offset, scalar_type_line, separable_transform

#: Gradient tile side (m): F(r x r, 3 x 3) for r-tap kernels.
TILE = 3
#: Interpolation points (and the point at infinity) of F(r, TILE) per kernel side r (kept with
#: the forward's in ``_winograd.POINTS``).
POINTS = {r: _winograd.POINTS[(r, TILE)] for r in (5, 3)}
#: Fewest input and output channels per group: below them the transforms cost more than the
#: products save (against ``_outer`` at batch 8, 3x3: 16 -> 16 on 14x14 0.63x, 32 -> 32 on 28x28
#: 0.78x and on 56x56 0.95x; 64 -> 64 on 14x14 1.25x, on 28x28 1.6x; alexnet_g2 1.6-2.3x).
MIN_CHANNELS = 48
#: Most float64 totals (positions x input channels per group x output channels): 32 MiB. A
#: bigger layer (dense 3x3 from 512 channels on: 6.6M) takes the direct kernels rather than that
#: much memory.
MAX_TOTALS = 1 << 22
#: Most input channels x output vectors per register block (24 sums), within the sums the target
#: keeps in registers (:func:`blocking`).
MAX_BLOCK_CHANNELS, MAX_BLOCK_VECTORS = 6, 4


def transform_matrices(r: int) -> tuple[tuple, tuple, tuple]:
    """(A^T (r x t), G (t x TILE), B^T (t x t)) of F(r, TILE), exact (``_winograd``'s, with the
    gradient tile as the kernel): the r outputs ``y[k] = sum_j g[j] d[j + k]`` of a length-t
    ``d`` and a length-TILE ``g`` are ``A^T ((G g) * (B^T d))``."""
    return _winograd.transform_matrices(r, TILE)


def applies(spec) -> bool:
    """A forward spec at stride 1 with no dilation, square kernels of a side in ``POINTS``, at
    least ``MIN_CHANNELS`` input and output channels per group, output channels a whole number of
    vectors, at most ``MAX_TOTALS`` totals."""
    (kh, kw), lanes = spec.kernel_size, _simd.lanes(spec.dtype)
    if not (spec.batch > 0 and spec.stride == (1, 1) and spec.dilation == (1, 1) and spec.lhs_dilation == (1, 1)
            and kh == kw and kh in POINTS and min(spec.in_per_group, spec.out_per_group) >= MIN_CHANNELS
            and spec.out_per_group % lanes == 0):
        return False
    positions = (kh + TILE - 1) ** 2
    return positions * spec.in_per_group * spec.out_channels <= MAX_TOTALS


def blocking(spec) -> tuple[int, int]:
    """(input channels, output channel vectors) per register block: at most ``MAX_BLOCK_CHANNELS x
    MAX_BLOCK_VECTORS``, and at most the sums the target keeps in registers
    (:func:`nbconv.cpu._outer.block_sums`: 28 with AVX-512, 6 with AVX2), fewer vectors first.
    AVX2's registers hold a quarter of AVX-512's sums: there the 6 x 4 block spilled in its
    loop (on a 2-core Zen 3, alexnet_g2's products took 14.1 ms a weight gradient at batch 8
    against 6.1 for 6 x 1; 3 x 2 10.8, 4 x 1 6.8; dense_64_28 6 x 4 3.0 ms, 4 x 1 1.6)."""
    lanes = _simd.lanes(spec.dtype)
    budget = _outer.block_sums()
    n_vec = largest_divisor(spec.out_per_group // lanes, max(1, min(MAX_BLOCK_VECTORS, budget // MAX_BLOCK_CHANNELS)))
    return largest_divisor(spec.in_per_group, max(1, min(MAX_BLOCK_CHANNELS, budget // n_vec))), n_vec


def _tiles(spec) -> tuple[int, int]:
    oh, ow = spec.out_size
    return -(-oh // TILE), -(-ow // TILE)


_DRIVER = '''

@njit_parallel
def pack(x, gy, n, xcl, gcl):
    """Image n channels-last: xcl[g, py, px, c] = x[n, g * {cin_g} + c, py - {pt}, px - {pl}] for the
    rows and columns some tile reads ({hp} x {wp}), gcl[g, y, x, o] = gy[n, g * {cout_g} + o, y, x]
    ({gh} x {gw}: whole tiles); the positions outside the planes are never written (zeros)."""
    for task in numba.prange({groups} * {in_h}):
        g = task // {in_h}
        iy = task % {in_h}
        py = iy + {pt}
        if py < {hp}:
            for c in range({cin_g}):
                for ix in range({in_w}):
                    px = ix + {pl}
                    if px < {wp}:
                        xcl[_U(((g * {hp} + py) * {wp} + px) * {cin_g} + c)] = x[n, g * {cin_g} + c, iy, ix]
    for task in numba.prange({groups} * {oh}):
        g = task // {oh}
        y = task % {oh}
        for o in range({cout_g}):
            for xx in range({ow}):
                gcl[_U(((g * {gh} + y) * {gw} + xx) * {cout_g} + o)] = gy[n, g * {cout_g} + o, y, xx]


@njit_parallel
def transform(xcl, gcl, u, v):
    """v[g, p, q, c] = (B^T d B)[p] of input tile q, u[g, p, q, o] = (G g G^T)[p] of gradient tile q."""
    for task in numba.prange({groups} * {n_tiles}):
        g = task // {n_tiles}
        q = task % {n_tiles}
        ty = q // {tx_n}
        tx = q % {tx_n}
        xb = ((g * {hp} + ty * {tile}) * {wp} + tx * {tile}) * {cin_g}
        vb = (g * {positions} * {n_tiles} + q) * {cin_g}
        {input_body}
        gb = ((g * {gh} + ty * {tile}) * {gw} + tx * {tile}) * {cout_g}
        ub = (g * {positions} * {n_tiles} + q) * {cout_g}
        {grad_body}


@njit_parallel
def products(u, v, tot):
    """tot[g, p, c, o] += sum over tiles q of u[g, p, q, o] * v[g, p, q, c] (float64)."""
    for task in numba.prange({groups} * {positions}):
        for cb in range(0, {cin_g}, {n_c}):
            for ob in range(0, {cout_g}, {block_o}):
                _sums(u, task * {n_tiles} * {cout_g} + ob, v, task * {n_tiles} * {cin_g} + cb, {n_tiles}, tot,
                      (task * {cin_g} + cb) * {cout_g} + ob)


@njit_parallel
def output_transform(tot, dw):
    """dw[g * {cout_g} + o, c] = A^T M A of the totals M[p] = tot[g, p, c, o] (rounded to dw's dtype once)."""
    for task in numba.prange({groups} * {cin_g}):
        g = task // {cin_g}
        c = task % {cin_g}
        mb = (g * {positions} * {cin_g} + c) * {cout_g}
        {output_body}
'''


def module_source(spec) -> str:
    r = spec.kernel_size[0]
    t = r + TILE - 1
    at, g_mat, bt = transform_matrices(r)
    ty_n, tx_n = _tiles(spec)
    hp, wp = ty_n * TILE + r - 1, tx_n * TILE + r - 1
    gh, gw = ty_n * TILE, tx_n * TILE
    cin_g, cout_g = spec.in_per_group, spec.out_per_group
    n_c, n_vec = blocking(spec)
    lanes = _simd.lanes(spec.dtype)
    n_tiles, positions = ty_n * tx_n, t * t
    # vector loops over channels; in two passes (large tiles), the first stores where the second reads
    input_body = separable_transform(
        f"for c in range({cin_g}):", lambda a, b: f"xcl[_U(xb + {offset((a, wp * cin_g), (b, cin_g))} + c)]",
        lambda i, j: f"v[_U(vb + {offset((i, t * n_tiles * cin_g), (j, n_tiles * cin_g))} + c)]", bt, bt)
    grad_body = separable_transform(
        f"for o in range({cout_g}):", lambda a, b: f"gcl[_U(gb + {offset((a, gw * cout_g), (b, cout_g))} + o)]",
        lambda i, j: f"u[_U(ub + {offset((i, t * n_tiles * cout_g), (j, n_tiles * cout_g))} + o)]", g_mat, g_mat)
    output_body = separable_transform(
        f"for o in range({cout_g}):",
        lambda a, b: f"tot[_U(mb + {offset((a, t * cin_g * cout_g), (b, cin_g * cout_g))} + o)]",
        lambda i, j: f"dw[_U(((g * {cout_g} + o) * {cin_g} + c) * {r * r} + {offset((i, r), (j, 1))})]", at, at,
        mid=lambda a, j: f"tot[_U(mb + {offset((a, t * cin_g * cout_g), (j, cin_g * cout_g))} + o)]")
    what = (f"Winograd weight gradient F({r}x{r}, {TILE}x{TILE}), {cin_g} -> {cout_g} channels per group, "
            f"{n_tiles} tiles per image, blocks of {n_c} input channels x {n_vec} vectors")
    header = _generated.HEADER.format(generator=__name__, version=__version__, what=what) + scalar_type_line(spec.dtype)
    sums = (f"\nfrom nbconv.cpu._simd import outer_product_sums\n\n"
            f"_sums = outer_product_sums(1, 0, {tuple(range(n_c))}, {n_vec}, {cout_g}, 0, 1, {cin_g})\n")
    return header + sums + _generated.fill(_DRIVER,
        groups=spec.groups, cin_g=cin_g, cout_g=cout_g, in_h=spec.in_size[0], in_w=spec.in_size[1],
        pt=spec.padding[0], pl=spec.padding[2], hp=hp, wp=wp, gh=gh, gw=gw, oh=spec.out_size[0], ow=spec.out_size[1],
        n_tiles=n_tiles, tx_n=tx_n, tile=TILE, positions=positions, n_c=n_c, block_o=n_vec * lanes,
        input_body=input_body, grad_body=grad_body, output_body=output_body)


@functools.lru_cache(maxsize=64)
def _module(spec):
    return _generated.load(module_source(spec), "nbconv_winograd_wgrad")


def winograd_weight_grad(x: np.ndarray, gy: np.ndarray, dw: np.ndarray, spec) -> None:
    """``dw`` (C_out, C_in/groups, r, r) = the weight gradient of the forward ``spec`` (C-contiguous
    arrays). Non-finite values spread through their tiles' transforms: the caller checks."""
    r = spec.kernel_size[0]
    t = r + TILE - 1
    ty_n, tx_n = _tiles(spec)
    n_tiles, positions = ty_n * tx_n, t * t
    groups, cin_g, cout_g = spec.groups, spec.in_per_group, spec.out_per_group
    mod = _module(spec)

    def make():
        return (np.zeros(groups * (ty_n * TILE + r - 1) * (tx_n * TILE + r - 1) * cin_g, x.dtype),
                np.zeros(groups * ty_n * TILE * tx_n * TILE * cout_g, x.dtype),
                np.empty(groups * positions * n_tiles * cout_g, x.dtype),
                np.empty(groups * positions * n_tiles * cin_g, x.dtype),
                np.empty(groups * positions * cin_g * cout_g, np.float64))

    # the padding of xcl and gcl stays zero; u and v are overwritten per image, tot per call
    xcl, gcl, u, v, tot = _scratch.reused(("winograd_wgrad", spec), make)
    tot.fill(0.0)
    for n in range(spec.batch):
        mod.pack(x, gy, n, xcl, gcl)
        mod.transform(xcl, gcl, u, v)
        mod.products(u, v, tot)
    mod.output_transform(tot, dw.reshape(-1))
