"""Tests for qlib.prune: masks equal torch.nn.utils.prune's, stay applied through training,
N:M groups, sensitivity scan, and clear errors for bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as tprune
from torch.utils.data import DataLoader, TensorDataset

import qlib
from qlib.bench import count_nonzeros
from qlib.models import course_model
from qlib.prune import (apply_masks, global_masks, layerwise_masks, magnitude_mask,
                        magnitude_prune, nm_mask, nm_masks, prunable_layers, remove_masks,
                        sensitivity_scan, sparsity)
from qlib.train import fit

AMOUNTS = [0.0, 0.1, 0.5, 0.77, 0.9, 1.0]


@pytest.fixture(autouse=True)
def _seed() -> None:
    qlib.set_seed(0)


def _torch_mask(weight: torch.Tensor, amount: float) -> torch.Tensor:
    layer = nn.Linear(1, 1)
    layer.weight = nn.Parameter(weight.clone())
    tprune.l1_unstructured(layer, "weight", amount)
    return layer.weight_mask.bool()


@pytest.mark.parametrize("amount", AMOUNTS)
@pytest.mark.parametrize("shape", [(7,), (10, 13), (8, 3, 5, 5)])
def test_magnitude_mask_equals_l1_unstructured(shape: tuple, amount: float) -> None:
    w = torch.randn(shape)
    mask = magnitude_mask(w, amount)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert torch.equal(mask, _torch_mask(w, amount))
    numel = w.numel()
    assert int((~mask).sum()) == round(amount * numel)
    if 0 < amount < 1:  # every pruned |w| is at most every kept |w|
        assert w[~mask].abs().max() <= w[mask].abs().min()


def test_magnitude_mask_worked_example() -> None:
    w = torch.tensor([[0.1, -2.0], [0.5, -0.05]])
    assert magnitude_mask(w, 0.5).tolist() == [[False, True], [True, False]]
    assert magnitude_mask(w, 0.25).tolist() == [[True, True], [True, False]]


@pytest.mark.parametrize("bad", [-0.01, 1.01, math.nan, math.inf, 2])
def test_sparsity_outside_unit_interval_is_a_value_error(bad: float) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        magnitude_mask(torch.randn(10), bad)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        global_masks(course_model(), bad)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        magnitude_prune(course_model(), bad, scope="layer")


def test_non_numbers_are_type_errors() -> None:
    with pytest.raises(TypeError, match="number"):
        magnitude_mask(torch.randn(4), "0.5")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Tensor"):
        magnitude_mask([1.0, 2.0], 0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        magnitude_mask(torch.empty(0), 0.5)


@pytest.mark.parametrize("model", [nn.Sequential(nn.ReLU(), nn.Flatten()),
                                   nn.BatchNorm2d(3)])
def test_model_without_prunable_layer_is_a_value_error(model: nn.Module) -> None:
    for fn in (lambda: global_masks(model, 0.5), lambda: layerwise_masks(model, 0.5),
               lambda: magnitude_prune(model, 0.5), lambda: sparsity(model),
               lambda: nm_masks(model), lambda: sensitivity_scan(model, [], (0.5,))):
        with pytest.raises(ValueError, match="no prunable layer"):
            fn()


@pytest.mark.parametrize("amount", [0.3, 0.9])
def test_global_masks_equal_global_unstructured(amount: float) -> None:
    model = course_model()
    ours = global_masks(model, amount)
    ref = copy.deepcopy(model)
    layers = prunable_layers(ref)
    tprune.global_unstructured([(m, "weight") for m in layers.values()],
                               pruning_method=tprune.L1Unstructured, amount=amount)
    for name, layer in layers.items():
        assert torch.equal(ours[name], layer.weight_mask.bool()), name
    total = sum(m.numel() for m in ours.values())
    assert sum(int((~m).sum()) for m in ours.values()) == round(amount * total)


def test_global_pruning_spreads_unevenly_layerwise_evenly(baseline: nn.Module) -> None:
    per_layer = sparsity(apply_masks(copy.deepcopy(baseline), layerwise_masks(baseline, 0.8)))
    assert all(abs(v - 0.8) < 1e-3 for v in per_layer.values())
    glob = sparsity(apply_masks(copy.deepcopy(baseline), global_masks(baseline, 0.8)))
    assert abs(glob["total"] - 0.8) < 1e-6
    # the big, redundant Linear loses more than the first conv (few, large weights)
    assert glob["classifier.2"] > 0.8 > glob["features.0"]



def _greedy_capped(weights: dict[str, torch.Tensor], k: int, ceiling: float) -> dict[str, int]:
    """Reference: walk all |w| from the smallest, skip a layer once it holds its cap."""
    caps = {n: math.floor(ceiling * w.numel() + 1e-9) for n, w in weights.items()}
    items = sorted((float(v), n) for n, w in weights.items() for v in w.abs().flatten())
    taken = dict.fromkeys(weights, 0)
    for _, name in items:
        if sum(taken.values()) == k:
            break
        if taken[name] < caps[name]:
            taken[name] += 1
    return taken


@pytest.mark.parametrize("ceiling", [0.5, 0.8, 0.99])
def test_global_masks_ceiling_equals_a_greedy_reference(ceiling: float) -> None:
    model = nn.Sequential(nn.Linear(20, 10), nn.Linear(10, 8), nn.Linear(8, 3))
    with torch.no_grad():  # layers of very different scale, as fan-in makes them
        model[1].weight.mul_(0.05)
        model[2].weight.mul_(0.01)
    weights = {n: m.weight.detach() for n, m in prunable_layers(model).items()}
    for amount in (0.3, 0.5):
        masks = global_masks(model, amount, max_layer_sparsity=ceiling)
        k = round(amount * sum(w.numel() for w in weights.values()))
        pruned = {n: int((~m).sum()) for n, m in masks.items()}
        assert pruned == _greedy_capped(weights, k, ceiling)
        for name, mask in masks.items():  # within a layer: the smallest |w| go
            w = weights[name]
            if (~mask).any() and mask.any():
                assert w[~mask].abs().max() <= w[mask].abs().min()
    with pytest.raises(ValueError, match=r"max_layer_sparsity=0.5 .*allows at most 152"):
        global_masks(model, 0.6, max_layer_sparsity=0.5)


def test_global_pruning_keeps_every_mobilenet_v2_layer_alive() -> None:
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)  # how many layers empty depends on the init: 14 or 15 of 53
    model = tv.models.mobilenet_v2(num_classes=10)
    uncapped = global_masks(model, 0.9, max_layer_sparsity=1.0)
    assert sum(int(m.sum()) == 0 for m in uncapped.values()) == 15  # classifier.1 among them
    assert int(uncapped["classifier.1"].sum()) == 0
    masks = magnitude_prune(model, 0.9, scope="global")  # the default ceiling, 0.99
    assert all(int(m.sum()) > 0 for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.9 * total)
    assert all(int((~m).sum()) <= 0.99 * m.numel() for m in masks.values())
    masks = global_masks(model, 0.9, max_layer_sparsity=0.95)
    assert all(int((~m).sum()) <= 0.95 * m.numel() for m in masks.values())


def test_nan_or_inf_weights_are_refused_naming_them() -> None:
    with pytest.raises(ValueError, match="weight holds NaN or Inf"):
        magnitude_mask(torch.tensor([1.0, float("nan"), 2.0]), 0.5)
    with pytest.raises(ValueError, match="weight holds NaN or Inf"):
        magnitude_mask(torch.tensor([1.0, float("inf")]), 0.5)
    model = course_model()
    with torch.no_grad():
        model.classifier[2].weight[0, 0] = float("nan")
    for fn in (global_masks, layerwise_masks, magnitude_prune):
        with pytest.raises(ValueError, match="weight of layer 'classifier.2' holds NaN"):
            fn(model, 0.5)
    with pytest.raises(ValueError, match="max_layer_sparsity must be in"):
        global_masks(course_model(), 0.5, max_layer_sparsity=1.5)

def test_layerwise_dict_and_unknown_names() -> None:
    model = course_model()
    masks = layerwise_masks(model, {"classifier.2": 0.5})
    assert masks["classifier.2"].float().mean() == 0.5 and masks["features.0"].all()
    with pytest.raises(ValueError, match="no prunable layer named"):
        layerwise_masks(model, {"classifier.9": 0.5})
    with pytest.raises(ValueError, match="scope"):
        magnitude_prune(model, 0.5, scope="channel")


def test_masks_stay_applied_through_fine_tuning_and_bake_in(data) -> None:
    model = course_model()
    masks = magnitude_prune(model, 0.75, scope="layer")
    x, y = data.train.tensors
    loader = DataLoader(TensorDataset(x[:256], y[:256]), batch_size=64)
    before = {n: m.weight_orig.detach().clone() for n, m in prunable_layers(model).items()}
    fit(model, loader, epochs=1, lr=1e-2, progress=False)
    layers = prunable_layers(model)
    for name, layer in layers.items():
        assert not layer.weight_orig.equal(before[name])  # it did train
        assert torch.all(layer.weight[~masks[name]] == 0)
    assert count_nonzeros(model) < 0.3 * sum(p.numel() for p in model.parameters())
    out = model(x[:8])
    remove_masks(model)
    assert not any(k.endswith(("_orig", "_mask")) for k in model.state_dict())
    assert torch.equal(model(x[:8]), out)
    for name, layer in prunable_layers(model).items():
        assert isinstance(layer.weight, nn.Parameter)
        assert torch.equal(layer.weight != 0, masks[name] & (layer.weight != 0))
        assert int((layer.weight == 0).sum()) >= int((~masks[name]).sum())


def test_apply_masks_replaces_an_existing_mask_and_checks_shapes() -> None:
    model = course_model()
    magnitude_prune(model, 0.5)
    new = global_masks(model, 0.9)
    apply_masks(model, new)
    assert abs(sparsity(model)["total"] - 0.9) < 1e-6
    assert torch.equal(model.classifier[2].weight_mask.bool(), new["classifier.2"])
    with pytest.raises(ValueError, match="shape"):
        apply_masks(model, {"classifier.4": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="no prunable layer named"):
        apply_masks(model, {"nope": torch.ones(1, dtype=torch.bool)})


def test_nm_mask_keeps_the_n_largest_of_every_group() -> None:
    w = torch.randn(6, 4, 3, 4)  # rows of 48 = 12 groups of 4
    mask = nm_mask(w, 2, 4)
    groups, gmask = w.reshape(-1, 4).abs(), mask.reshape(-1, 4)
    assert torch.all(gmask.sum(1) == 2)
    # brute force: the two kept entries are the two largest of their group
    top2 = groups.sort(1, descending=True).values[:, 1:2]
    assert torch.all(groups[gmask].view(-1, 2) >= top2)
    assert nm_mask(torch.tensor([[4.0, -1.0, 3.0, 0.5]])).tolist() == [[True, False, True,
                                                                         False]]
    assert nm_mask(torch.randn(3, 8), 1, 4).float().mean() == 0.25


def test_nm_bad_input() -> None:
    with pytest.raises(ValueError, match="multiple of m=4"):
        nm_mask(torch.randn(4, 1, 5, 5))  # 25 inputs per filter
    with pytest.raises(ValueError, match="0 < n <= m"):
        nm_mask(torch.randn(4, 8), 5, 4)
    with pytest.raises(ValueError, match="2 dims"):
        nm_mask(torch.randn(8))
    masks = nm_masks(course_model())
    assert "features.0" not in masks and set(masks) == {"features.4", "classifier.2",
                                                        "classifier.4"}
    with pytest.raises(ValueError, match="divisible"):
        nm_masks(nn.Sequential(nn.Linear(5, 3)))


def test_sensitivity_scan(baseline: nn.Module, data) -> None:
    state = {k: v.clone() for k, v in baseline.state_dict().items()}
    loader = data.loader("val", 500)
    scan = sensitivity_scan(baseline, loader, (0.0, 0.99), progress=False)
    assert list(scan) == ["features.0", "features.4", "classifier.2", "classifier.4"]
    from qlib.train import evaluate

    dense = evaluate(baseline, loader)["accuracy"]
    assert all(curve[0] == dense for curve in scan.values())
    assert scan["features.0"][1] < dense - 0.2  # 99% of the first conv is fatal
    assert all(torch.equal(v, baseline.state_dict()[k]) for k, v in state.items())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sensitivity_scan(baseline, loader, (0.5, 1.5))


def test_masked_model_after_a_training_step_can_be_copied(data) -> None:
    # a masked weight is recomputed with autograd in every forward; deepcopy refuses such
    # tensors, so baked_copy (used by the scan, channel pruning and sparse saving) must cope
    from qlib.prune.channels import prune_channels
    from qlib.prune import baked_copy

    model = course_model()
    magnitude_prune(model, 0.5)
    model.train()
    model(data.train.tensors[0][:4]).sum().backward()
    copy_ = baked_copy(model)
    assert not hasattr(copy_.classifier[2], "weight_mask")
    assert hasattr(model.classifier[2], "weight_mask")
    assert torch.equal(copy_.classifier[2].weight, model.classifier[2].weight.detach())
    assert prune_channels(model, 0.5).features[0].out_channels == 8
    scan = sensitivity_scan(model, data.loader("val", 500), (0.0,), progress=False)
    assert len(scan) == 4
