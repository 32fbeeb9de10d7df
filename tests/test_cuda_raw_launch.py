"""The kernels' launch through CuPy (``NBCONV_CUDA_LAUNCH=raw``, :mod:`nbconv.cuda._raw`), checked
without a GPU, for every op and every kind of launch (plane, tiles, the tiled kernel, phases of
a transposed convolution, the reductions and their finish pass):

- the hand-packed arguments (Python ints, which CuPy passes as int64) match the compiled PTX's
  parameter list (count, and 8 bytes each), compiled for real for the signature the launcher
  asks for;
- under Numba's simulator the kernels run from nothing but the packed arguments (a stand-in for
  CuPy's function rebuilds each array from its pointer, shape and strides as the kernel would,
  indexing a "C" array from its shape alone) and give bit for bit the dispatcher's result;
- the Python cost of a call, with the driver call replaced, is measured by ``python
  docs/host_cost.py --offline``.

On a GPU, ``docs/gpu_check.sh`` runs the CUDA tests through this path as well."""

from __future__ import annotations

import ctypes
import dataclasses
import math
import os
import subprocess
import sys
import types

import numpy as np
import pytest
from cases import CUPY, SIMULATOR

pytestmark = pytest.mark.cuda


class FakeCupyArray:
    """What the raw launcher reads of a CuPy array: shape, strides, itemsize, dtype, pointer,
    flags; :meth:`wrapping` a NumPy array points at its memory (for the simulator)."""

    def __init__(self, shape, dtype, strides=None, ptr=4096):
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.itemsize = self.dtype.itemsize
        contiguous = np.empty(shape, dtype).strides
        self.strides = tuple(strides) if strides is not None else contiguous
        self.data = types.SimpleNamespace(ptr=ptr)
        self.flags = types.SimpleNamespace(c_contiguous=self.strides == contiguous or 0 in self.shape)
        self.__cuda_array_interface__ = {"shape": self.shape, "typestr": self.dtype.str, "data": (ptr, False),
                                         "strides": self.strides, "version": 3}
        self.base = None

    @classmethod
    def wrapping(cls, a: np.ndarray) -> FakeCupyArray:
        fake = cls(a.shape, a.dtype, a.strides, a.__array_interface__["data"][0])
        fake.flags.c_contiguous = a.flags.c_contiguous
        fake.base = a
        return fake


def fake_empty(shape, dtype):
    return FakeCupyArray.wrapping(np.full(shape, np.nan, dtype))


# ----------------------------------------------------------------------------- packing, slicing

def test_flatten_follows_numbas_array_abi():
    from nbconv.cuda._raw import flatten

    got = flatten((2, 3), (12, 4), 4, 1234)
    assert got == (0, 0, 6, 4, 1234, 2, 3, 12, 4)  # meminfo, parent, nitems, itemsize, data, shape, strides
    assert all(type(v) is int for v in got)  # CuPy passes each as an int64


def test_pack_lays_out_arrays_as_flatten_and_ints_as_themselves():
    from nbconv.cuda._raw import RawArray, pack

    a = RawArray((2, 3), (12, 4), 4, 1234, np.dtype(np.float32), "C")
    b = RawArray((5,), (-8,), 8, 4096, np.dtype(np.float64), "A")
    signature, packed = pack((a, 7, b, -1))
    assert signature == (("f", 2, "C"), None, ("d", 1, "A"), None)
    assert list(packed) == [*a.fields(), 7, *b.fields(), -1] and all(type(v) is int for v in packed)


def test_kernel_params_reads_the_entry_and_parameter_sizes():
    from nbconv.cuda._raw import kernel_params

    ptx = ".visible .entry _Zfoo(\n .param .u64 _Zfoo_param_0,\n .param .b32 _Zfoo_param_1\n)\n{ ret; }"
    assert kernel_params(ptx) == ("_Zfoo", [8, 4])


def test_view_types_contiguous_arrays_c_and_others_a():
    from nbconv.cuda._raw import view

    a = np.zeros((2, 3, 4, 5), np.float32)
    assert view(FakeCupyArray.wrapping(a)).signature == ("f", 4, "C")
    assert view(FakeCupyArray.wrapping(a[:, :, :, ::2])).signature == ("f", 4, "A")
    assert view(FakeCupyArray.wrapping(a.transpose(0, 1, 3, 2))).signature == ("f", 4, "A")
    three = view(FakeCupyArray.wrapping(a[0]), unbatched=True)  # a leading axis of 1: still C
    assert three.shape == (1, 3, 4, 5) and three.strides == (0,) + a[0].strides and three.layout == "C"


