"""nbconv.explain: its connectivity is what conv2d computes, its allowed groups are what conv2d
accepts, its counts are the weight's; the text, the plot and the command line."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import conv2d_reference

import nbconv
from nbconv.__main__ import main


def test_worked_example():
    e = nbconv.explain(3, 6, groups=3, kernel_size=1)
    assert e.valid and e.problem is None
    assert e.weight_shape == (6, 1, 1, 1) and e.depthwise_multiplier == 2
    assert e.group_inputs == (range(1), range(1, 2), range(2, 3))
    assert e.group_outputs == (range(2), range(2, 4), range(4, 6))
    assert {o: list(r) for o, r in e.inputs_of.items()} == {0: [0], 1: [0], 2: [1], 3: [1], 4: [2], 5: [2]}
    assert e.valid_groups == (1, 3) and e.params == 6 and e.dense_params == 18
    # the numbers the docs show: inputs (100, 200, 300), weights 0..5
    x = np.array([100.0, 200.0, 300.0]).reshape(1, 3, 1, 1)
    y = nbconv.conv2d(x, np.arange(6.0).reshape(e.weight_shape), groups=3)
    assert y.ravel().tolist() == [0.0, 100.0, 400.0, 600.0, 1200.0, 1500.0]
    text = str(e)
    assert "depthwise, channel multiplier 2" in text and "weight shape (6, 1, 1, 1)" in text
    assert "group 2: inputs 2 -> outputs 4-5" in text and "allowed groups for 3 -> 6 channels: 1, 3" in text


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 12), st.integers(1, 3), st.integers(1, 3))
def test_connectivity_is_what_conv2d_computes(c_in, c_out, groups, kh, kw):
    """Output o depends on input channel c exactly when c is in ``inputs_of[o]`` (perturbing one input
    channel of the reference conv changes exactly the outputs that read it), the allowed groups are the
    ones conv2d accepts, and the weight shape and costs are the weight's."""
    e = nbconv.explain(c_in, c_out, groups, (kh, kw))
    accepted = []
    for g in range(1, max(c_in, c_out) + 1):
        try:
            nbconv._spec.conv2d_spec(np.zeros((1, c_in, kh, kw)), np.zeros((c_out, max(1, c_in // g), kh, kw)), None,
                                     groups=g)
            accepted.append(g)
        except ValueError:
            pass
    assert e.valid_groups == tuple(accepted)
    assert e.valid == (groups in accepted)
    if not e.valid:
        assert e.problem and f"groups={groups}" in e.problem and not e.group_inputs
        assert all(g in accepted for g in e.nearest_groups)
        lower = [g for g in accepted if g < groups]
        assert max(lower, default=None) in e.nearest_groups or not lower
        return
    w = np.ones(e.weight_shape)
    assert e.params == w.size and e.macs_per_pixel == w.size and e.dense_params == c_out * c_in * kh * kw
    base = conv2d_reference(np.zeros((1, c_in, kh, kw)), w, groups=groups)
    for c in range(c_in):
        x = np.zeros((1, c_in, kh, kw))
        x[0, c] = 1.0
        reads_c = np.abs(conv2d_reference(x, w, groups=groups) - base).reshape(c_out, -1).max(axis=1) > 0
        assert reads_c.tolist() == [c in e.inputs_of[o] for o in range(c_out)]
    assert e.depthwise_multiplier == (c_out // c_in if groups == c_in else None)


def test_invalid_groups_are_explained_with_the_nearest_choices():
    e = nbconv.explain(96, 256, groups=3)
    assert not e.valid and e.nearest_groups == (2, 4) and e.valid_groups == (1, 2, 4, 8, 16, 32)
    assert "does not divide out_channels (256)" in e.problem
    assert "nearest allowed: groups=2 or 4" in str(e)
    assert nbconv.explain(6, 6, groups=7).nearest_groups == (6,)  # above the largest allowed
    with pytest.raises(ValueError, match="nothing to draw"):
        e.plot()


@pytest.mark.parametrize("args, error, message", [
    ((0, 4, 1), ValueError, r"explain: in_channels must be positive, got 0"),
    ((4, 4, -2), ValueError, r"explain: groups must be positive, got -2"),
    ((4, 4, 2.0), TypeError, r"explain: groups must be an int, got float"),
    ((4, 4, 2, (3, 0)), ValueError, r"explain: kernel_size must be positive"),
])
def test_bad_arguments(args, error, message):
    with pytest.raises(error, match=message):
        nbconv.explain(*args)


def test_mapping_is_read_only_and_bounded():
    m = nbconv.explain(4, 8, groups=2).inputs_of
    assert len(m) == 8 and list(m[7]) == [2, 3]
    with pytest.raises(KeyError):
        m[8]
    with pytest.raises(TypeError):
        m[0] = range(1)


def test_long_listings_are_elided_but_fields_are_complete():
    e = nbconv.explain(64, 64, groups=64)
    text = str(e)
    assert "... (57 more groups, the same pattern)" in text and "group 63: inputs 63 -> outputs 63" in text
    assert len(e.group_inputs) == 64 and math.prod(e.weight_shape) == e.params


def test_command_line(capsys, tmp_path):
    assert main(["explain", "96", "256", "2", "-k", "11", "11"]) == 0
    out = capsys.readouterr().out
    assert "weight shape (256, 48, 11, 11)" in out and "group 1: inputs 48-95 -> outputs 128-255" in out
    assert main(["explain", "96", "256", "3"]) == 1
    assert "nearest allowed: groups=2 or 4" in capsys.readouterr().out
    assert main(["explain", "0", "4"]) == 2
    assert "explain: in_channels must be positive" in capsys.readouterr().err


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "alexnet.png"
    assert main(["explain", "96", "256", "2", "--plot", str(path)]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = nbconv.explain(8, 8, 4).plot()
    assert len(ax.collections) >= 4  # one set of lines per group (and the channel dots)


def test_plot_without_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r'pip install "nbconv\[plot\]"'):
        nbconv.explain(8, 8, 4).plot()
