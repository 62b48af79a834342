"""qlib.arch.mobile and the notebook-11 recipes: shapes, MAC arithmetic against count_macs,
arithmetic intensity, BN folding of depthwise convs, and the mobile rows' variants."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qlib.arch import (MobileCNN, depthwise_layers, layer_costs, mobile_model, separable_ratio,
                       train_mobile)
from qlib.bench import count_macs, count_parameters
from qlib.quant import fold_batchnorm
from qlib.recipes import arch as arch_recipes
from qlib.recipes import get_recipe


def test_shapes_and_layers():
    m = mobile_model().eval()
    assert m(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert list(depthwise_layers(m)) == ["features.3", "features.9", "features.15"]
    assert all(isinstance(m.features[i + 2], nn.ReLU6) for i in range(0, len(m.features), 3))
    assert count_parameters(m) == 9034
    assert MobileCNN((8, 16), (2,), num_classes=3, in_channels=3)(torch.zeros(1, 3, 20, 20)).shape == (1, 3)


@pytest.mark.parametrize("c_in,c_out,k", [(16, 32, 3), (64, 64, 3), (8, 24, 5)])
def test_separable_ratio_is_howards_formula(c_in, c_out, k):
    x = torch.zeros(1, c_in, 9, 9)
    block = nn.Sequential(nn.Conv2d(c_in, c_in, k, padding=k // 2, groups=c_in),
                          nn.Conv2d(c_in, c_out, 1))
    standard = nn.Conv2d(c_in, c_out, k, padding=k // 2)
    assert count_macs(block, x) / count_macs(standard, x) == pytest.approx(separable_ratio(c_out, k))


def test_layer_costs_count_macs_and_bytes():
    m = mobile_model()
    x = torch.zeros(2, 1, 28, 28)
    rows = layer_costs(m, x)
    assert sum(r["macs"] for r in rows) * 2 == count_macs(m, x)
    kinds = {r["name"]: r["kind"] for r in rows}
    assert kinds["features.0"] == "conv" and kinds["features.3"] == "depthwise"
    assert kinds["features.6"] == "pointwise" and kinds["classifier.2"] == "linear"
    dw = max(r["intensity"] for r in rows if r["kind"] == "depthwise")
    pw = min(r["intensity"] for r in rows if r["kind"] == "pointwise")
    assert dw < pw
    # depthwise 3x3 on 16 channels at stride 2: 14*14*16*9 MACs; bytes = 4*(144 + 16*28*28 + 16*14*14)
    r = next(r for r in rows if r["name"] == "features.3")
    assert r["macs"] == 14 * 14 * 16 * 9
    assert r["bytes"] == 4 * (144 + 16 * 28 * 28 + 16 * 14 * 14)
    assert r["intensity"] == pytest.approx(r["macs"] / r["bytes"])


def test_layer_costs_bad_input():
    with pytest.raises(ValueError, match="Conv2d and Linear"):
        layer_costs(nn.Sequential(nn.ReLU()), torch.zeros(1, 3))
    with pytest.raises(TypeError):
        layer_costs("not a model", torch.zeros(1, 3))


def test_bad_configs():
    with pytest.raises(ValueError, match="strides"):
        MobileCNN((8, 16, 32), (2,))
    with pytest.raises(ValueError, match=">= 1"):
        MobileCNN((8, 0), (1,))
    with pytest.raises(ValueError, match="n_out"):
        separable_ratio(0, 3)
    with pytest.raises(ValueError, match="unknown mobile settings"):
        train_mobile(None, epoch=3)


def test_bn_folds_into_depthwise_convs():
    torch.manual_seed(0)
    m = mobile_model()
    for bn in (b for b in m.modules() if isinstance(b, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.01, 2)
        bn.weight.data.uniform_(0.5, 1.5)
    m.eval()
    folded = fold_batchnorm(m)
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(folded(x), m(x), atol=1e-4, rtol=1e-4)
    assert not any(isinstance(b, nn.BatchNorm2d) for b in folded.modules())


def test_recipes_are_registered_with_their_note():
    for name in ("lowrank-fc1", "mobile-fp32", "mobile-w8-per-tensor", "mobile-w8-per-channel"):
        assert get_recipe(name).name == name
    assert get_recipe("mobile-fp32").description.startswith("different architecture")


@pytest.mark.parametrize("name,per_channel", [("mobile-w8-per-tensor", False),
                                              ("mobile-w8-per-channel", True)])
def test_mobile_w8_variants_are_simulated_and_say_so(monkeypatch, name, per_channel):
    torch.manual_seed(0)
    untrained = mobile_model().eval()
    monkeypatch.setattr(arch_recipes, "train_mobile", lambda data, progress: untrained)
    v = get_recipe(name).fn(None, None)
    assert v.execution == "simulated" and v.technique == "architecture"
    assert v.extra["note"] == arch_recipes.MOBILE_NOTE and "different architecture" in v.extra["note"]
    assert v.extra["granularity"] == ("per-channel" if per_channel else "per-tensor")
    assert v.size_bytes < 0.5 * sum(p.numel() * 4 for p in untrained.parameters()) + 20000
    assert v.model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