@pytest.mark.parametrize("index", [
    (slice(None), slice(None), slice(1, None, 2), slice(0, None, 3)),
    (slice(None), slice(None), slice(2, 3), slice(None, None, 2)),
    (slice(1, 2), slice(None, None, 2)),
    (slice(None), slice(None), slice(5, None, 2), slice(None)),  # empty
])
def test_raw_array_slices_like_numpy(index):
    from nbconv.cuda._raw import view

    a = np.arange(2 * 3 * 5 * 7, dtype=np.float64).reshape(2, 3, 5, 7)[:, :, :, ::-1]  # negative strides too
    got = view(FakeCupyArray.wrapping(a))[index]
    want = a[index]
    assert got.shape == want.shape and got.layout == "A"
    if want.size:  # (NumPy leaves the stride of an empty axis unscaled)
        assert got.strides == want.strides and got.ptr == want.__array_interface__["data"][0]


# ------------------------------------------------------- every kind of launch, as the ops make them

def _dev(a):
    """A device-array stand-in for validation (a CUDA kind: float16 allowed)."""
    return None if a is None else FakeCupyArray.wrapping(a)


def _conv(x_shape, w_shape, bias, dtype=np.float32, x_view=None, **kw):
    """conv2d: (spec, op name, arrays) with the input made non-contiguous by ``x_view``."""
    from nbconv._spec import conv2d_spec

    rng = np.random.default_rng(1)
    x = rng.standard_normal(x_shape).astype(dtype)
    if x_view is not None:
        x = x_view(x)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype) if bias else None
    return conv2d_spec(_dev(x), _dev(w), _dev(b), **kw), "forward", (x, w, b)


def _transpose(x_shape, w_shape, bias, dtype=np.float32, **kw):
    from nbconv._spec import conv_transpose2d_spec

    rng = np.random.default_rng(2)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[1] * kw.get("groups", 1)).astype(dtype) if bias else None
    return conv_transpose2d_spec(_dev(x), _dev(w), _dev(b), **kw), "forward", (x, w, b)


def _input_grad(x_shape, w_shape, dtype=np.float32, **kw):
    from nbconv._spec import conv2d_input_spec, conv2d_spec

    rng = np.random.default_rng(3)
    w = rng.standard_normal(w_shape).astype(dtype)
    fwd = conv2d_spec(_dev(np.zeros(x_shape, dtype)), _dev(w), None, **kw)
    gy = rng.standard_normal(fwd.output_shape).astype(dtype)
    return conv2d_input_spec(x_shape, _dev(w), _dev(gy), **kw), "forward", (gy, w, None)


def _weight_grad(x_shape, w_shape, dtype=np.float32, **kw):
    from nbconv._spec import conv2d_spec, conv2d_weight_spec

    rng = np.random.default_rng(4)
    x = rng.standard_normal(x_shape).astype(dtype)
    fwd = conv2d_spec(_dev(x), _dev(np.zeros(w_shape, dtype)), None, **kw)
    gy = rng.standard_normal(fwd.output_shape).astype(dtype)
    return conv2d_weight_spec(_dev(x), w_shape, _dev(gy), **kw), "weight_grad", (x, gy)


def _bias_grad(gy_shape, dtype=np.float32):
    from nbconv._spec import conv2d_bias_spec

    gy = np.random.default_rng(5).standard_normal(gy_shape).astype(dtype)
    return conv2d_bias_spec(_dev(gy)), "bias_grad", (gy,)


def _launch_kind(spec, op):
    """Which kernels ``op`` launches for ``spec``, by name."""
    from nbconv.cuda import _launch

    if op == "bias_grad":
        return "pairs"
    if op == "weight_grad":
        return "weight tiles" if _launch.tile_reduce_launch(spec) else "pairs"
    if _launch.phase_launches(spec) if spec.lhs_dilation != (1, 1) else None:
        return "phases"
    return {"ConvTileLaunch": "conv tiles", "PlaneLaunch": "plane", "LaunchConfig": "tiled"}[
        type(_launch.forward_launch_config(spec)).__name__]


def _op(op):
    """The launch code of ``op`` ("forward", "weight_grad" or "bias_grad")."""
    from nbconv.cuda import _launch

    return {"forward": _launch.forward, "weight_grad": _launch.weight_grad, "bias_grad": _launch.bias_grad}[op]


def _run(spec, op, run, arrays, out, planned=False):
    """``op`` on ``arrays`` into ``out`` through the launcher ``run``: its launch code directly,
    or (``planned``) by the plan the raw launcher records and replays, as the public ops do."""
    if planned:
        run.planned(_op(op), spec, tuple(arrays), out)
        return out
    return _op(op)(spec, run, *arrays, out)


