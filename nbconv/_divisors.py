"""Divisor helpers, written once: the valid ``groups`` of a channel pair (``nbconv.explain``) and
the block sizes of the CPU kernels (whole blocks, no remainder)."""

from __future__ import annotations

import math


def divisors(n: int) -> list[int]:
    """The divisors of ``n`` >= 1, ascending."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def largest_divisor(n: int, most: int) -> int:
    """The largest divisor of ``n`` >= 1 that is at most ``most`` (1 when ``most`` < 1)."""
    return max(d for d in range(1, max(1, min(n, most)) + 1) if n % d == 0)
