"""Launching the kernels without numba-cuda's dispatcher: the same PTX, loaded by CuPy.

numba-cuda's dispatcher costs 50-115 us of host time per launch (argument typing, ctypes
packing, context checks); CuPy's ``RawModule`` launches the same PTX for about 16-29 us
(``docs/launch_paths.py`` on an H200). This path compiles each kernel specialisation once
with Numba (``numba.cuda.compile_ptx`` of the kernel a key names, with its launch bounds: the
code the dispatcher would run), loads it with CuPy, and on each call packs the arguments in
Numba's kernel ABI by hand:

- an array becomes ``meminfo`` (pointer, 0), ``parent`` (pointer, 0), ``nitems`` (int64),
  ``itemsize`` (int64), ``data`` (pointer), then its shape and its strides in bytes (int64 each);
- an integer becomes an int64.

Every field is 8 bytes, so the arguments are one buffer of int64: it goes to the driver's
``cuLaunchKernel`` whole (its ``extra`` argument, ``CU_LAUNCH_PARAM_BUFFER_POINTER``), by CuPy's
compiled binding of it (``cupy.cuda.driver.launchKernel``, else the driver library's through
ctypes), where CuPy's call converts each of a launch's 40-60 parameters to a C value on every call
(13-16 us a launch on an H200's host). Where the driver refuses the launch, or neither binding is
there, the same arguments go through CuPy's call (Python ints, which it passes as int64). Arrays are
typed C-contiguous where they are (Numba then indexes them from their shape) and of any layout
otherwise (from their strides, which may be negative); a strided view (a phase of a transposed
convolution) is a :class:`RawArray` sliced here, without CuPy.

:class:`RawLauncher` takes every launch of an op (``conv2d``, the transposed convolution, the
input, weight and bias gradients) for CuPy arrays unless the environment variable
``NBCONV_CUDA_LAUNCH=numba`` is set (``docs/gpu_check.sh`` runs the CUDA tests both ways;
on an H200 a call costs 21-39 us of host time this way and 260-3100 us through the dispatcher:
``docs/host_cost.py``). Without a GPU the tests check it end to
end: the packed arguments against each kernel's PTX parameter list, and the kernels run under
Numba's simulator from nothing but the packed arguments (``tests/test_cuda_raw_launch.py``).

The public ops go through a :class:`Plan` per op, geometry, layout and device: the launches the
op's code makes, recorded once on stand-ins at symbolic addresses, then replayed with each
call's addresses (validation, launch configuration, views and packing are not redone per call:
a transposed convolution of stride 2 is four launches on sliced views, a tiny one a single launch).
"""

from __future__ import annotations

import array
import ctypes
import ctypes.util
import functools
import math
import os
import re
import sys
import tempfile
from typing import Any, Callable

import numpy as np

#: Launch the kernels through CuPy for CuPy arrays, unless ``NBCONV_CUDA_LAUNCH=numba``.
ENABLED = os.environ.get("NBCONV_CUDA_LAUNCH", "raw").strip().lower() != "numba"

_ENTRY = re.compile(r"\.entry\s+(\S+)\s*\(")
_PARAM = re.compile(r"\.param\s+\.(\w)(\d+)\s+")


def flatten(shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int, ptr: int) -> tuple[int, ...]:
    """One array argument in Numba's kernel ABI (see the module docstring), as Python ints:
    every field is 8 bytes, and CuPy passes a Python int as an int64 (pointers fit in one)."""
    nitems = 1
    for n in shape:
        nitems *= n
    return (0, 0, nitems, itemsize, ptr, *shape, *strides)