# Under the simulator the tile kernels take layers from 8 output channels per group (the
# ``small_tiles`` fixture); compiled for real, from their real thresholds.
SIM_CASES = {
    "conv2d depthwise, bias": lambda: _conv((2, 4, 7, 6), (4, 1, 3, 3), True, padding=1, groups=4),
    "conv2d unbatched, stride 2": lambda: _conv((4, 9, 9), (8, 2, 3, 3), False, stride=2, groups=2),
    "conv2d strided input, float64": lambda: _conv((1, 4, 6, 12), (4, 2, 2, 3), True, np.float64,
                                                   x_view=lambda x: x[:, :, :, ::2], groups=2, dilation=(1, 2)),
    "conv2d float16": lambda: _conv((1, 2, 5, 5), (4, 1, 3, 3), True, np.float16, padding="same", groups=2),
    "conv2d by tiles": lambda: _conv((1, 16, 4, 4), (16, 8, 3, 3), True, padding="same", groups=2),
    "transposed 1x1 stride 2 (tiled)": lambda: _transpose((1, 4, 3, 4), (4, 2, 1, 1), False, stride=2, groups=2),
    "transposed stride 2 (phases)": lambda: _transpose((2, 4, 4, 5), (4, 1, 3, 3), True, stride=2, padding=1,
                                                       output_padding=1, groups=4),
    "input gradient": lambda: _input_grad((2, 4, 6, 6), (8, 2, 3, 3), padding=1, groups=2),
    "weight gradient, pairs": lambda: _weight_grad((1, 4, 5, 6), (4, 1, 2, 2), padding=1, groups=4),
    "weight gradient, tiles": lambda: _weight_grad((1, 8, 5, 5), (32, 2, 3, 3), padding="same", groups=4,
                                                   dilation=2),
    "weight gradient, unbatched float64": lambda: _weight_grad((4, 6, 6), (4, 1, 2, 2), np.float64, groups=4),
    "bias gradient": lambda: _bias_grad((2, 4, 5, 3)),
    "bias gradient, unbatched": lambda: _bias_grad((3, 4, 4)),
}
SIM_KINDS = {"conv2d depthwise, bias": "plane", "conv2d by tiles": "conv tiles",
             "transposed 1x1 stride 2 (tiled)": "tiled", "transposed stride 2 (phases)": "phases",
             "weight gradient, pairs": "pairs", "weight gradient, tiles": "weight tiles", "bias gradient": "pairs"}


@pytest.fixture
def small_tiles(monkeypatch):
    from nbconv.cuda import _launch

    monkeypatch.setattr(_launch, "CONV_TILES_MIN_OUT", 8)
    monkeypatch.setattr(_launch, "CONV_TILES_MIN_TERMS", 8)
    monkeypatch.setattr(_launch, "PHASES_MIN_MACS", 0)  # and small strided ones the phases
    _launch.forward_launch_config.cache_clear()
    _launch.phase_launches.cache_clear()
    yield
    _launch.forward_launch_config.cache_clear()
    _launch.phase_launches.cache_clear()


def simulated_function(key, signature, cc):
    """A stand-in for the CuPy function of ``key``: it rebuilds each argument from the packed
    ints alone, as the compiled kernel reads them (Numba's ABI; a "C" array indexed from its
    shape, its strides ignored), and runs the kernel under the simulator."""
    from numba import cuda
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    from nbconv.cuda._kernels import kernel_of

    def launch(grid, block, packed):
        assert all(type(v) is int for v in packed)
        args, i = [], 0
        for s in signature:
            if s is None:
                args.append(packed[i])
                i += 1
                continue
            dtype, ndim = np.dtype(s[0]), s[1]
            meminfo, parent, nitems, itemsize, ptr = packed[i:i + 5]
            shape, strides = packed[i + 5:i + 5 + ndim], packed[i + 5 + ndim:i + 5 + 2 * ndim]
            i += 5 + 2 * ndim
            assert (meminfo, parent, itemsize) == (0, 0, dtype.itemsize) and nitems == int(np.prod(shape))
            iface = {"shape": shape, "typestr": dtype.str, "data": (ptr, False), "version": 3,
                     "strides": None if s[2] == "C" else strides}
            args.append(FakeCUDAArray(np.asarray(types.SimpleNamespace(__array_interface__=iface))))
        assert i == len(packed)
        kernel_of(key)[grid, block, cuda.default_stream()](*args)

    return launch


@pytest.mark.skipif(not SIMULATOR, reason="runs the kernels under Numba's simulator")
@pytest.mark.parametrize("planned", [False, True], ids=["direct", "planned"])
@pytest.mark.parametrize("case", list(SIM_CASES))
def test_kernels_run_from_the_packed_arguments_alone(case, planned, small_tiles, monkeypatch):
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    from nbconv.cuda import _launch, _raw

    spec, op, arrays = SIM_CASES[case]()
    if case in SIM_KINDS:
        assert _launch_kind(spec, op) == SIM_KINDS[case]
    # the dispatcher's result (the simulator's device arrays, strides kept), every output first NaN
    want = np.full(spec.output_shape, np.nan, spec.dtype)
    _run(spec, op, _launch.NumbaLauncher(spec.kind), [None if a is None else FakeCUDAArray(a) for a in arrays],
         FakeCUDAArray(want))
    assert np.isfinite(want).all()
    # the raw launch, from the packed arguments
    monkeypatch.setattr(_raw, "_function", simulated_function)
    monkeypatch.setattr(_raw, "_compute_capability", lambda: (9, 0))
    monkeypatch.setattr(_raw, "_driver_launch", lambda: None)  # CuPy's call (the stand-in)
    monkeypatch.setattr(_raw, "_device", lambda: 0)
    out = np.full(spec.output_shape, np.nan, spec.dtype)
    fakes = [None if a is None else FakeCupyArray.wrapping(a) for a in arrays]
    run = _raw.RawLauncher(empty=fake_empty)
    if planned:  # a plan recorded on other arrays of the same layout, then replayed on these
        others = [None if a is None else FakeCupyArray.wrapping(np.full_like(a, np.nan)) for a in arrays]
        _run(spec, op, run, others, fake_empty(spec.output_shape, spec.dtype), planned=True)
    _run(spec, op, run, fakes, FakeCupyArray.wrapping(out), planned=planned)
    assert np.isfinite(out).all(), "an output the raw launch did not write"
    np.testing.assert_array_equal(out, want)


