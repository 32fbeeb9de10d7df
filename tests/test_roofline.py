"""The GPU roofline floors of ``nbconv.bench._roofline``: bytes once at peak bandwidth or FLOPs at
the FP32 peak, whichever is longer."""

from __future__ import annotations

import numpy as np
import pytest

from nbconv._spec import conv2d_spec
from nbconv.bench import _roofline


def test_floor_by_hand():
    """A 3x3 depthwise conv: 2*9 FLOPs per output, 4 bytes per element moved once."""
    x, w = np.zeros((2, 8, 10, 10), np.float32), np.zeros((8, 1, 3, 3), np.float32)
    spec = conv2d_spec(x, w, None, 1, 1, 1, 8)
    device = _roofline.Device("test", bandwidth=1e9, fp32_flops=1e10)
    f = _roofline.floor(spec, device)
    assert f.bytes == 4 * (2 * 8 * 100 + 8 * 9 + 2 * 8 * 100) and f.flops == 2 * 9 * 2 * 8 * 100
    assert f.memory_s == pytest.approx(f.bytes / 1e9) and f.compute_s == pytest.approx(f.flops / 1e10)
    assert f.seconds == max(f.memory_s, f.compute_s) and f.bound == "memory"
    assert _roofline.floor(spec, device._replace(bandwidth=1e12)).bound == "compute"


def test_table_of_the_standard_shapes():
    text = _roofline.table(batch=32)
    rows = text.splitlines()[2:]
    assert len(rows) == 12
    mbv2 = next(r for r in rows if r.startswith("| mbv2_dw_112 "))
    assert "| 102.8 |" in mbv2 and "| 21.4 | memory |" in mbv2  # 103 MB at 4.8 TB/s on the H200
    assert "compute" in next(r for r in rows if r.startswith("| alexnet_g2 "))
