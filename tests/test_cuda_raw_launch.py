"""The plane kernel's launch through CuPy (``NBCONV_CUDA_LAUNCH=raw``), checked without a GPU:
the hand-packed arguments (Python ints, which CuPy passes as int64) match the compiled PTX's
parameter list (count, and 8 bytes each) for every layout and dtype; the launcher hands CuPy the grid, block and arguments the dispatcher would.
On a GPU, ``docs/gpu_check.sh`` runs the CUDA tests through this path as well."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import numpy as np
import pytest

pytestmark = pytest.mark.cuda


class FakeCupyArray:
    """What the raw launcher reads of a CuPy array: shape, strides, itemsize, pointer, flags."""

    def __init__(self, shape, dtype, strides=None, ptr=4096):
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.itemsize = self.dtype.itemsize
        contiguous = np.empty(shape, dtype).strides
        self.strides = tuple(strides) if strides is not None else contiguous
        self.data = types.SimpleNamespace(ptr=ptr)
        self.flags = types.SimpleNamespace(c_contiguous=self.strides == contiguous)
        self.__cuda_array_interface__ = {"shape": self.shape, "typestr": self.dtype.str, "data": (ptr, False),
                                         "strides": self.strides, "version": 3}


def test_flatten_follows_numbas_array_abi():
    from nbconv.cuda._raw import flatten

    got = flatten((2, 3), (12, 4), 4, 1234)
    assert got == (0, 0, 6, 4, 1234, 2, 3, 12, 4)  # meminfo, parent, nitems, itemsize, data, shape, strides
    assert all(type(v) is int for v in got)  # CuPy passes each as an int64


def test_kernel_params_reads_the_entry_and_parameter_sizes():
    from nbconv.cuda._raw import kernel_params

    ptx = ".visible .entry _Zfoo(\n .param .u64 _Zfoo_param_0,\n .param .b32 _Zfoo_param_1\n)\n{ ret; }"
    assert kernel_params(ptx) == ("_Zfoo", [8, 4])


_PACKING_CHECK = r"""
import sys
sys.path.insert(0, {tests!r})
import numpy as np
from test_cuda_raw_launch import FakeCupyArray
from nbconv._spec import conv2d_spec, conv2d_input_spec
from nbconv.cuda._compile import compile_forward
from nbconv.cuda._launch import PlaneLaunch, forward_launch_config
from nbconv.cuda._raw import arguments, kernel_params, layout

cases = [((2, 4, 9, 9), (4, 1, 3, 3), True, dict(padding=1, groups=4), None),
         ((4, 9, 9), (8, 2, 3, 3), False, dict(stride=2, groups=2), None),          # unbatched: layout A
         ((2, 4, 9, 9), (4, 1, 3, 3), True, dict(groups=4), (4 * 9 * 18 * 8, 9 * 18 * 8, 18 * 8, 2 * 8))]
n = 0
for x_shape, w_shape, bias, kw, x_strides in cases:
    for dtype in (np.float16, np.float32, np.float64):
        x = FakeCupyArray(x_shape, dtype, x_strides)
        w = FakeCupyArray(w_shape, dtype)
        b = FakeCupyArray((w_shape[0],), dtype) if bias else None
        spec = conv2d_spec(x, w, b, **kw)
        out = FakeCupyArray(spec.output_shape, dtype)
        specs = [(spec, x, w, b, out)]
        gy = out
        ispec = conv2d_input_spec(x_shape, w, gy, **kw)
        if ispec.lhs_dilation == (1, 1):
            specs.append((ispec, gy, w, None, FakeCupyArray(ispec.output_shape, dtype)))
        for s, a, ww, bb, o in specs:
            cfg = forward_launch_config(s)
            assert isinstance(cfg, PlaneLaunch), s
            lay = layout(a, ww, bb, o, batched=not s.unbatched)
            contiguous = all(v.flags.c_contiguous for v in (a, ww, o) + ((bb,) if bb is not None else ()))
            assert lay == ("C" if contiguous and not s.unbatched else "A")
            _, sizes = kernel_params(compile_forward(cfg.key, np.dtype(dtype), (9, 0), layout=lay))
            args = arguments(s, cfg, a, ww, bb, o)
            assert all(type(v) is int for v in args) and sizes == [8] * len(args), (s, sizes, len(args))
            n += 1
print("checked", n)
"""


def test_packed_arguments_match_the_ptx_parameters():
    """Compiled for real (no simulator): the count and byte size of every parameter."""
    tests = os.path.dirname(os.path.abspath(__file__))
    res = subprocess.run([sys.executable, "-c", _PACKING_CHECK.format(tests=tests)], capture_output=True, text=True,
                         env=dict(os.environ, NUMBA_ENABLE_CUDASIM="0"), timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "checked 15" in res.stdout, res.stdout


def test_launch_plane_hands_cupy_the_launch(monkeypatch):
    from nbconv._spec import conv2d_spec
    from nbconv.cuda import _launch, _raw

    calls = []
    monkeypatch.setattr(_raw, "_function", lambda *key: (lambda grid, block, args: calls.append((key, grid, block,
                                                                                                   args))))
    monkeypatch.setattr(_raw, "_compute_capability", lambda: (9, 0))
    x = FakeCupyArray((2, 4, 9, 9), np.float32)
    w = FakeCupyArray((8, 1, 3, 3), np.float32)
    spec = conv2d_spec(x, w, None, padding=1, groups=4)
    out = FakeCupyArray(spec.output_shape, np.float32)
    cfg = _launch.forward_launch_config(spec)
    _raw.launch_plane(spec, cfg, x, w, None, out)
    (key, grid, block, args), = calls
    assert key == (cfg.key, np.dtype(np.float32), "C", (9, 0))
    assert grid == cfg.grid and block == cfg.block
    assert len(args) == 4 * 13 + 7  # four 4-D arrays (the weight stands in for the bias), 7 ints
    assert args[-7:] == (1, 1, 4, 1, 2, 1, 2 * 4 * 1)  # pads, groups, in/out per group, oc blocks, planes
    assert args[4] == x.data.ptr and args[5:13] == x.shape + x.strides