def _on_gpu(a):
    """A CuPy copy of ``a`` with its strides (the one strided case: every other column of a
    contiguous array)."""
    import cupy

    if a is None or a.flags.c_contiguous:
        return None if a is None else cupy.asarray(a)
    g = cupy.asarray(a.base)[:, :, :, ::2]
    assert g.strides == a.strides and np.array_equal(cupy.asnumpy(g), a)
    return g


@pytest.mark.skipif(not CUPY or SIMULATOR, reason="needs CuPy and a GPU")
@pytest.mark.parametrize("case", list(SIM_CASES) + ["conv tiles", "phases by tiles"])
def test_raw_launch_matches_the_dispatcher_on_a_gpu(case):
    """On a GPU: every kind of launch through CuPy and the driver gives the dispatcher's result
    on CuPy arrays, directly and by a plan, recorded and replayed (the same PTX; outputs first
    NaN, so a missed one shows)."""
    import cupy

    from nbconv._arrays import CUPY as CUPY_KIND
    from nbconv.cuda import _launch, _raw

    make = {"conv tiles": REAL_CASES["conv tiles"], "phases by tiles": REAL_CASES["phases by tiles"]}.get(
        case, SIM_CASES.get(case))
    spec, op, arrays = make()
    results = []
    raw = _raw.RawLauncher()
    for run, planned in ((_launch.NumbaLauncher(CUPY_KIND), False), (raw, False), (raw, True), (raw, True)):
        out = cupy.full(spec.output_shape, np.nan, spec.dtype)
        _run(spec, op, run, [_on_gpu(a) for a in arrays], out, planned=planned)  # planned: recorded, replayed
        results.append(cupy.asnumpy(out))
    for got in results[1:]:
        assert np.isfinite(got).all(), "an output the raw launch did not write"
        np.testing.assert_allclose(got, results[0], rtol=1e-6, atol=1e-6)


_PACKING_CHECK = r"""
import sys
sys.path.insert(0, {tests!r})
import numpy as np
import test_cuda_raw_launch as t
from nbconv.cuda import _raw

compiled = {{}}
def record(key, signature, cc):
    def launch(grid, block, packed):
        assert all(type(v) is int for v in packed), packed
        if (key, signature) not in compiled:
            _, sizes = _raw.kernel_params(_raw.compile_ptx(key, signature, cc))
            assert sizes == [8] * len(packed), (key, signature, sizes, len(packed))
            compiled[key, signature] = len(packed)
    return launch
_raw._function = record
_raw._compute_capability = lambda: (9, 0)
_raw._driver_launch = lambda: None
kinds = set()
for name, make in t.REAL_CASES.items():
    spec, op, arrays = make()
    kinds.add(t._launch_kind(spec, op))
    fakes = [None if a is None else t.FakeCupyArray.wrapping(a) for a in arrays]
    t._run(spec, op, _raw.RawLauncher(empty=t.fake_empty), fakes, t.fake_empty(spec.output_shape, spec.dtype))
print("kinds", sorted(kinds))
from nbconv.cuda._launch import ConvTileLaunch, phase_launches
spec = t.REAL_CASES["phases by tiles"]()[0]
print("phase tiles", sum(isinstance(cfg, ConvTileLaunch) for _, cfg in phase_launches(spec)))
print("compiled", len(compiled))
"""

# Compiled for real (real thresholds): every kind of launch once, the dtypes and layouts on the plane.
REAL_CASES = {
    "plane float32": SIM_CASES["conv2d depthwise, bias"],
    "plane unbatched (A)": SIM_CASES["conv2d unbatched, stride 2"],
    "plane strided input float64": SIM_CASES["conv2d strided input, float64"],
    "plane float16": SIM_CASES["conv2d float16"],
    "conv tiles": lambda: _conv((1, 32, 5, 5), (64, 16, 3, 3), True, padding=1, groups=2),
    "tiled": SIM_CASES["transposed 1x1 stride 2 (tiled)"],
    "phases": SIM_CASES["transposed stride 2 (phases)"],
    "input gradient": SIM_CASES["input gradient"],
    "pairs": SIM_CASES["weight gradient, pairs"],
    "weight tiles": SIM_CASES["weight gradient, tiles"],
    "bias": SIM_CASES["bias gradient, unbatched"],
    "phases by tiles": lambda: _transpose((1, 32, 5, 6), (32, 32, 3, 3), True, stride=2, padding=1,
                                          output_padding=1),
}


