"""Unstructured pruning: magnitude masks (per layer, global, N:M), schedules, sensitivity.

Introduced in notebook 05. A *mask* is a bool tensor shaped like a weight, ``False`` where
the weight is pruned; the pruned model computes with ``weight * mask``. The prunable
weights are those of ``Conv2d`` and ``Linear`` layers (biases and batch norm are tiny and
stay dense). Masks are kept applied through fine-tuning with PyTorch's own
reparametrization (``torch.nn.utils.prune``: ``weight = weight_orig * weight_mask`` is
recomputed by a forward pre-hook before every call, so the gradient of a pruned entry is
zero and an optimizer step cannot revive it); :func:`remove_masks` bakes the zeros in.

A mask changes neither the file size nor the latency: the zeros are still stored and
multiplied. :mod:`qlib.prune.sparse` stores only the survivors; :mod:`qlib.prune.channels` removes
whole channels so that the dense model itself becomes smaller and faster;
:mod:`qlib.prune.schedule` prunes step by step during training.

>>> w = torch.tensor([[0.1, -2.0], [0.5, -0.05]])
>>> magnitude_mask(w, 0.5)
tensor([[False,  True],
        [ True, False]])
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import prune as tprune
from tqdm.auto import tqdm

from .._util import (WEIGHT_LAYERS, check_finite, check_sparsity, warn_other_convs,
                     weight_layers)
from ..train import evaluate

__all__ = ["PRUNABLE", "prunable_layers", "magnitude_mask", "layerwise_masks",
           "global_masks", "nm_mask", "nm_masks", "apply_masks", "remove_masks",
           "baked_copy", "magnitude_prune", "sparsity", "sensitivity_scan"]

#: Layer types whose ``weight`` is pruned (the same layers quantization works on).
PRUNABLE = WEIGHT_LAYERS

Masks = dict[str, Tensor]  # layer name -> bool mask shaped like that layer's weight


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The ``Conv2d`` and ``Linear`` layers of ``model`` by name, in registration order.

    Introduced in notebook 05. Raises ``ValueError`` when there is none.

    >>> list(prunable_layers(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))))
    ['0', '2']
    """
    layers = weight_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no prunable layer; pruning works on "
                         "the weights of Conv2d and Linear layers")
    return layers


def _weight(layer: nn.Module) -> Tensor:
    """The weight the layer computes with (``weight_orig * weight_mask`` when masked)."""
    return layer.weight.detach()


def _smallest(scores: Tensor, k: int) -> Tensor:
    """Keep-mask of a 1-d score tensor: ``False`` on its k smallest entries."""
    mask = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        mask[torch.topk(scores, k, largest=False).indices] = False
    return mask


def magnitude_mask(weight: Tensor, sparsity: float) -> Tensor:
    """Keep-mask of one tensor: ``False`` on the k = round(sparsity * numel) smallest |w|.

    Introduced in notebook 05. Same shape as ``weight``; the same mask as
    ``torch.nn.utils.prune.l1_unstructured(amount=sparsity)``. ``sparsity`` in [0, 1].
    ValueError for an empty weight or one holding NaN / Inf (|NaN| has no rank).

    >>> magnitude_mask(torch.tensor([3.0, -1.0, 0.5, 2.0]), 0.5)
    tensor([ True, False, False,  True])
    """
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    sparsity = check_sparsity(sparsity)
    if weight.numel() == 0:
        raise ValueError("weight is empty; a mask needs at least one entry")
    check_finite(weight, "weight")
    k = round(sparsity * weight.numel())  # entries to prune
    return _smallest(weight.detach().abs().flatten(), k).view_as(weight)


