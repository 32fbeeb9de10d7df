"""Pytest setup shared by all tests (at the root so it runs before anything imports Numba).

Without a usable CUDA GPU the CUDA kernels run under Numba's CUDA simulator: the switch
``NUMBA_ENABLE_CUDASIM=1`` must be set before ``numba`` is imported, so it is set here.
Set ``NUMBA_ENABLE_CUDASIM`` yourself (0 or 1) to override the detection.
"""

import ctypes
import os
import sys


def _cuda_gpu_present() -> bool:
    """True when the CUDA driver loads and reports at least one device (no Numba, no CuPy)."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        return lib.cuInit(0) == 0 and lib.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0
    return False


if "NUMBA_ENABLE_CUDASIM" not in os.environ:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "0" if _cuda_gpu_present() else "1"

#: The interpreter's thread switch interval under the simulator (seconds; Python's default is
#: 0.005). The simulator runs each CUDA thread of a block as a Python thread, and the launching
#: thread polls them in a loop that holds the GIL for a whole interval at a time, while they wait
#: for it at every ``syncthreads``. A 0.1 ms interval made a small weight gradient (tests/cases.py
#: CASES[1], 12 blocks of 32 threads) 17x faster: 20.2 s -> 1.2 s, same results
#: (``python docs/simulator_switch_interval.py``).
SIMULATOR_SWITCH_INTERVAL = 1e-4


def _simulator_shared_arrays_under_a_lock():
    """numba-cuda's simulator (0.30.4) keys a block's ``cuda.shared.array`` on its call site and
    creates it at the first thread's call, a look-up then an insert with no lock: where the
    interpreter switches threads between the two, threads of one block get arrays of their own
    and the kernel reads values no thread of its block wrote (two of the suite's tests failed so
    at a 0.1 ms switch interval, and a small conv2d in 2-3 runs of 10 at 0.01 ms; rare, yet
    possible, at Python's default). The same look-up, under a lock (tests/test_simulator_setup.py).
    Dynamic shared memory (size 0) is one buffer: unchanged."""
    import threading

    import numpy as np
    from numba.cuda.simulator import kernelapi

    original = kernelapi.FakeCUDAShared.array
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:
            return original(self, shape, dtype, alignment)
        caller = sys._getframe(1)
        site = (caller.f_code.co_filename, caller.f_lineno)
        with lock:
            res = self._allocations.get(site)
            if res is None:
                if isinstance(dtype, kernelapi.types.Type):
                    dtype = kernelapi.numpy_support.as_dtype(dtype)
                res = self._allocations[site] = np.empty(shape, dtype)
        return res

    kernelapi.FakeCUDAShared.array = array


if os.environ["NUMBA_ENABLE_CUDASIM"] == "1":
    sys.setswitchinterval(SIMULATOR_SWITCH_INTERVAL)
    _simulator_shared_arrays_under_a_lock()


#: Test files that spend minutes in one test (subprocesses, full-size shapes, ASV): run first, so
#: that with ``-n 2 --dist loadfile`` one worker takes them while the other takes the rest,
#: instead of one of them starting last.
SLOW_FIRST = ("test_cuda_compile.py", "test_asv_suite.py", "test_conv2d.py", "test_cpu_targets.py", "test_install.py")


def pytest_configure(config):
    # pytest-xdist's loadfile hands out the files with the most tests first unless told not to;
    # keep the order below instead
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.path.name
        return SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=rank)  # stable: the order within a file and among the others is kept
