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
from qlib.prune.channels import CRITERIA, channel_mask, channel_norms, channel_scores, prune_channels
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


def _trained_like(model: nn.Module) -> nn.Module:
    """Give every BN distinct, non-trivial gamma and running statistics (a fresh BN has 1 and 0)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 3 + 0.2)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
    return model.eval()


def test_channel_scores_by_hand() -> None:
    w = torch.tensor([[[[1.0]]], [[[-3.0]]], [[[2.0]]]])
    bn = nn.BatchNorm2d(3, eps=0.0).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, -0.1, 2.0]))
        bn.running_var.copy_(torch.tensor([4.0, 1.0, 16.0]))
    assert channel_scores(w, bn).tolist() == [1.0, 3.0, 2.0]                # the L1 norms
    assert torch.allclose(channel_scores(w, bn, criterion="bn-folded"), torch.tensor([0.5, 0.3, 1.0]))
    assert channel_scores(w, bn, criterion="bn-gamma").tolist() == pytest.approx([1.0, 0.1, 2.0])
    assert torch.allclose(channel_scores(w, bn, criterion="bn-folded", norm=2),
                          channel_scores(w, bn, criterion="bn-folded"))    # one weight per filter


@pytest.mark.parametrize("criterion", ["bn-folded", "bn-gamma"])
def test_bn_criteria_ignore_a_rescaling_that_bn_undoes(criterion: str) -> None:
    """Scale filter c by k and BN's statistics back: same function, same BN-aware ranking."""
    model = _trained_like(course_model())
    conv, bn = model.features[0], model.features[1]
    weakest = int(channel_norms(conv.weight).argmin())
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.features[0].weight[weakest] *= 100.0
        twin.features[1].running_mean[weakest] *= 100.0
        twin.features[1].running_var[weakest] *= 100.0 ** 2
        x = torch.randn(4, 1, 28, 28)
        assert torch.allclose(twin(x), model(x), atol=1e-4)
    before = channel_mask(conv.weight, 0.5)
    after = channel_mask(twin.features[0].weight, 0.5)
    assert not before[weakest] and after[weakest]  # the L1 ranking follows the arbitrary scale
    s0 = channel_scores(conv.weight, bn, criterion=criterion)
    s1 = channel_scores(twin.features[0].weight, twin.features[1], criterion=criterion)
    assert torch.allclose(s0, s1, rtol=1e-4)
    a = prune_channels(model, 0.5, criterion=criterion)
    b = prune_channels(twin, 0.5, criterion=criterion)
    with torch.no_grad():
        assert torch.allclose(a.eval()(x), b.eval()(x), atol=1e-4)


@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_criterion_gives_a_model_equal_to_its_masked_model(criterion: str) -> None:
    model = _trained_like(course_model())
    small = prune_channels(model, 0.5, criterion=criterion).eval()
    ref = copy.deepcopy(model)
    for conv, bn in ((ref.features[0], ref.features[1]), (ref.features[4], ref.features[5])):
        keep = channel_mask(conv.weight, 0.0)  # all True
        scores = channel_scores(conv.weight, bn, criterion=criterion)
        keep[scores.argsort()[:conv.out_channels // 2]] = False
        tprune.custom_from_mask(conv, "weight", keep.view(-1, 1, 1, 1).expand_as(conv.weight))
    x = torch.randn(6, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(small(x), ref.eval()(x), atol=1e-4)
    assert small.config["channels"] == (8, 16)


def test_weight_criterion_is_the_default_and_unchanged(baseline: nn.Module) -> None:
    a = prune_channels(baseline, 0.5)
    b = prune_channels(baseline, 0.5, criterion="weight")
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_bad_criterion() -> None:
    with pytest.raises(ValueError, match="criterion must be one of 'weight', 'bn-folded', 'bn-gamma'"):
        prune_channels(course_model(), 0.5, criterion="l1")
    with pytest.raises(ValueError, match="criterion must be one of"):
        channel_scores(torch.ones(2, 1, 1, 1), criterion="gamma")
    with pytest.raises(ValueError, match="needs the BatchNorm2d"):
        channel_scores(torch.ones(2, 1, 1, 1), None, criterion="bn-folded")
    no_bn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
    with pytest.raises(ValueError, match="needs a BatchNorm2d right after"):
        prune_channels(no_bn, 0.5, criterion="bn-gamma", example_input=torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="affine"):
        channel_scores(torch.ones(2, 1, 1, 1), nn.BatchNorm2d(2, affine=False), criterion="bn-gamma")