def layerwise_masks(model: nn.Module, sparsity: float | dict[str, float]) -> Masks:
    """One :func:`magnitude_mask` per prunable layer: each loses the same fraction.

    Introduced in notebook 05. ``sparsity`` is one number for all layers or a dict
    ``{layer name: sparsity}`` (layers not named stay dense).

    >>> m = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 2))
    >>> [int((~mask).sum()) for mask in layerwise_masks(m, 0.5).values()]
    [50, 10]
    """
    layers = prunable_layers(model)
    warn_other_convs(model, "pruning")
    per_layer = sparsity if isinstance(sparsity, dict) else dict.fromkeys(layers, sparsity)
    unknown = set(per_layer) - set(layers)
    if unknown:
        raise ValueError(f"no prunable layer named {sorted(unknown)}; layers: {list(layers)}")
    weights = _checked_weights(layers)
    return {name: magnitude_mask(weights[name], per_layer.get(name, 0.0)) for name in layers}


def _checked_weights(layers: dict[str, nn.Module]) -> dict[str, Tensor]:
    """Each layer's weight, or ValueError naming the first layer holding NaN / Inf."""
    return {name: check_finite(_weight(m), f"the weight of layer {name!r}")
            for name, m in layers.items()}


def global_masks(model: nn.Module, sparsity: float, *,
                 max_layer_sparsity: float = 0.99) -> Masks:
    """Masks that prune the k = round(sparsity * N) smallest |w| over all N prunable weights,
    but at most ``max_layer_sparsity`` of any one layer.

    Introduced in notebook 05. One threshold for the whole model, so layers with many small
    weights (the big ``Linear``) lose more than layers with few large ones (the first conv).
    Same masks as ``torch.nn.utils.prune.global_unstructured(..., L1Unstructured)`` while no
    layer reaches the ceiling. Why a ceiling: |w| is comparable only between layers of
    similar fan-in (init and training scale weights about as 1 / sqrt(fan-in)); in a real
    network one threshold can empty whole layers (MobileNet-V2 at 90%: 15 of 53, the
    classifier among them) and the output becomes a constant. A layer of n_l weights loses
    at most c_l = floor(max_layer_sparsity * n_l); the surplus goes to the other layers
    under one common threshold (the k smallest |w| subject to the caps), so exactly k are
    pruned. ValueError when sum_l c_l < k; ``max_layer_sparsity=1.0`` lifts the ceiling.

    >>> m = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 2))
    >>> sum(int((~mask).sum()) for mask in global_masks(m, 0.5).values())
    60
    >>> with torch.no_grad(): _ = m[1].weight.mul_(1e-3)  # a layer of much smaller weights
    >>> [int((~k).sum()) for k in global_masks(m, 0.5, max_layer_sparsity=1.0).values()]
    [40, 20]
    >>> [int((~k).sum()) for k in global_masks(m, 0.5).values()]  # 19 of 20 at most
    [41, 19]
    """
    layers = prunable_layers(model)
    warn_other_convs(model, "pruning")
    sparsity = check_sparsity(sparsity)
    ceiling = check_sparsity(max_layer_sparsity, "max_layer_sparsity")
    weights = _checked_weights(layers)
    sizes = {name: w.numel() for name, w in weights.items()}
    total = sum(sizes.values())
    k = round(sparsity * total)
    caps = {name: math.floor(ceiling * n + 1e-9) for name, n in sizes.items()}
    if sum(caps.values()) < k:
        raise ValueError(f"sparsity {sparsity} prunes {k} of {total} weights, but "
                         f"max_layer_sparsity={ceiling} (the most any one layer may lose) "
                         f"allows at most {sum(caps.values())}; lower sparsity or raise "
                         "max_layer_sparsity (1.0 allows emptying a layer)")
    capped: set[str] = set()
    while True:  # each pass caps at least one more layer, or ends
        free = [name for name in weights if name not in capped]
        budget = k - sum(caps[name] for name in capped)
        flat = _smallest(torch.cat([weights[n].abs().flatten() for n in free]), budget)
        pruned = dict(zip(free, flat.split([sizes[n] for n in free])))
        over = {name for name in free if sizes[name] - int(pruned[name].sum()) > caps[name]}
        if not over:
            break
        capped |= over  # a layer over its cap in this pass is at its cap in the answer
    return {name: (_smallest(w.abs().flatten(), caps[name]) if name in capped
                   else pruned[name]).view_as(w) for name, w in weights.items()}


