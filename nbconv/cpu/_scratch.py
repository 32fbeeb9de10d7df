"""Per-thread scratch buffers kept from one call to the next of the same geometry.

The generated kernels pack inputs into zeroed per-thread buffers and write only the pixel
positions, which one geometry fixes: the padding's zeros stay as allocated, call after call (and
already task after task within a call). Allocating and zeroing the buffers again on every call
costs 5-10 us, a tenth of a call on the small standard shapes (mbv2_dw_7: ~100 us), so the
buffers of recent geometries are kept, per Python thread: calls from two threads never share one.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import numpy as np

#: Most bytes of buffers kept per Python thread (the least recently used go first); buffers
#: larger than this are made for their call only. (alexnet_g2's Winograd weight gradient keeps
#: 10 MiB: made afresh, their pages cost ~1 ms of its ~4.)
MAX_KEPT_BYTES = 1 << 25

_local = threading.local()


def _kept() -> OrderedDict:
    kept = getattr(_local, "kept", None)
    if kept is None:
        kept = _local.kept = OrderedDict()
    return kept


def reused(key: Hashable, make: Callable[[], tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """The buffers ``make()`` returned for ``key`` on an earlier call in this Python thread, or
    new ones. ``key`` must fix every size and the layout of what the kernel writes (the spec and
    the thread count do), and the kernel must leave the buffers as reusable as it found them."""
    kept = _kept()
    buffers = kept.get(key)
    if buffers is not None:
        kept.move_to_end(key)
        return buffers
    buffers = make()
    size = sum(b.nbytes for b in buffers)
    if size <= MAX_KEPT_BYTES:
        kept[key] = buffers
        while sum(b.nbytes for bs in kept.values() for b in bs) > MAX_KEPT_BYTES:
            kept.popitem(last=False)
    return buffers


def clear() -> None:
    """Drop the buffers kept for this Python thread."""
    _kept().clear()