class RawArray:
    """A device array as a kernel argument: shape, strides (bytes), item size, data pointer,
    dtype, Numba layout ("C" or "A"), and the object that owns the memory (kept alive);
    ``signature`` is (dtype character, dimensions, layout): what a kernel is compiled for."""

    __slots__ = ("shape", "strides", "itemsize", "ptr", "dtype", "layout", "owner", "signature")

    def __init__(self, shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int, ptr: int, dtype: np.dtype,
                 layout: str, owner: Any = None):
        self.shape, self.strides, self.itemsize, self.ptr = shape, strides, itemsize, ptr
        self.dtype, self.layout, self.owner = dtype, layout, owner
        self.signature = (dtype.char, len(shape), layout)

    def fields(self) -> tuple[int, ...]:
        return flatten(self.shape, self.strides, self.itemsize, self.ptr)

    def __getitem__(self, index: tuple[slice, ...]) -> RawArray:
        """A view by basic slices (steps > 0), one per leading axis; typed "A"."""
        shape, strides, ptr = list(self.shape), list(self.strides), self.ptr
        for axis, sl in enumerate(index):
            if sl == _ALL:
                continue
            start, stop, step = sl.indices(shape[axis])
            count = max(0, -(-(stop - start) // step))
            if count:
                ptr += start * strides[axis]
            shape[axis] = count
            strides[axis] *= step
        return RawArray(tuple(shape), tuple(strides), self.itemsize, ptr, self.dtype, "A", self.owner)

    def one_chunk(self, ndim: int) -> RawArray:
        """This array with a leading axis of length 1 and trailing ones up to ``ndim`` axes
        (strides 0; the layout kept: the new axes have length 1): a gradient's result as the
        partial sums of its only chunk (see ``_arrays.one_chunk_view``)."""
        extra = ndim - 1 - len(self.shape)
        return RawArray((1, *self.shape) + (1,) * extra, (0, *self.strides) + (0,) * extra, self.itemsize,
                        self.ptr, self.dtype, self.layout, self.owner)


_ALL = slice(None)


def view(a: Any, unbatched: bool = False) -> RawArray:
    """A CuPy array (or anything with its ``shape``, ``strides``, ``dtype``, ``data.ptr`` and
    ``flags``) as a :class:`RawArray`; ``unbatched`` adds a leading axis of length 1."""
    shape, strides = a.shape, a.strides
    if unbatched:
        shape, strides = (1,) + shape, (0,) + strides
    return RawArray(shape, strides, a.itemsize, a.data.ptr, a.dtype, "C" if a.flags.c_contiguous else "A", a)


def kernel_params(ptx: str) -> tuple[str, list[int]]:
    """The entry name of ``ptx`` and the byte size of each of its parameters."""
    entry = _ENTRY.search(ptx)
    if entry is None:
        raise ValueError("no .entry in the PTX")
    body = ptx[entry.end():ptx.index(")", entry.end())]
    return entry.group(1), [int(bits) // 8 for _, bits in _PARAM.findall(body)]


def argument_types(signature: tuple) -> tuple:
    """Numba argument types of a launch's ``signature`` (an array's :attr:`RawArray.signature`,
    or None for an integer: int64)."""
    from numba import types

    from .._numba_types import NUMBA_FLOAT

    return tuple(types.int64 if s is None else types.Array(NUMBA_FLOAT[np.dtype(s[0])], s[1], s[2])
                 for s in signature)


def compile_ptx(key, signature: tuple, cc: tuple[int, int]) -> str:
    """PTX of the kernel ``key`` names for the launch ``signature`` on compute capability ``cc``."""
    from ._compile import compile_for

    return compile_for(key, argument_types(signature), cc)


def _function(key, signature: tuple, cc: tuple[int, int]) -> Callable:
    """The CuPy function of the kernel ``key`` names, compiled for ``signature`` on ``cc``,
    loaded on CuPy's current device (a function's handle belongs to the context it was loaded
    in: two devices of one compute capability share the PTX, not the function)."""
    return _loaded(key, signature, cc, _device())


def handle_of(function: Any) -> int:
    """The driver's handle (``CUfunction``) of a loaded function: a CuPy ``RawKernel`` (CuPy 13
    and 14) holds its ``Function`` in ``.kernel``; a ``Function`` (or a test's stand-in) has
    ``.ptr``; 0 where neither is there (the launch then goes through the function's call)."""
    kernel = getattr(function, "kernel", function)
    return int(getattr(kernel, "ptr", 0) or 0)


@functools.lru_cache(maxsize=None)
def _ptx(key, signature: tuple, cc: tuple[int, int]) -> str:
    return compile_ptx(key, signature, cc)


@functools.lru_cache(maxsize=None)
def _loaded(key, signature: tuple, cc: tuple[int, int], device: int) -> Callable:
    ptx = _ptx(key, signature, cc)
    entry, _ = kernel_params(ptx)
    cupy = sys.modules["cupy"]
    with tempfile.TemporaryDirectory() as tmp:  # RawModule takes PTX from a file
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        module = cupy.RawModule(path=path)
        return module.get_function(entry)


_CC: dict[int, tuple[int, int]] = {}


def _device() -> int:
    """CuPy's current device (its number)."""
    return sys.modules["cupy"].cuda.runtime.getDevice()


def _compute_capability() -> tuple[int, int]:
    cupy = sys.modules["cupy"]
    device = _device()
    cc = _CC.get(device)
    if cc is None:
        text = cupy.cuda.Device(device).compute_capability  # "90"
        cc = _CC[device] = (int(text[:-1]), int(text[-1]))
    return cc


def pack(args: tuple, pointers: list | None = None) -> tuple[tuple, list]:
    """(signature, packed arguments) of a launch's arguments (:class:`RawArray` or int): each
    array as :func:`flatten` lays it out, each int as itself; the position of each array's data
    pointer in the packed arguments is appended to ``pointers`` where given."""
    signature, packed = [], []
    for a in args:
        if type(a) is RawArray:
            signature.append(a.signature)
            if pointers is not None:
                pointers.append(len(packed) + 4)
            packed += (0, 0, math.prod(a.shape), a.itemsize, a.ptr)
            packed += a.shape
            packed += a.strides
        else:
            signature.append(None)
            packed.append(a)
    return tuple(signature), packed


#: ``cuLaunchKernel``'s ``extra`` keys: the parameters as one buffer, its size, the end.
CU_LAUNCH_PARAM_END, CU_LAUNCH_PARAM_BUFFER_POINTER, CU_LAUNCH_PARAM_BUFFER_SIZE = 0, 1, 2


def driver_launch_function(lib: Any) -> Callable[..., int]:
    """``launch(function, gx, gy, gz, bx, by, bz, stream, extra) -> result code`` (0: launched,
    every argument an int) by the ``cuLaunchKernel`` of the driver library ``lib`` (a
    ``ctypes.CDLL``), called with the pointers as ``ctypes.c_void_p`` and the sizes as ints,
    without ``argtypes`` (ctypes then checks and converts less per argument)."""
    f = lib.cuLaunchKernel
    f.restype = ctypes.c_int
    c_void_p = ctypes.c_void_p

    def launch(function: int, gx: int, gy: int, gz: int, bx: int, by: int, bz: int, stream: int, extra: int) -> int:
        return f(c_void_p(function), gx, gy, gz, bx, by, bz, 0, c_void_p(stream), None, c_void_p(extra))

    return launch


def cupy_launch_function(driver: Any) -> Callable[..., int] | None:
    """The same ``launch`` by CuPy's own binding of ``cuLaunchKernel`` (``driver`` is
    ``cupy.cuda.driver``: ``launchKernel``, compiled, takes the arguments as C integers and
    raises ``CUDADriverError`` where the driver refuses), or None where CuPy has none. A launch
    through ctypes converts its 11 arguments one by one (2.6 us a call on a 2-core Zen 3 VM,
    ``python docs/host_cost.py --offline``)."""
    bound = getattr(driver, "launchKernel", None)
    if not callable(bound):
        return None
    refused = getattr(driver, "CUDADriverError", RuntimeError)

    def launch(function: int, gx: int, gy: int, gz: int, bx: int, by: int, bz: int, stream: int, extra: int) -> int:
        try:
            bound(function, gx, gy, gz, bx, by, bz, 0, stream, 0, extra)
        except refused:
            return 1
        return 0

    return launch


@functools.lru_cache(maxsize=1)
def _driver_launch() -> Callable[..., int] | None:
    """How to launch with one parameter buffer: CuPy's binding of ``cuLaunchKernel``, else the
    driver library's through ctypes, else None (CuPy's call then takes every launch)."""
    cupy_driver = getattr(getattr(sys.modules.get("cupy"), "cuda", None), "driver", None)
    launch = cupy_launch_function(cupy_driver) if cupy_driver is not None else None
    if launch is not None:
        return launch
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll", ctypes.util.find_library("cuda")):
        if name:
            try:
                return driver_launch_function(ctypes.CDLL(name))
            except (OSError, AttributeError):
                continue
    return None


#: After the parameters in a launch's buffer: their size in bytes, then ``extra`` (5 entries).
_TAIL = (0, CU_LAUNCH_PARAM_BUFFER_POINTER, 0, CU_LAUNCH_PARAM_BUFFER_SIZE, 0, CU_LAUNCH_PARAM_END)


def parameter_buffer(packed: list | tuple) -> array.array:
    """One allocation for a launch: ``packed`` (8-byte values), their size in bytes, then the
    ``extra`` list (its two pointers set by :func:`extra_pointer`, once the buffer is where it
    stays)."""
    n = len(packed)
    buf = array.array("q", packed)
    buf.extend(_TAIL)
    buf[n] = 8 * n  # the size, at addr + 8 n
    return buf


def extra_pointer(buf: array.array, n: int) -> int:
    """Points the ``extra`` list of ``buf`` (:func:`parameter_buffer` of ``n`` values) at its
    parameters and their size; the list's address, ``cuLaunchKernel``'s ``extra``."""
    addr = buf.buffer_info()[0]
    buf[n + 2] = addr  # extra = (BUFFER_POINTER, addr, BUFFER_SIZE, addr + 8 n, END) from n + 1
    buf[n + 4] = addr + 8 * n
    return addr + 8 * (n + 1)


def _dims(grid: tuple, block: tuple) -> tuple[int, int, int, int, int, int]:
    """A launch's grid and block as the driver takes them, three sizes each."""
    return grid + (1,) * (3 - len(grid)) + block + (1,) * (3 - len(block))


def launch_with_buffer(launch: Callable[..., int], function_ptr: int, grid: tuple, block: tuple, stream_ptr: int,
                       packed: list | tuple) -> int:
    """Launch through ``launch`` (:func:`driver_launch_function`'s or
    :func:`cupy_launch_function`'s) with ``packed`` (8-byte values) as one parameter buffer
    (:func:`parameter_buffer`); the driver's result code (0: launched)."""
    buf = parameter_buffer(packed)
    return launch(function_ptr, *_dims(grid, block), stream_ptr, extra_pointer(buf, len(packed)))


def _as_tuple(size: int | tuple) -> tuple:
    """A grid or block size as a tuple (CuPy's call takes tuples)."""
    return size if type(size) is tuple else (size,)


class RawLauncher:
    """The launches of one op without numba-cuda's dispatcher, on CuPy's current stream:
    arrays as :class:`RawArray`, scratch from CuPy's memory pool (stream-ordered), each
    kernel's CuPy function compiled once per key, signature and compute capability, launched
    by the driver with one parameter buffer (:func:`launch_with_buffer`), else by CuPy."""

    def __init__(self, empty: Callable | None = None):
        self._empty = empty
        self._plans: dict = {}

    def array(self, a: Any, unbatched: bool = False) -> RawArray:
        return view(a, unbatched)

    def scratch(self, shape: tuple[int, ...], dtype) -> RawArray:
        empty = self._empty or sys.modules["cupy"].empty
        return view(empty(shape, dtype))

    def __call__(self, key, grid, block, *args) -> None:
        signature, packed = pack(args)
        function = _function(key, signature, _compute_capability())
        grid, block = _as_tuple(grid), _as_tuple(block)
        launch = _driver_launch()
        if launch is not None:
            stream = sys.modules["cupy"].cuda.get_current_stream().ptr
            if launch_with_buffer(launch, handle_of(function), grid, block, stream, packed) == 0:
                return
        function(grid, block, tuple(packed))  # CuPy's call: its own checks, and its error if it fails too

    def planned(self, op: Callable, spec, arrays: tuple, out: Any) -> None:
        """``op(spec, launcher, *arrays, out)`` (an op's launch code: ``_launch.forward``,
        ``weight_grad`` or ``bias_grad``) by its :class:`Plan` for these arrays' shapes and
        strides on the current device, recorded on the first such call."""
        key = (op, spec, _device(), out.shape, out.strides,
               tuple([None if a is None else (a.shape, a.strides) for a in arrays]))
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= _PLANS_SIZE:
                self._plans.clear()
            plan = self._plans[key] = Plan.record(op, spec, arrays, out)
        plan.launch((*arrays, out), self._empty or sys.modules["cupy"].empty)


#: Plans kept per launcher (a network's layers and ops: each geometry, each op, each layout).
_PLANS_SIZE = 1024


#: While a plan is recorded, array ``i`` (the op's arrays, its output, then the scratch it asks
#: for) is at the symbolic address ``(i + 1) << _TAG_BITS``; a view's offset (a phase's slice) is
#: in the low bits.
_TAG_BITS = 48


class _Layout:
    """What an op's launch code reads of array ``index`` while a plan is recorded: shape,
    strides (bytes), dtype, item size and contiguity, no memory."""

    __slots__ = ("shape", "strides", "dtype", "itemsize", "c_contiguous", "index")

    def __init__(self, shape: tuple[int, ...], strides: tuple[int, ...], dtype: np.dtype, c_contiguous: bool,
                 index: int):
        self.shape, self.strides, self.dtype, self.itemsize = tuple(shape), tuple(strides), dtype, dtype.itemsize
        self.c_contiguous, self.index = c_contiguous, index

    @classmethod
    def of(cls, a: Any, index: int) -> _Layout:
        return cls(a.shape, a.strides, a.dtype, a.flags.c_contiguous, index)

    @classmethod
    def contiguous(cls, shape: tuple[int, ...], dtype: np.dtype, index: int) -> _Layout:
        strides, step = [], dtype.itemsize
        for n in reversed(shape):
            strides.append(step)
            step *= max(n, 1)
        return cls(shape, tuple(reversed(strides)), dtype, True, index)


class _Recorder:
    """A launcher for :meth:`Plan.record`: the op's own launch code runs on :class:`_Layout`
    stand-ins at symbolic addresses (array ``i`` at ``(i + 1) << _TAG_BITS``, a view's offset in
    the low bits), and each launch is kept (its function, grid, block, packed arguments, and
    which of them are addresses of which array at which offset), none made."""

    def __init__(self, n_arrays: int):
        self.n_arrays = n_arrays
        self.scratch_specs: list[tuple[tuple[int, ...], Any]] = []
        self.steps: list[tuple] = []

    @staticmethod
    def array(a: _Layout, unbatched: bool = False) -> RawArray:
        shape, strides = a.shape, a.strides
        if unbatched:
            shape, strides = (1,) + shape, (0,) + strides
        return RawArray(shape, strides, a.itemsize, (a.index + 1) << _TAG_BITS, a.dtype,
                        "C" if a.c_contiguous else "A")

    def scratch(self, shape: tuple[int, ...], dtype) -> RawArray:
        self.scratch_specs.append((shape, dtype))
        return self.array(_Layout.contiguous(shape, np.dtype(dtype), self.n_arrays + len(self.scratch_specs) - 1))

    def __call__(self, key, grid, block, *args) -> None:
        pointers: list[int] = []
        signature, packed = pack(args, pointers)
        slots = []  # (position in the packed arguments, array index, offset in bytes)
        for at in pointers:
            tag, offset = divmod(packed[at], 1 << _TAG_BITS)
            slots.append((at, tag - 1, offset))
        function = _function(key, signature, _compute_capability())
        self.steps.append((function, _as_tuple(grid), _as_tuple(block), packed, tuple(slots)))


class Plan:
    """The launches of one op for one geometry, layout and device, ready to replay: per launch,
    the function, grid, block and its parameter buffer (the packed arguments and the ``extra``
    tail of :func:`launch_with_buffer`), where only the addresses change from call to call. A
    call costs the scratch allocations, and per launch a copy of the buffer, its addresses set
    and the driver call; the validation of the spec, the launch configuration, the views and
    the packing were done once, by the same code as an unplanned call
    (:meth:`RawLauncher.__call__`)."""

    __slots__ = ("scratch", "steps")

    def __init__(self, scratch: tuple, steps: tuple):
        self.scratch, self.steps = scratch, steps

    @classmethod
    def record(cls, op: Callable, spec, arrays: tuple, out: Any) -> Plan:
        layouts = [None if a is None else _Layout.of(a, i) for i, a in enumerate((*arrays, out))]
        recorder = _Recorder(len(layouts))
        op(spec, recorder, *layouts)
        steps = []
        for function, grid, block, packed, slots in recorder.steps:
            handle = handle_of(function)
            steps.append((function, handle, grid, block, _dims(grid, block), parameter_buffer(packed), len(packed),
                          slots))
        return cls(tuple(recorder.scratch_specs), tuple(steps))

    def launch(self, arrays: tuple, empty: Callable) -> None:
        """The recorded launches on ``arrays`` (the op's, then its output), with fresh scratch
        from ``empty``, on CuPy's current stream."""
        owners = [empty(shape, dtype) for shape, dtype in self.scratch]
        pointers = [0 if a is None else a.data.ptr for a in arrays] + [a.data.ptr for a in owners]
        driver = _driver_launch()
        stream = sys.modules["cupy"].cuda.get_current_stream().ptr if driver is not None else 0
        for function, function_ptr, grid, block, dims, template, n, slots in self.steps:
            buf = array.array("q", template)
            for at, index, offset in slots:
                buf[at] = pointers[index] + offset
            if driver is not None and driver(function_ptr, *dims, stream, extra_pointer(buf, n)) == 0:
                continue
            function(grid, block, tuple(buf[:n]))  # CuPy's call, as RawLauncher.__call__ falls back to