def nm_mask(weight: Tensor, n: int = 2, m: int = 4) -> Tensor:
    """N:M mask: in every group of m consecutive inputs of an output row keep the n largest |w|.

    Introduced in notebook 05. Rows are ``weight.reshape(out, -1)`` (for a conv: the
    in_channels * kh * kw inputs of one filter), cut into groups of m; sparsity is 1 - n/m.
    2:4 is the pattern that NVIDIA's sparse tensor cores run at up to 2x speed. Exactly n
    kept per group; ties keep the lower index. Pass importance scores instead of weights
    (Wanda's |W| * ||X||, notebook 10): they are non-negative, so |scores| = scores.

    >>> nm_mask(torch.tensor([[4.0, -1.0, 3.0, 0.5]]))
    tensor([[ True, False,  True, False]])
    """
    if not isinstance(weight, Tensor) or weight.ndim < 2:
        raise ValueError("nm_mask needs a weight tensor with at least 2 dims (out, in, ...)")
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n <= m):
        raise ValueError(f"N:M sparsity needs integers 0 < n <= m (n kept of every m), got "
                         f"n={n!r}, m={m!r}")
    row = weight[0].numel()
    if row % m:
        raise ValueError(f"each output row has {row} inputs, not a multiple of m={m}; N:M "
                         "sparsity needs the row length divisible by m")
    groups = weight.detach().abs().reshape(-1, m)  # (out * row / m, m)
    keep = torch.argsort(groups, dim=1, descending=True, stable=True)[:, :n]
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, keep, True)
    return mask.view_as(weight)


def nm_masks(model: nn.Module, n: int = 2, m: int = 4) -> Masks:
    """:func:`nm_mask` for every prunable layer whose row length is a multiple of m.

    Introduced in notebook 05. Layers that cannot take the pattern (the first conv of the
    course model has 1 * 5 * 5 = 25 inputs per filter) are left out, so they stay dense.

    >>> list(nm_masks(nn.Sequential(nn.Conv2d(1, 4, 5), nn.Flatten(), nn.Linear(16, 2))))
    ['2']
    """
    layers = prunable_layers(model)
    warn_other_convs(model, "pruning")
    masks = {name: nm_mask(_weight(layer), n, m) for name, layer in layers.items()
             if layer.weight[0].numel() % m == 0}
    if not masks:
        raise ValueError(f"no prunable layer has a row length divisible by m={m}")
    return masks


def apply_masks(model: nn.Module, masks: Masks) -> nn.Module:
    """Make ``model`` compute with ``weight * mask`` from now on, also while it trains.

    Introduced in notebook 05. In place; returns ``model``. Uses PyTorch's pruning
    reparametrization (``weight_orig`` parameter, ``weight_mask`` buffer, a forward
    pre-hook): the gradient of a pruned entry is 0, so fine-tuning keeps it pruned. A layer
    that is already masked gets its mask replaced.

    >>> m = apply_masks(nn.Sequential(nn.Linear(4, 2)), {"0": torch.eye(2, 4, dtype=torch.bool)})
    >>> int(m[0].weight.count_nonzero()), sorted(n for n, _ in m.named_buffers())
    (2, ['0.weight_mask'])
    """
    layers = prunable_layers(model)
    for name, mask in masks.items():
        if name not in layers:
            raise ValueError(f"no prunable layer named {name!r}; layers: {list(layers)}")
        layer = layers[name]
        if mask.shape != layer.weight.shape:
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, the weight "
                             f"{tuple(layer.weight.shape)}")
        if tprune.is_pruned(layer) and hasattr(layer, "weight_mask"):
            layer.weight_mask.copy_(mask)  # the hook reads this buffer before every call
            with torch.no_grad():
                layer.weight = layer.weight_orig * layer.weight_mask
        else:
            tprune.custom_from_mask(layer, "weight", mask.to(layer.weight.dtype))
    return model


