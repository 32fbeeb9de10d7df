"""Pytest setup shared by all tests (at the root so it runs before anything imports Numba).

Without a usable CUDA GPU the CUDA kernels run under Numba's CUDA simulator: the switch
``NUMBA_ENABLE_CUDASIM=1`` must be set before ``numba`` is imported, so it is set here.
Set ``NUMBA_ENABLE_CUDASIM`` yourself (0 or 1) to override the detection.
"""

import ctypes
import os


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
