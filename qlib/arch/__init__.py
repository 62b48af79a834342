"""Efficient architectures: low-rank factorization and depthwise-separable models.

Introduced in notebook 11. Modules, one idea each:

    lowrank   truncated SVD of Linear / Conv2d weights into two thin layers (Eckart–Young),
              fine-tuned and cached
    mobile    a MobileNet-style course model, its MACs per byte, cached training

Imports only the core (data, models, train) and :mod:`qlib.measure`; registers nothing.
"""

from .lowrank import (CONV_MODES, LOWRANK_RECIPE, energy_rank, factor_conv, factor_layers,
                      factor_linear, finetune_lowrank, lowrank_params, rank_for_params,
                      svd_factors, truncation_error)
from .mobile import (MOBILE_RECIPE, MobileCNN, depthwise_layers, layer_costs, mobile_model,
                     separable_ratio, train_mobile)

__all__ = ["svd_factors", "truncation_error", "energy_rank", "lowrank_params",
           "rank_for_params", "factor_linear", "factor_conv", "factor_layers", "CONV_MODES",
           "LOWRANK_RECIPE", "finetune_lowrank", "MobileCNN", "mobile_model",
           "depthwise_layers", "separable_ratio", "layer_costs", "MOBILE_RECIPE",
           "train_mobile"]
