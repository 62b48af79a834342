"""The efficient-architecture recipes (notebook 11): low rank, and a MobileNet-style model.

``lowrank-fc1`` is derived from the baseline (its first fully connected layer factored by
truncated SVD, then fine-tuned). The three ``mobile-*`` rows are NOT derived from the
baseline: they are a different architecture (:class:`qlib.arch.MobileCNN`) trained from
scratch on the same data and budget of care, and their ``extra["note"]`` says so; the
report's comparisons with the baseline (agreement, McNemar) are then between two models,
not between a model and its compressed copy.
"""

from __future__ import annotations

import torch
from torch import nn

from ..arch import LOWRANK_RECIPE, finetune_lowrank, train_mobile
from ..data import Splits
from ..quant import ptq
from .quant import packed_variant
from .registry import Variant

__all__ = ["LOWRANK_FC1", "MOBILE_NOTE", "lowrank_fc1", "mobile_fp32", "mobile_w8_per_tensor",
           "mobile_w8_per_channel"]

#: The layer and rank of ``lowrank-fc1`` (the rank notebook 11 recommends).
LOWRANK_FC1 = {"classifier.2": 16}

#: What the mobile rows carry in ``extra["note"]``.
MOBILE_NOTE = ("different architecture: MobileNet-style depthwise-separable CNN trained from "
               "scratch, not derived from the baseline")


def lowrank_fc1(baseline: nn.Module, data: Splits) -> Variant:
    """fc1 (800 -> 128) as a rank-16 product of two Linear layers, fine-tuned 2 epochs."""
    model = finetune_lowrank(baseline, data, LOWRANK_FC1, progress=False)
    return Variant.from_module("lowrank-fc1", "low rank", model, ranks=dict(LOWRANK_FC1),
                               finetune=dict(LOWRANK_RECIPE))


def mobile_fp32(baseline: nn.Module, data: Splits) -> Variant:
    """The depthwise-separable model in fp32 (``baseline`` is not used: trained from scratch)."""
    return Variant.from_module("mobile-fp32", "architecture", train_mobile(data, progress=False),
                               note=MOBILE_NOTE)


def _mobile_w8(name: str, data: Splits, per_channel: bool) -> Variant:
    torch.manual_seed(0)
    q = ptq(train_mobile(data, progress=False), None, 8, None, per_channel=per_channel)
    v = packed_variant(name, q, weight_bits=8, act_bits=None, fold_bn=True,
                       granularity="per-channel" if per_channel else "per-tensor",
                       note=MOBILE_NOTE)
    v.technique = "architecture"
    return v


def mobile_w8_per_tensor(baseline: nn.Module, data: Splits) -> Variant:
    """BN folded, 8-bit weights with ONE scale per tensor, float activations (simulated)."""
    return _mobile_w8("mobile-w8-per-tensor", data, per_channel=False)


def mobile_w8_per_channel(baseline: nn.Module, data: Splits) -> Variant:
    """BN folded, 8-bit weights with one scale per output channel, float activations."""
    return _mobile_w8("mobile-w8-per-channel", data, per_channel=True)
