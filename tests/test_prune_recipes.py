"""The pruning recipes against the issue's bar: prune-90 within 1 point of fp32 in at most a
quarter of its file, channel-50 physically smaller and within 1.5 points. Timing is shown
in notebook 05, never asserted here."""

from __future__ import annotations

import torch
from torch import nn

from qlib.bench import count_macs, model_size_bytes
from qlib.recipes.prune import channel_50, prune_90
from qlib.train import evaluate


def _accuracy(model, data) -> float:
    return evaluate(model, data.loader("test", 256))["accuracy"]


def test_prune_90(baseline: nn.Module, data) -> None:
    state = {k: v.clone() for k, v in baseline.state_dict().items()}
    variant = prune_90(baseline, data)
    assert variant.name == "prune-90" and variant.technique == "pruning"
    assert variant.size_bytes <= 0.25 * model_size_bytes(baseline)
    assert variant.nonzeros <= 0.11 * variant.params
    assert abs(variant.extra["sparsity"]["total"] - 0.9) < 1e-3
    assert _accuracy(variant.model, data) >= _accuracy(baseline, data) - 0.01
    assert all(torch.equal(v, baseline.state_dict()[k]) for k, v in state.items())


def test_channel_50(baseline: nn.Module, data) -> None:
    variant = channel_50(baseline, data)
    x = data.test.tensors[0][:1]
    assert variant.extra["channels"] == (8, 16)
    assert variant.size_bytes < 0.6 * model_size_bytes(baseline)
    assert variant.params == variant.nonzeros < 0.5 * sum(p.numel() for p in
                                                          baseline.parameters())
    assert count_macs(variant.model, x) < 0.5 * count_macs(baseline, x)
    assert _accuracy(variant.model, data) >= _accuracy(baseline, data) - 0.015