def test_packed_arguments_match_the_ptx_parameters():
    """Every launch the ops make, compiled for real (no simulator) for the signature the
    launcher asks for: the count and byte size of every parameter."""
    tests = os.path.dirname(os.path.abspath(__file__))
    res = subprocess.run([sys.executable, "-c", _PACKING_CHECK.format(tests=tests)], capture_output=True, text=True,
                         env=dict(os.environ, NUMBA_ENABLE_CUDASIM="0"), timeout=900, cwd=tests)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "kinds ['conv tiles', 'pairs', 'phases', 'plane', 'tiled', 'weight tiles']" in res.stdout, res.stdout
    assert "phase tiles 4" in res.stdout, res.stdout
    compiled = int(res.stdout.split("compiled")[1])
    assert compiled >= 14, res.stdout  # 8 forward signatures or more, 3 reductions and 3 finish passes


def test_launcher_hands_cupy_the_grid_block_and_arguments(monkeypatch):
    from nbconv._spec import conv2d_spec
    from nbconv.cuda import _launch, _raw

    calls = []
    monkeypatch.setattr(_raw, "_function", lambda *key: (lambda grid, block, args: calls.append((key, grid, block,
                                                                                                   args))))
    monkeypatch.setattr(_raw, "_compute_capability", lambda: (9, 0))
    monkeypatch.setattr(_raw, "_driver_launch", lambda: None)
    x = FakeCupyArray((2, 4, 9, 9), np.float32)
    w = FakeCupyArray((8, 1, 3, 3), np.float32)
    spec = conv2d_spec(np.zeros(x.shape, np.float32), np.zeros(w.shape, np.float32), None, padding=1, groups=4)
    out = FakeCupyArray(spec.output_shape, np.float32)
    cfg = _launch.forward_launch_config(spec)
    _launch.forward(spec, _raw.RawLauncher(), x, w, None, out)
    (key, grid, block, args), = calls
    assert key == (cfg.key, (("f", 4, "C"),) * 4 + (None,) * 7, (9, 0))
    assert grid == cfg.grid and block == cfg.block
    assert len(args) == 4 * 13 + 7  # four 4-D arrays (the weight stands in for the bias), 7 ints
    assert args[-7:] == (1, 1, 4, 1, 2, 1, 2 * 4 * 1)  # pads, groups, in/out per group, oc blocks, planes
    assert args[4] == x.data.ptr and args[5:13] == x.shape + x.strides


def test_raw_launch_is_taken_only_for_cupy_arrays_when_asked(monkeypatch):
    from nbconv._arrays import CUPY
    from nbconv._spec import conv2d_spec
    from nbconv.cuda import _launch, _raw

    spec = conv2d_spec(np.zeros((1, 2, 4, 4), np.float32), np.zeros((2, 1, 3, 3), np.float32), groups=2)
    cupy_spec = dataclasses.replace(spec, kind=CUPY)
    monkeypatch.setattr(_launch.config, "ENABLE_CUDASIM", False)
    monkeypatch.setattr(_launch, "launch_stream", lambda kind: None)
    monkeypatch.setattr(_raw, "ENABLED", True)
    assert _launch.launcher(cupy_spec) is _launch._RAW
    assert isinstance(_launch.launcher(spec), _launch.NumbaLauncher)  # NumPy kind here: not CuPy
    monkeypatch.setattr(_raw, "ENABLED", False)
    assert isinstance(_launch.launcher(cupy_spec), _launch.NumbaLauncher)


_LAUNCH_PROTO = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, *([ctypes.c_uint] * 7), ctypes.c_void_p,
                                 ctypes.c_void_p, ctypes.c_void_p)


class _Refused(Exception):
    """A stand-in for CuPy's ``CUDADriverError``."""