def remove_masks(model: nn.Module) -> nn.Module:
    """Bake the masks in: ``weight`` becomes a plain parameter holding ``weight * mask``.

    Introduced in notebook 05. In place; returns ``model``. Layers without a mask are left
    alone. The state dict is then the ordinary one (with zeros in it).

    >>> m = nn.Sequential(nn.Linear(4, 2)); _ = magnitude_prune(m, 0.5)
    >>> sorted(remove_masks(m).state_dict())
    ['0.bias', '0.weight']
    """
    for layer in model.modules():
        if hasattr(layer, "weight_mask") and hasattr(layer, "weight_orig"):
            tprune.remove(layer, "weight")
    return model


def baked_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with its masks baked in; ``model`` keeps its masks.

    Introduced in notebook 05. (A masked layer's ``weight`` is recomputed from
    ``weight_orig * weight_mask`` with autograd, which ``copy.deepcopy`` refuses; it is
    recomputed here without autograd first.)

    >>> m = nn.Linear(4, 2); _ = magnitude_prune(m, 0.5); hasattr(baked_copy(m), "weight_mask")
    False
    """
    with torch.no_grad():
        for layer in model.modules():
            if hasattr(layer, "weight_mask") and hasattr(layer, "weight_orig"):
                layer.weight = layer.weight_orig * layer.weight_mask
    return remove_masks(copy.deepcopy(model))


def magnitude_prune(model: nn.Module, sparsity: float, *, scope: str = "global",
                    max_layer_sparsity: float = 0.99) -> Masks:
    """Compute magnitude masks (``scope`` "global" or "layer") and apply them in place.

    Introduced in notebook 05. Returns the masks. Follow with fine-tuning (the masks stay
    applied) and :func:`remove_masks`. ``max_layer_sparsity`` is :func:`global_masks`'
    per-layer ceiling (global scope only: "layer" prunes each layer by ``sparsity``).

    >>> m = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 2))
    >>> _ = magnitude_prune(m, 0.75, scope="layer"); sparsity(m)["total"]
    0.75
    """
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    masks = (global_masks(model, sparsity, max_layer_sparsity=max_layer_sparsity)
             if scope == "global" else layerwise_masks(model, sparsity))
    apply_masks(model, masks)
    return masks


def sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of exact zeros in each prunable weight, plus ``"total"`` over all of them.

    Introduced in notebook 05. Reads the weights the model computes with (masked or baked).

    >>> m = nn.Linear(4, 1); _ = nn.init.zeros_(m.weight); sparsity(m)
    {'': 1.0, 'total': 1.0}
    """
    layers = prunable_layers(model)
    out, zeros, total = {}, 0, 0
    for name, layer in layers.items():
        w = _weight(layer)
        z = int((w == 0).sum())
        out[name] = z / w.numel()
        zeros, total = zeros + z, total + w.numel()
    out["total"] = zeros / total
    return out


@torch.no_grad()
def sensitivity_scan(model: nn.Module, loader: Iterable, sparsities: Sequence[float] = (
        0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98), *, progress: bool = True
        ) -> dict[str, list[float]]:
    """Accuracy on ``loader`` when one layer at a time is magnitude-pruned, others dense.

    Introduced in notebook 05. Returns ``{layer name: [accuracy at each sparsity]}``: a
    layer whose curve drops early is sensitive and should be pruned less. ``model`` is not
    changed (each layer's weight is restored after its scan). Cost: one evaluation of
    ``loader`` per layer and sparsity.

    >>> scan = sensitivity_scan(baseline, data.loader("val"), (0.0, 0.9))  # doctest: +SKIP
    >>> scan["features.0"]                                                  # doctest: +SKIP
    [0.98, 0.61]
    """
    for s in sparsities:
        check_sparsity(s)
    model = baked_copy(model).eval()
    layers = prunable_layers(model)
    warn_other_convs(model, "pruning")
    result: dict[str, list[float]] = {}
    for name, layer in tqdm(layers.items(), desc="sensitivity", disable=not progress,
                            leave=False):
        original = layer.weight.detach().clone()
        result[name] = []
        for s in sparsities:
            layer.weight.copy_(original * magnitude_mask(original, s))
            result[name].append(evaluate(model, loader)["accuracy"])
        layer.weight.copy_(original)
    return result
