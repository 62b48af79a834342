"""The Deep Compression recipe (notebook 08)."""

from __future__ import annotations

from torch import nn

from ..data import Splits
from ..measure import count_nonzeros, count_parameters
from ..pipeline import deep_compress
from .registry import Variant

__all__ = ["deep_compression"]


def deep_compression(baseline: nn.Module, data: Splits) -> Variant:
    """Prune 92%, fine-tune, share weights with per-layer bits, Huffman-code: one file."""
    model, blob, info = deep_compress(baseline, data)
    return Variant("deep-compression", "pipeline", model, len(blob), count_parameters(model),
                   count_nonzeros(model), info)
