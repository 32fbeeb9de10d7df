"""The root ``conftest.py``'s set-up of Numba's CUDA simulator (where it is on): the threads of a
block share their ``cuda.shared.array`` however the interpreter switches between them."""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest
from cases import SIMULATOR

pytestmark = pytest.mark.skipif(not SIMULATOR, reason="sets up Numba's CUDA simulator, which is off here")


def test_a_short_switch_interval():
    assert sys.getswitchinterval() <= 1e-3


def test_threads_of_a_block_get_one_shared_array(monkeypatch):
    """Two threads ask for the array of one call site at once, and creating it is slow (so each
    sees none yet): both get the same array. numba-cuda 0.30.4's look-up and insert, without a
    lock, gave each one of its own."""
    from numba.cuda.simulator import kernelapi

    real_empty = np.empty

    def slow_empty(*args, **kwargs):
        time.sleep(0.05)
        return real_empty(*args, **kwargs)

    monkeypatch.setattr(np, "empty", slow_empty)
    shared = kernelapi.FakeCUDAShared(0)
    start, got = threading.Barrier(2), []

    def block_thread():
        start.wait()
        got.append(shared.array((4,), np.float32))  # one call site for both threads

    threads = [threading.Thread(target=block_thread) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 2 and got[0] is got[1]
    assert got[0].shape == (4,) and got[0].dtype == np.float32