def fake_driver(seen: list, result: int = 0, binding: str = "ctypes"):
    """A launch function as ``_raw._driver_launch`` gives (``launch(function, gx, gy, gz, bx, by,
    bz, stream, extra)``, result code), made by the module's own adapter of a stand-in for
    ``cuLaunchKernel`` that reads its ``extra`` argument as the driver does: BUFFER_POINTER, the
    buffer, BUFFER_SIZE, a pointer to its size, END. ``binding``: the driver library's function
    through ctypes (the stand-in C-callable), or CuPy's compiled binding (``launchKernel``, every
    argument an int, ``CUDADriverError`` where the driver refuses)."""
    from nbconv.cuda import _raw

    def read(function, gx, gy, gz, bx, by, bz, shared, stream, params, extra):
        ex = ctypes.cast(extra, ctypes.POINTER(ctypes.c_void_p))
        assert (ex[0], ex[2], ex[4]) == (1, 2, None) and not params and shared == 0
        size = ctypes.cast(ex[3], ctypes.POINTER(ctypes.c_size_t))[0]
        values = ctypes.cast(ex[1], ctypes.POINTER(ctypes.c_int64))[:size // 8]
        seen.append(dict(function=function, grid=(gx, gy, gz), block=(bx, by, bz), stream=stream, values=values))

    if binding == "ctypes":
        def c_launch(*args):
            read(*args)
            return result

        return _raw.driver_launch_function(types.SimpleNamespace(cuLaunchKernel=_LAUNCH_PROTO(c_launch)))

    def launch_kernel(*args):
        assert len(args) == 11 and all(type(a) is int for a in args)
        read(*args)
        if result:
            raise _Refused(result)

    return _raw.cupy_launch_function(types.SimpleNamespace(launchKernel=launch_kernel, CUDADriverError=_Refused))


@pytest.mark.parametrize("binding", ["ctypes", "cupy"])
def test_launch_with_buffer_hands_the_driver_one_parameter_buffer(binding):
    from nbconv.cuda._raw import launch_with_buffer

    seen = []
    packed = (0, 0, 6, 4, 2**40 + 8, 2, 3, 12, 4, -3, 7)
    assert launch_with_buffer(fake_driver(seen, binding=binding), 1234, (5, 2), (32,), 99, packed) == 0
    assert seen == [dict(function=1234, grid=(5, 2, 1), block=(32, 1, 1), stream=99, values=list(packed))]


def test_the_driver_launch_is_cupys_binding_where_cupy_has_one(monkeypatch):
    """``_raw._driver_launch`` takes CuPy's compiled ``cupy.cuda.driver.launchKernel`` where CuPy
    is imported and has it (no ctypes conversion per argument), else the driver library's
    ``cuLaunchKernel`` through ctypes, else none."""
    from nbconv.cuda import _raw

    calls = []
    driver = types.SimpleNamespace(launchKernel=lambda *args: calls.append(args), CUDADriverError=_Refused)
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=types.SimpleNamespace(driver=driver)))
    _raw._driver_launch.cache_clear()
    try:
        assert _raw._driver_launch()(5, 1, 2, 3, 4, 5, 6, 7, 8) == 0
        assert calls == [(5, 1, 2, 3, 4, 5, 6, 0, 7, 0, 8)]  # no shared memory, no parameter array
        monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=types.SimpleNamespace(
            driver=types.SimpleNamespace())))
        _raw._driver_launch.cache_clear()
        monkeypatch.setattr(_raw.ctypes, "CDLL", lambda name: (_ for _ in ()).throw(OSError(name)))
        assert _raw._driver_launch() is None  # no binding, no driver library
    finally:
        _raw._driver_launch.cache_clear()


@pytest.mark.parametrize("planned", [False, True], ids=["direct", "planned"])
@pytest.mark.parametrize("binding", ["ctypes", "cupy"])
@pytest.mark.parametrize("refused", [False, True])
def test_launcher_goes_through_the_driver_and_falls_back_to_cupy(refused, binding, planned, monkeypatch):
    from nbconv._spec import conv2d_bias_spec
    from nbconv.cuda import _launch, _raw

    seen, via_cupy = [], []
    monkeypatch.setattr(_raw, "_function", lambda *key: _CallRecorder(4321, via_cupy))
    monkeypatch.setattr(_raw, "_compute_capability", lambda: (9, 0))
    driver = fake_driver(seen, result=1 if refused else 0, binding=binding)
    monkeypatch.setattr(_raw, "_driver_launch", lambda: driver)
    gy = FakeCupyArray((2, 4, 40, 12), np.float32, ptr=8192)  # positions for two chunks: two passes
    out = FakeCupyArray((4,), np.float32, ptr=16384)
    spec = conv2d_bias_spec(gy)
    assert _launch.reduce_launch(spec, True).grid[1] == 2
    stream = types.SimpleNamespace(ptr=77)  # CuPy's current stream
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=types.SimpleNamespace(
        get_current_stream=lambda: stream)))
    monkeypatch.setattr(_raw, "_device", lambda: 0)
    _run(spec, "bias_grad", _raw.RawLauncher(empty=lambda shape, dtype: FakeCupyArray(shape, dtype, ptr=32768)),
         [gy], out, planned=planned)
    assert len(seen) == 2 and [s["function"] for s in seen] == [4321, 4321] and seen[0]["stream"] == 77
    partial, finish = seen
    assert len(partial["values"]) == 13 + 13 + 15 + 4  # x (gy stands in), gy, the 5-D partial sums, 4 ints
    assert partial["values"][4] == partial["values"][13 + 4] == 8192 and partial["values"][26 + 4] == 32768
    assert len(finish["values"]) == 15 + 7 and finish["values"][4] == 32768 and finish["values"][15 + 4] == 16384
    assert finish["grid"] == (1, 1, 1) and finish["block"] == (128, 1, 1)
    assert len(via_cupy) == (2 if refused else 0)  # a refused launch goes through CuPy's call
    if refused:
        assert via_cupy[1] == ((1,), (128,), tuple(finish["values"]))


