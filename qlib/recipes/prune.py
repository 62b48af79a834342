"""The pruning recipes of the report: ``prune-90`` (sparse file) and ``channel-50`` (smaller net).

Introduced in notebook 05. Each recipe starts from a copy of the trained baseline, prunes,
fine-tunes briefly with :func:`qlib.train.fit` (3 epochs at a low learning rate, a quarter
of the baseline's 12) and returns the model as it is shipped:

    prune-90    90% of all conv / linear weights removed by global magnitude, masks kept
                through fine-tuning, stored as bitmask + float32 values (qlib.prune.sparse) and
                loaded back from that file; same dense compute, about 7x smaller file
    channel-50  half the output channels of both convs removed by L1 norm (qlib.prune.channels):
                a dense SmallCNN((8, 16)) with fewer parameters, MACs and milliseconds
"""

from __future__ import annotations

import copy
import io

import torch
from torch import nn

from ..data import Splits
from ..measure import count_nonzeros, count_parameters
from ..prune import load_sparse, magnitude_prune, prune_channels, remove_masks, save_sparse, sparsity
from ..train import fit
from .registry import Variant

__all__ = ["prune_90", "channel_50", "FINETUNE"]

#: Fine-tuning budget shared by both recipes (epochs, peak learning rate, batch size).
FINETUNE = dict(epochs=3, lr=1e-3, batch_size=64)


def _finetune(model: nn.Module, data: Splits, desc: str) -> None:
    """Fine-tune on one thread: the same numbers on any machine (float sums depend on the
    thread count), and no slowdown from threads competing for busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit(model, data.loader("train", FINETUNE["batch_size"]), epochs=FINETUNE["epochs"],
            lr=FINETUNE["lr"], progress=False, desc=desc)
    finally:
        torch.set_num_threads(threads)


def prune_90(baseline: nn.Module, data: Splits) -> Variant:
    """90% global unstructured magnitude pruning, fine-tuned with masks, stored sparse."""
    model = copy.deepcopy(baseline)
    magnitude_prune(model, 0.9, scope="global")
    _finetune(model, data, "prune-90")
    remove_masks(model)
    buffer = io.BytesIO()
    size = save_sparse(model, buffer, values="float32")
    buffer.seek(0)
    shipped = load_sparse(buffer, copy.deepcopy(baseline))  # what a user loads from the file
    return Variant("prune-90", "pruning", shipped, size, count_parameters(shipped),
                   count_nonzeros(shipped),
                   {"format": "bitmask + float32 values", "sparsity": sparsity(shipped),
                    "finetune": dict(FINETUNE)})


def channel_50(baseline: nn.Module, data: Splits) -> Variant:
    """Structured pruning: 50% of each conv's output channels removed, then fine-tuned."""
    model = prune_channels(baseline, 0.5, norm=1)
    _finetune(model, data, "channel-50")
    channels = getattr(model, "config", {}).get("channels")
    return Variant.from_module("channel-50", "pruning", model, channels=channels,
                               finetune=dict(FINETUNE))
