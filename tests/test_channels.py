"""Tests for qlib.prune.channels: the channels kept equal torch.nn.utils.prune.ln_structured's, and
the physically smaller model computes exactly what the masked model computes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as tprune

import qlib
from qlib.bench import count_macs, count_parameters
from qlib.prune.channels import channel_mask, channel_norms, prune_channels
from qlib.models import SmallCNN, course_model, mlp, resnet18


@pytest.fixture(autouse=True)
def _seed() -> None:
    qlib.set_seed(0)


@pytest.mark.parametrize("norm", [1, 2])
@pytest.mark.parametrize("amount", [0.0, 0.25, 0.5, 0.9])
def test_channel_mask_equals_ln_structured(norm: int, amount: float) -> None:
    conv = nn.Conv2d(3, 20, 3)
    ours = channel_mask(conv.weight, amount, norm)
    tprune.ln_structured(conv, "weight", amount, n=norm, dim=0)
    ref = conv.weight_mask.flatten(1).bool()  # (C_out, rest), whole rows kept or cut
    assert torch.equal(ref.all(1), ref.any(1))
    assert torch.equal(ours, ref.all(1))
    assert int((~ours).sum()) == round(amount * 20)


def test_channel_norms_by_hand() -> None:
    w = torch.tensor([[3.0, -4.0], [1.0, 0.0]])
    assert channel_norms(w, 1).tolist() == [7.0, 1.0]
    assert channel_norms(w, 2).tolist() == [5.0, 1.0]
    with pytest.raises(ValueError, match="norm must be 1"):
        channel_norms(w, 3)


def _masked(model: nn.Module, amount: float, norm: int) -> nn.Module:
    ref = copy.deepcopy(model)
    for m in ref.modules():
        if isinstance(m, nn.Conv2d) and m is not None:
            tprune.ln_structured(m, "weight", amount, n=norm, dim=0)
    return ref.eval()


@pytest.mark.parametrize("norm", [1, 2])
def test_pruned_model_equals_masked_model(baseline: nn.Module, data, norm: int) -> None:
    state = {k: v.clone() for k, v in baseline.state_dict().items()}
    small = prune_channels(baseline, 0.5, norm=norm).eval()
    x = data.test.tensors[0][:64]
    with torch.no_grad():
        assert torch.allclose(small(x), _masked(baseline, 0.5, norm)(x), atol=1e-4)
    # a smaller dense SmallCNN((8, 16)): same state-dict layout, fewer params and MACs
    assert small.config["channels"] == (8, 16)
    SmallCNN((8, 16)).load_state_dict(small.state_dict())
    assert count_parameters(small) < 0.5 * count_parameters(baseline)
    assert count_macs(small, x[:1]) < 0.5 * count_macs(baseline, x[:1])
    assert all(torch.equal(v, baseline.state_dict()[k]) for k, v in state.items())


def test_conv_bias_without_bn_is_folded_into_the_next_layer() -> None:
    # conv(bias) -> ReLU -> conv(no bias, no BN) -> flatten -> linear
    model = nn.Sequential(nn.Conv2d(2, 6, 3, bias=True), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(6, 4, 3, bias=False), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 2 * 2, 3))
    with torch.no_grad():
        model[0].bias.uniform_(0.5, 1.0)  # removed channels output relu(bias) > 0
    x = torch.randn(5, 2, 10, 10)
    small = prune_channels(model, 0.5, example_input=x)
    assert small[0].out_channels == 3 and small[3].in_channels == 3
    assert small[3].out_channels == 2 and small[6].in_features == 8
    assert small[3].bias is not None  # created to hold the folded constant
    with torch.no_grad():
        assert torch.allclose(small(x), _masked(model, 0.5, 1)(x), atol=1e-5)


def test_per_layer_amounts() -> None:
    small = prune_channels(course_model(), {"features.4": 0.75})
    assert small.features[0].out_channels == 16 and small.features[4].out_channels == 8
    assert small.classifier[2].in_features == 8 * 25


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="nothing to channel-prune"):
        prune_channels(mlp(), 0.5, example_input=torch.zeros(1, 1, 28, 28))
    with pytest.raises(ValueError, match="one after another"):
        prune_channels(resnet18(10), 0.5, example_input=torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="every channel"):
        prune_channels(course_model(), 1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        prune_channels(course_model(), 1.5)
    with pytest.raises(ValueError, match="cannot channel-prune"):
        prune_channels(course_model(), {"classifier.2": 0.5})
    with pytest.raises(ValueError, match="example_input"):
        prune_channels(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 2, 3)), 0.5)
    with pytest.raises(TypeError, match="nn.Module"):
        prune_channels("model", 0.5)  # type: ignore[arg-type]
