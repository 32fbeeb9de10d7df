"""Rounding of the Winograd CPU path against the direct sum, for each tile size and a few choices of
interpolation points: max |error| / max |exact output| over random float32 convolutions (48 input
channels, exact reference in float64). Run: ``python docs/winograd_error.py``."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from nbconv.cpu import _winograd

CANDIDATES = {
    (4, 3): [(0, 1, -1, 2, -2), (0, 1, -1, Fraction(1, 2), -2)],
    (3, 5): [(0, 1, -1, 2, -2, Fraction(1, 2)), (0, 1, -1, 2, Fraction(-1, 2), Fraction(1, 2))],
}


def direct(x, w, dtype):
    r = w.shape[2]
    oh = x.shape[1] - r + 1
    out = np.zeros((w.shape[0], oh, oh), dtype)
    for a in range(r):
        for b in range(r):
            out += np.einsum("oc,chw->ohw", w[:, :, a, b].astype(dtype), x[:, a:a + oh, b:b + oh].astype(dtype))
    return out


def winograd(x, w, m, r):
    at, g, bt = (np.array(mat, dtype=np.float64).astype(np.float32) for mat in _winograd.transform_matrices(m, r))
    t, oh = m + r - 1, x.shape[1] - r + 1
    u = np.einsum("ia,ocab,jb->ocij", g, w.astype(np.float32), g)
    out = np.zeros((w.shape[0], oh, oh), np.float32)
    for ty in range(0, oh, m):
        for tx in range(0, oh, m):
            v = np.einsum("ia,cab,jb->cij", bt, x[:, ty:ty + t, tx:tx + t].astype(np.float32), bt)
            out[:, ty:ty + m, tx:tx + m] = np.einsum("ia,oab,jb->oij", at, np.einsum("ocij,cij->oij", u, v), at)
    return out


def main() -> None:
    rng = np.random.default_rng(0)
    for (m, r), choices in CANDIDATES.items():
        size = 6 * m + r - 1
        x = rng.standard_normal((48, size, size))
        w = rng.standard_normal((16, 48, r, r)) / np.sqrt(48 * r * r)
        exact = direct(x, w, np.float64)
        scale = np.abs(exact).max()
        print(f"F({m}, {r}): direct float32 {np.abs(direct(x, w, np.float32) - exact).max() / scale:.2e}")
        for points in choices:
            _winograd.POINTS[(m, r)] = points
            _winograd.transform_matrices.cache_clear()
            err = np.abs(winograd(x, w, m, r) - exact).max() / scale
            print(f"  points {', '.join(map(str, points))}: {err:.2e}")


if __name__ == "__main__":
    main()