@pytest.mark.parametrize("planned", [False, True], ids=["direct", "planned"])
@pytest.mark.parametrize("op, shapes", [
    ("bias_grad", [(2, 4, 5, 3)]),
    ("weight_grad", [(2, 4, 5, 3), (2, 4, 5, 3)]),  # the pair kernel
    ("weight_grad", [(1, 16, 6, 6), (1, 16, 6, 6)]),  # the tiles (16 output channels)
])
def test_a_gradient_of_one_chunk_is_one_launch_into_the_result(op, shapes, planned, monkeypatch):
    """Where a gradient's positions make one chunk, its first pass writes the result itself
    (viewed as one chunk of partial sums: a leading axis and trailing ones of stride 0): one
    launch, no scratch, no second pass."""
    from nbconv._spec import conv2d_bias_spec, conv2d_weight_spec
    from nbconv.cuda import _raw

    seen, scratch = [], []
    monkeypatch.setattr(_raw, "_function", lambda *key: _CallRecorder(4321, []))
    monkeypatch.setattr(_raw, "_compute_capability", lambda: (9, 0))
    monkeypatch.setattr(_raw, "_driver_launch", lambda: fake_driver(seen, result=0, binding="cupy"))
    arrays = [FakeCupyArray(shape, np.float32, ptr=8192 * (i + 1)) for i, shape in enumerate(shapes)]
    if op == "bias_grad":
        spec = conv2d_bias_spec(arrays[0])
        out = FakeCupyArray((4,), np.float32, ptr=65536)
        want_shape, want_strides = (1, 4, 1, 1, 1), (0, 4, 0, 0, 0)
    else:
        x, gy = arrays
        w_shape = (gy.shape[1], x.shape[1], 3, 3)
        spec = conv2d_weight_spec(x, w_shape, gy, padding=1)
        out = FakeCupyArray(w_shape, np.float32, ptr=65536)
        want_shape = (1, *w_shape)
        want_strides = (0, *out.strides)
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=types.SimpleNamespace(
        get_current_stream=lambda: types.SimpleNamespace(ptr=77))))
    monkeypatch.setattr(_raw, "_device", lambda: 0)
    _run(spec, op, _raw.RawLauncher(empty=lambda shape, dtype: scratch.append(shape)), arrays, out, planned=planned)
    assert len(seen) == 1 and not scratch
    values = seen[0]["values"]
    at = 13 * 2  # after the two 4-D arrays (the bias gradient's grad_output stands in for x)
    assert values[at:at + 15] == [0, 0, math.prod(want_shape), 4, 65536, *want_shape, *want_strides]


def _layout_variants():
    """(name, the case, a view of its first array or None): every kind of launch, and a plane
    launch whose input has another layout than the one its plan was recorded for."""
    for name, make in REAL_CASES.items():
        yield name, make, None
    yield "plane, input strided after contiguous", REAL_CASES["plane float32"], lambda a: a[:, :, :, ::2]


@pytest.mark.parametrize("name", [v[0] for v in _layout_variants()])
def test_plans_replay_the_direct_launches(name, monkeypatch):
    """The public ops launch by plans (recorded once per op, geometry, layout and device, then
    replayed with the addresses of each call's arrays and scratch): each replay hands the driver
    what the op's launch code gives directly for the same arrays (function, grid, block, stream,
    every packed value), also for arrays at other addresses than the recording's, and for an
    input of another layout (a plan of its own)."""
    from nbconv.cuda import _raw

    _, make, strided = next(v for v in _layout_variants() if v[0] == name)
    spec, op, arrays = make()
    if strided is not None:  # the same geometry, the input every other column of a wider array
        wide = np.concatenate([arrays[0], arrays[0]], axis=3)
        arrays = (strided(wide),) + tuple(arrays[1:])
        assert arrays[0].shape == make()[2][0].shape
    monkeypatch.setattr(_raw, "_function", lambda key, signature, cc: _CallRecorder(hash((key, signature)) % 2**40,
                                                                                   []))
    monkeypatch.setattr(_raw, "_compute_capability", lambda: (9, 0))
    monkeypatch.setattr(_raw, "_device", lambda: 0)
    seen = []
    driver = fake_driver(seen)
    monkeypatch.setattr(_raw, "_driver_launch", lambda: driver)
    stream = types.SimpleNamespace(ptr=77)
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=types.SimpleNamespace(
        get_current_stream=lambda: stream)))

    def arrays_at(base):
        """The case's arrays and output as stand-ins at addresses from ``base`` on, and an
        allocator giving scratch at addresses after them, in order."""
        at = iter(range(base, base + 2**30, 2**20))
        fakes = [None if a is None else FakeCupyArray(a.shape, a.dtype, a.strides, next(at)) for a in arrays]
        out = FakeCupyArray(spec.output_shape, spec.dtype, ptr=next(at))
        return fakes, out, (lambda shape, dtype: FakeCupyArray(shape, dtype, ptr=next(at)))

    contiguous = [None if a is None else np.ascontiguousarray(a) for a in arrays]
    planned = _raw.RawLauncher()
    for base in (2**32, 2**33):  # the plan: recorded at the first, replayed at the second
        if strided is not None and base == 2**32:  # first a plan for the contiguous input
            fakes = [None if a is None else FakeCupyArray(a.shape, a.dtype, ptr=2**34) for a in contiguous]
            planned._empty = lambda shape, dtype: FakeCupyArray(shape, dtype, ptr=2**35)
            _run(spec, op, planned, fakes, FakeCupyArray(spec.output_shape, spec.dtype, ptr=2**36), planned=True)
        fakes, out, empty = arrays_at(base)
        seen.clear()
        _run(spec, op, _raw.RawLauncher(empty=empty), fakes, out)
        direct = list(seen)
        fakes, out, empty = arrays_at(base)
        planned._empty = empty
        seen.clear()
        _run(spec, op, planned, fakes, out, planned=True)
        assert seen == direct and len(direct) >= 1
        assert all(s["stream"] == 77 for s in seen)
    assert len(planned._plans) == (2 if strided is not None else 1)


