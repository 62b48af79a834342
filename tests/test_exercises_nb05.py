"""Notebook 05's in-section exercise checker, run on two correct answers and one wrong one.

Mirrors the cell ``ex1-check`` of notebooks/05_pruning.ipynb (exercise 1, a magnitude mask per
output channel): the same reference (``prune.magnitude_mask`` on each row), the same fixed and
seeded random inputs, the same tolerances (check_function's defaults). If that cell changes,
change this file with it.
"""

from __future__ import annotations

import torch
from torch import nn

from qlib import prune
from qlib.course import check


def row_reference(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    rows = weight.reshape(weight.shape[0], -1)
    return torch.stack([prune.magnitude_mask(r, sparsity) for r in rows]).view_as(weight)


def random_weight(g: torch.Generator):
    shapes = [(5, 37), (8, 12), (4, 3, 3, 3)]
    shape = shapes[int(torch.randint(0, 3, (1,), generator=g))]
    return torch.randn(shape, generator=g), float(torch.rand(1, generator=g))


def _check(answer, baseline: nn.Module) -> check.CheckResult:
    layers = prune.prunable_layers(baseline)
    fixed = [(torch.tensor([[3.0, -1.0, 0.5, 2.0], [0.1, 9.0, -8.0, 7.0]]), 0.5),
             (torch.tensor([[0.1, -0.2, 0.3, -0.4, 0.5]]), 0.5),
             (layers["features.0"].weight.detach(), 0.0), (layers["features.0"].weight.detach(), 1.0),
             (layers["features.4"].weight.detach(), 0.7), (layers["classifier.2"].weight.detach(), 0.9)]
    return check.check_function(answer, row_reference, fixed, random=random_weight, trials=20)


def mask_by_argsort(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The notebook's solution: the k smallest of each row by argsort, scattered to False."""
    rows = weight.detach().abs().reshape(weight.shape[0], -1)
    k = round(sparsity * rows.shape[1])
    keep = torch.ones_like(rows, dtype=torch.bool)
    keep.scatter_(1, rows.argsort(dim=1)[:, :k], False)
    return keep.view_as(weight)


def mask_by_threshold(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Another correct one: per row, keep |w| above the k-th smallest (k = 0: keep all)."""
    rows = weight.detach().abs().reshape(weight.shape[0], -1)
    k = round(sparsity * rows.shape[1])
    if k == 0:
        return torch.ones_like(weight, dtype=torch.bool)
    threshold = rows.kthvalue(k, dim=1, keepdim=True).values
    return (rows > threshold).view_as(weight)


def mask_whole_tensor(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Wrong: one threshold for the whole tensor (the layer-wise mask), not one per row."""
    return prune.magnitude_mask(weight.detach(), sparsity)


def test_two_correct_masks_pass(baseline: nn.Module) -> None:
    for answer in (mask_by_argsort, mask_by_threshold):
        result = _check(answer, baseline)
        assert result.passed, (answer.__name__, result)


def test_one_threshold_for_the_whole_tensor_fails(baseline: nn.Module) -> None:
    result = _check(mask_whole_tensor, baseline)
    assert not result.passed, result
