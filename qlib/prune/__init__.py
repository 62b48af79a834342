"""Pruning: removing weights, from single entries to whole channels (notebooks 05 and 10).

The contract name (fixed: tests and notebooks rely on it)::

    from qlib.prune import magnitude_mask

Modules, one idea each:

    masks      magnitude / global / N:M masks, applying and baking them   (notebook 05)
    schedule   gradual pruning with the cubic sparsity schedule           (notebook 05)
    channels   structured channel pruning into a smaller dense model      (notebook 05)
    sparse     the sparse on-disk format (bitmask + values)               (notebook 05)
    llm        pruning a language model without retraining: Wanda, SparseGPT (notebook 10)

Imports only the core, :mod:`qlib.measure` and :mod:`qlib.codec`; registers nothing.
"""

from .llm import (collect_input_stats, prune_linear_layers, sparsegpt, wanda_mask,
                  wanda_scores)
from .channels import channel_mask, channel_norms, prune_channels
from .masks import (PRUNABLE, apply_masks, baked_copy, global_masks, layerwise_masks,
                    magnitude_mask, magnitude_prune, nm_mask, nm_masks, prunable_layers,
                    remove_masks, sensitivity_scan, sparsity)
from .schedule import GradualPruner, cubic_sparsity
from .sparse import (decode_sparse, encode_sparse, load_sparse, save_sparse,
                     sparse_size_bytes)

__all__ = ["magnitude_mask", "PRUNABLE", "prunable_layers", "layerwise_masks", "global_masks",
           "nm_mask", "nm_masks", "apply_masks", "remove_masks", "baked_copy",
           "magnitude_prune", "sparsity", "sensitivity_scan", "cubic_sparsity", "GradualPruner",
           "channel_norms", "channel_mask", "prune_channels", "encode_sparse", "decode_sparse",
           "save_sparse", "load_sparse", "sparse_size_bytes", "wanda_scores", "wanda_mask",
           "sparsegpt", "collect_input_stats", "prune_linear_layers"]