class _CallRecorder:
    """A stand-in for a CuPy function: its handle, and its calls."""

    def __init__(self, ptr, calls):
        self.ptr, self.calls = ptr, calls

    def __call__(self, grid, block, args):
        self.calls.append((grid, block, args))


def test_host_cost_offline_reports_every_op():
    """``docs/host_cost.py --offline`` (the Python cost of a call with the driver replaced) runs,
    and each op makes the launches it should: one each, these calls being tiny (one chunk of a
    reduction: no finish; a strided transposed convolution below the phases' threshold)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, os.path.join(root, "docs", "host_cost.py"), "--offline"],
                         capture_output=True, text=True, timeout=300, cwd=root,
                         env=dict(os.environ, NUMBA_ENABLE_CUDASIM="1"))
    assert res.returncode == 0, res.stdout + res.stderr
    ops_table = res.stdout.split("Parts of")[0]
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in ops_table.splitlines()
            if line.startswith("| ") and not line.startswith("| op")}
    assert "| validation (conv2d_spec) |" in res.stdout
    launches = {op: int(cells[0]) for op, cells in rows.items()}
    assert launches == {"conv2d, depthwise 3x3 (plane)": 1, "conv2d, 64 -> 64 g2 3x3 (tiles)": 1,
                        "conv_transpose2d, stride 2 (tiny: one launch)": 1, "grad.conv2d_input, depthwise (plane)": 1,
                        "grad.conv2d_weight, depthwise (pairs, one chunk)": 1,
                        "grad.conv2d_weight, 64 -> 64 g2 @ 7 x 7 (tiles, one chunk)": 1,
                        "grad.conv2d_bias (pairs, one chunk)": 1}
    assert all(float(cells[1].rstrip(" |")) > 0 for cells in rows.values())


def test_functions_are_loaded_per_device_from_one_compile(monkeypatch):
    """A kernel's PTX is compiled once per key, signature and compute capability, and loaded
    into each device that launches it: a function's handle belongs to the context it was loaded
    in, so two devices of one compute capability get functions of their own."""
    from nbconv.cuda import _raw

    compiled, loaded, current = [], [], [0]

    def compile_ptx(key, signature, cc):
        compiled.append(key)
        return ".visible .entry _Zk(\n .param .u64 _Zk_param_0\n)\n{ ret; }"

    class RawModule:
        def __init__(self, path):
            with open(path) as f:
                assert ".entry _Zk" in f.read()
            self.device = current[0]

        def get_function(self, name):
            loaded.append((name, self.device))
            return types.SimpleNamespace(name=name, device=self.device)

    monkeypatch.setattr(_raw, "compile_ptx", compile_ptx)
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(
        RawModule=RawModule, cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDevice=lambda: current[0]))))
    _raw._ptx.cache_clear()
    _raw._loaded.cache_clear()
    try:
        key, signature = ("a stand-in key",), (("f", 4, "C"),)
        on_0 = _raw._function(key, signature, (9, 0))
        assert _raw._function(key, signature, (9, 0)) is on_0  # loaded once per device
        current[0] = 1
        on_1 = _raw._function(key, signature, (9, 0))
        assert (on_0.device, on_1.device) == (0, 1) and on_1 is not on_0
        assert compiled == [key] and loaded == [("_Zk", 0), ("_Zk", 1)]
    finally:
        _raw._ptx.cache_clear()
        _raw._loaded.cache_clear()
