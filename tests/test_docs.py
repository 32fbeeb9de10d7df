"""The examples in the public docstrings and in README.md run and print what they say."""

from __future__ import annotations

import doctest
import importlib.util
import pathlib

import pytest

import nbconv
import nbconv._conv
import nbconv._conv1d
import nbconv._explain
import nbconv._layer
import nbconv.grad

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_docstring_examples():
    for module in (nbconv._conv, nbconv._conv1d, nbconv._explain, nbconv._layer, nbconv.grad):
        result = doctest.testmod(module, raise_on_error=False)
        assert result.attempted > 0
        assert result.failed == 0


def test_dask_docstring_examples():
    pytest.importorskip("dask")
    import nbconv.dask
    import nbconv.dask.grad

    for module in (nbconv.dask, nbconv.dask.grad):
        result = doctest.testmod(module, raise_on_error=False)
        assert result.failed == 0


def test_readme_numpy_examples():
    """Every ```python block of the README that needs no GPU, run in order in one namespace."""
    text = (ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    host_blocks = [b for b in blocks if "cupy" not in b]
    assert len(host_blocks) >= 3
    if importlib.util.find_spec("torch") is None:
        host_blocks = [b for b in host_blocks if "import torch" not in b]
    if importlib.util.find_spec("dask") is None:
        host_blocks = [b for b in host_blocks if "import dask" not in b]
    namespace: dict = {}
    for block in host_blocks:
        exec(compile(block, "README.md", "exec"), namespace)


@pytest.mark.asm
def test_vector_width_script_reads_every_kernel():
    """``docs/vector_width.py`` (the table in docs/performance.md) still finds the kernels it
    names, and each compiles to packed FMAs at the width it reports for this target."""
    spec = importlib.util.spec_from_file_location("vector_width", ROOT / "docs" / "vector_width.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    figures = script._measure()
    assert figures["loop_bits"] in (256, 512) and figures["explicit_bits"] in (256, 512)
    assert len(figures["kernels"]) >= 5
    for name, bits, fmas, _ in figures["kernels"]:
        assert fmas > 0, f"{name}: no packed {bits}-bit FMAs"


def test_pointwise_blocks_script_runs(capsys, monkeypatch):
    """``docs/pointwise_blocks.py`` (round 16's paired figures) still runs against the kernels it
    names; one round of its cheapest sections, whose results it checks for equal bits."""
    spec = importlib.util.spec_from_file_location("pointwise_blocks", ROOT / "docs" / "pointwise_blocks.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr("sys.argv", ["pointwise_blocks.py", "--rounds", "1", "--only", "three,stem"])
    script.main()
    printed = capsys.readouterr().out
    assert printed.count("\n| ") >= 2 + 5 + 3  # two headers, five 7 x 7 layers, three stems


def test_pointwise_blocks_prefetch_sections_run(capsys, monkeypatch):
    """Its ``prefetch_layers`` and ``columns`` sections (a kernel compiled again with the other
    block) on a stand-in network of one small stem and one 1x1 layer, each checked for equal
    bits by the script."""
    from nbconv.bench import _networks

    spec = importlib.util.spec_from_file_location("pointwise_blocks", ROOT / "docs" / "pointwise_blocks.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    layers = [_networks.Layer(3, 8, 3, 2, 1, 1, False, 20, 1), _networks.Layer(16, 12, 1, 1, 0, 1, False, 14, 1)]
    monkeypatch.setattr(_networks, "NETWORKS", {"tiny": layers})
    monkeypatch.setattr("sys.argv", ["pointwise_blocks.py", "--rounds", "1", "--only", "prefetch_layers,columns"])
    script.main()
    printed = capsys.readouterr().out
    assert "16 -> 12 s1 @14, batch 8" in printed  # the 1x1 layer
    assert printed.count("3 -> 8 3x3 s2 @20") == 2  # the stem at batch 8 and 2


def test_dense_bound_script(capsys):
    """``docs/dense_bound.py`` (the dense-layer speed a network geometric mean needs): its model
    on a network of known parts, and its table from a kept ``nbconv bench --network`` JSON."""
    spec = importlib.util.spec_from_file_location("dense_bound", ROOT / "docs" / "dense_bound.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    layers = [dict(grouped=False, count=2, torch_time_s=0.5, time_s=0.5),  # dense: 1 s each way
              dict(grouped=True, count=1, torch_time_s=1.0, time_s=0.5)]  # grouped: 2x
    results = [dict(layers=layers, speedup=4 / 3, batch=2)]
    assert script.network_parts(results[0]) == (1.0, 1.0, 0.5, 1.0)
    assert script.geomean_at(results, 1.0) == pytest.approx(2 / 1.5)
    assert script.geomean_at(results, 2.0) == pytest.approx(2 / 1.0)
    assert script.needed(results, 1.3) == pytest.approx(1 / (2 / 1.3 - 0.5), rel=1e-6)  # 2 / (1/s + 0.5) = 1.3
    kept = sorted((ROOT / "docs").glob("networks-*-b8-*.json"))
    assert kept
    script.main([str(kept[-1])])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| networks-")]
    assert len(rows) == 1 and rows[0].count("x |") == 7


def test_stems_script(capsys):
    """``docs/stems.py`` (the networks' stems alone, with page faults): every stem once, on small
    images; a forced kernel leaves the launcher as it was."""
    spec = importlib.util.spec_from_file_location("stems", ROOT / "docs" / "stems.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    from nbconv.cpu import _launch

    chosen = _launch.direct_forward_kernel
    assert sorted(s.k for s in script.stem_layers()) == [3, 3, 3, 4, 7]
    assert script.main(["--batch", "1", "--rounds", "1", "--image", "32"]) == 0
    assert script.main(["--batch", "1", "--rounds", "1", "--image", "32", "--kernel", "packed"]) == 0
    assert _launch.direct_forward_kernel is chosen
    tables = capsys.readouterr().out.split("Stems, batch 1")[1:]
    assert len(tables) == 2 and "| page faults |" in tables[0]
    assert [t.count("\n| 3->") for t in tables] == [5, 3]


def test_network_ab_script(capsys):
    """``docs/network_ab.py`` (two values of a setting over whole network passes): runs a small
    network at both values, prints its ratio, and leaves the setting as it was; refuses a value
    that is not a literal and a setting the module lacks."""
    spec = importlib.util.spec_from_file_location("network_ab", ROOT / "docs" / "network_ab.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    from nbconv.cpu import _pointwise

    bound = _pointwise.STREAM_BYTES
    assert script.main(["nbconv.cpu._pointwise", "STREAM_BYTES", "0", "1 << 62", "--networks", "mnasnet0_5",
                        "--batch", "1", "--rounds", "2", "--image", "32", "--show", "0"]) == 0
    assert _pointwise.STREAM_BYTES == bound
    out = capsys.readouterr().out
    assert "mnasnet0_5: A " in out and "geometric mean of B / A over 1 networks" in out
    assert "16->8 1x1 dense @16" in out  # --show 0: every layer
    with pytest.raises(SystemExit):
        script.main(["nbconv.cpu._pointwise", "STREAM_BYTES", "__import__('os')", "0"])
    with pytest.raises(SystemExit):
        script.main(["nbconv.cpu._pointwise", "NO_SUCH_SETTING", "0", "1"])


def test_call_cost_script(capsys):
    """``docs/call_cost.py`` (the cost of tiny calls): prints a row per call and, with
    ``--parts``, the parts of nbconv's 1x1 call."""
    spec = importlib.util.spec_from_file_location("call_cost", ROOT / "docs" / "call_cost.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--rounds", "1", "--calls", "3", "--parts"]) == 0
    out = capsys.readouterr().out
    for row in ("| nbconv 1x1, 8 -> 8 |", "| nbconv depthwise 3x3, 8 channels |", "| nbconv 1x1: the spec |",
                "| nbconv 1x1: launcher (into a given result) |"):
        assert row in out
