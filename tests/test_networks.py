"""``nbconv bench --network``: the layer tables of the eight networks (checked against torchvision
when it is installed), the command end to end on small images, and its check of every layer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nbconv.__main__ import main
from nbconv.bench import _networks
from nbconv.bench._networks import NETWORKS, Layer

#: (conv layers, grouped ones) per network, as torchvision 0.28 builds them.
COUNTS = {
    "mobilenet_v2": (52, 17), "mobilenet_v3_small": (52, 11), "resnext50_32x4d": (53, 16),
    "efficientnet_b0": (81, 16), "convnext_tiny": (22, 18), "shufflenet_v2_x1_0": (56, 19),
    "regnet_y_400mf": (85, 16), "mnasnet0_5": (52, 17),
}


@pytest.mark.parametrize("name", list(COUNTS))
def test_tables_hold_the_networks_layers(name):
    layers = NETWORKS[name]
    assert (sum(lay.count for lay in layers), sum(lay.count for lay in layers if lay.groups > 1)) == COUNTS[name]
    assert len(set(layers)) == len(layers)  # one row per distinct layer
    for lay in layers:
        assert lay.c_in % lay.groups == 0 and lay.c_out % lay.groups == 0 and lay.count >= 1
        assert lay.side >= lay.k - 2 * lay.pad  # a valid output
    assert layers[0].side == 224 and layers[0].c_in == 3  # the stem first


def test_layers_scale_with_the_image():
    stem = Layer(3, 32, 3, 2, 1, 1, False, 224, 1)
    assert stem.at(64).side == 64 and stem.at(32).label == "3->32 3x3 s2 dense @32"
    se = Layer(16, 8, 1, 1, 0, 1, True, 1, 1)  # squeeze-and-excitation: 1 x 1 whatever the image
    assert se.at(64).side == 1
    dw = Layer(96, 96, 3, 2, 1, 96, False, 112, 1)
    assert dw.at(32).side == 16 and "depthwise" in dw.label
    assert dw.flops(2) == 2 * 2 * 96 * 56 * 56 * 9


def test_unknown_network_is_refused(capsys):
    assert main(["bench", "--network", "alexnet"]) == 2
    assert "unknown networks ['alexnet']" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown network"):
        _networks.conv_layers("vgg")


def test_network_bench_end_to_end(tmp_path, capsys):
    out = tmp_path / "net.json"
    assert main(["bench", "--network", "mobilenet_v3_small", "--image", "32", "--batch", "1", "--rounds", "1",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mobilenet_v3_small | 52 (11)" in printed and "| 16->16 3x3 s2 depthwise @16 | 1 |" in printed
    report = json.loads(out.read_text())
    (result,) = report["results"]
    assert result["network"] == "mobilenet_v3_small" and result["image"] == 32
    assert len(result["layers"]) == len(NETWORKS["mobilenet_v3_small"]) and result["time_s"] > 0
    assert "| page faults |" in printed and all(layer["faults"] >= 0 for layer in result["layers"])


def test_passes_count_each_layers_page_faults():
    """A layer that writes fresh memory shows its page faults, one that allocates nothing none."""
    from types import SimpleNamespace

    fresh = lambda: np.ones(1 << 24, np.float32)  # noqa: E731 (64 MiB: mapped anew by malloc every call)
    kept = np.ones(1 << 20, np.float32)  # touched: its pages are in
    again = lambda: kept.fill(1.0)  # noqa: E731
    times, faults = _networks._timed_pass([fresh, again], [SimpleNamespace(count=2), SimpleNamespace(count=1)])
    assert len(times) == 2 and min(times) > 0
    assert faults[0] >= 2 * 32  # at least a 2 MiB page per 2 MiB, twice
    assert faults[1] < 8


def test_a_wrong_layer_is_caught(monkeypatch):
    real = _networks._calls

    def wrong(layers, batch, dtype, torch):
        ours, theirs, arrays = real(layers, batch, dtype, torch)
        good = ours[3]
        ours[3] = lambda: good() * np.float32(1.01)
        return ours, theirs, arrays

    monkeypatch.setattr(_networks, "_calls", wrong)
    with pytest.raises(AssertionError, match="differs from the check"):
        _networks.run_network_bench("mnasnet0_5", batch=1, rounds=1, image=32, torch=None)


def _torchvision():
    torch = pytest.importorskip("torch")
    try:
        import torchvision
    except Exception as e:  # noqa: BLE001 (a torchvision built for another torch fails in many ways)
        pytest.skip(f"torchvision not usable: {e}")
    return torch, torchvision


@pytest.mark.parametrize("name", list(COUNTS))
def test_tables_match_torchvision(name):
    torch, torchvision = _torchvision()
    model = getattr(torchvision.models, name)().eval()
    rows = []

    def hook(mod, inputs, output):
        rows.append((mod.in_channels, mod.out_channels, mod.kernel_size[0], mod.stride[0], mod.padding[0],
                     mod.groups, mod.bias is not None, inputs[0].shape[2]))

    for mod in model.modules():
        if isinstance(mod, torch.nn.Conv2d):
            assert mod.kernel_size[0] == mod.kernel_size[1] and mod.dilation == (1, 1)
            mod.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    want = {row: rows.count(row) for row in rows}
    got = {tuple(lay[:8]): lay.count for lay in NETWORKS[name]}
    assert got == want
    assert [tuple(lay[:8]) for lay in NETWORKS[name]] == list(dict.fromkeys(rows))  # forward order
