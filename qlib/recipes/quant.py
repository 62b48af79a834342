"""The quantization recipes: PTQ (notebook 02), integer-only (03), QAT (04).

Each is ``(baseline, data) -> Variant``; deterministic, and the baseline is never
modified. A variant's model is reloaded from its packed file, so what is evaluated is
exactly what would ship.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..data import Splits
from ..quant import (QuantLayer, assign_bits, fold_batchnorm, kmeans_quantize_model,
                     layer_sensitivity, packed_state, ptq, serialized_size, unpack_state,
                     weight_counts)
from ..quant.integer import to_integer
from ..quant.qat import convert_qat, prepare_qat
from ..train import cached_training, fingerprint, fit
from .registry import Variant

__all__ = ["packed_variant", "ptq_w8a8", "ptq_w8a8_per_tensor", "ptq_w4", "ptq_w4a8",
           "kmeans_w4", "ptq_mixed", "int8_integer", "QAT_RECIPES", "qat_w4a4", "qat_w2a8"]


def _nonzeros(model: nn.Module, state: dict[str, Tensor]) -> tuple[int, int]:
    params = dict(model.named_parameters())
    vals = [state[k] for k in params if k in state]
    return sum(v.numel() for v in vals), sum(int((v != 0).sum()) for v in vals)


def packed_variant(name: str, qmodel: nn.Module, codebooks: Mapping | None = None,
                   **extra) -> Variant:
    """A report :class:`~qlib.recipes.Variant` whose model is reloaded from its packed file.

    Introduced in notebook 02. The fake-quant model is serialised with
    :func:`~qlib.quant.packing.packed_state` (size_bytes = bytes of that file), unpacked and
    loaded back, so what is evaluated is exactly what would ship. A model with fake-quant
    layers (:class:`~qlib.quant.fakequant.QuantLayer`) is marked ``execution="simulated"``
    (its float arithmetic is not int speed); one without (k-means sharing decodes to plain
    float32 layers) runs as it would be deployed, ``"eager"``.
    """
    packed = packed_state(qmodel, codebooks)
    state = unpack_state(packed)
    qmodel.load_state_dict(state)
    params, nonzeros = _nonzeros(qmodel, state)
    simulated = any(isinstance(m, QuantLayer) for m in qmodel.modules())
    return Variant(name, "quantization", qmodel.eval(), serialized_size(packed), params,
                   nonzeros, dict(extra), execution="simulated" if simulated else "eager")


# ----- PTQ (notebook 02) ---------------------------------------------------------------

def _ptq_recipe(name: str, data: Splits, baseline: nn.Module, weight_bits: int,
                act_bits: int | None, **kw) -> Variant:
    torch.manual_seed(0)
    q = ptq(baseline, data, weight_bits, act_bits, **kw)
    return packed_variant(name, q, weight_bits=weight_bits, act_bits=act_bits,
                          **{k: str(v) for k, v in kw.items()})


def ptq_w8a8(baseline: nn.Module, data: Splits) -> Variant:
    return _ptq_recipe("ptq-w8a8", data, baseline, 8, 8)


def ptq_w8a8_per_tensor(baseline: nn.Module, data: Splits) -> Variant:
    return _ptq_recipe("ptq-w8a8-per-tensor", data, baseline, 8, 8, per_channel=False)


def ptq_w4(baseline: nn.Module, data: Splits) -> Variant:
    return _ptq_recipe("ptq-w4", data, baseline, 4, None, weight_observer="mse")


def ptq_w4a8(baseline: nn.Module, data: Splits) -> Variant:
    return _ptq_recipe("ptq-w4a8", data, baseline, 4, 8, weight_observer="mse",
                       observer="percentile")


def kmeans_w4(baseline: nn.Module, data: Splits) -> Variant:
    model, books = kmeans_quantize_model(fold_batchnorm(baseline), 4, inplace=True)
    return packed_variant("kmeans-w4", model, books, weight_bits=4)


def ptq_mixed(baseline: nn.Module, data: Splits) -> Variant:
    sens = layer_sensitivity(baseline, data, (2, 3, 4, 8))
    counts = weight_counts(baseline)
    plan = assign_bits(sens, counts, 2.5 * sum(counts.values()) / 8)
    q = ptq(baseline, data, plan, None)
    return packed_variant("ptq-mixed", q, weight_bits=plan)


# ----- integer-only inference (notebook 03) ----------------------------------------------

def int8_integer(baseline: nn.Module, data: Splits) -> Variant:
    torch.manual_seed(0)
    imodel = to_integer(ptq(baseline, data, 8, 8), data)
    state = imodel.state_dict()
    params = sum(lay.weight.numel() + lay.bias.numel() for lay in imodel.int_layers())
    nonzeros = sum(int((lay.weight != 0).sum()) + int((lay.quantized_bias() != 0).sum())
                   for lay in imodel.int_layers())
    return Variant("int8-integer", "quantization", imodel, serialized_size(state), params,
                   nonzeros, dict(weight_bits=8, act_bits=8, output_bits=imodel.output_bits),
                   execution="simulated")  # integer arithmetic emulated in PyTorch


# ----- QAT (notebook 04; cached under data/models) ---------------------------------------

#: The recipes' settings: weight bits, activation bits, epochs, peak learning rate.
QAT_RECIPES: dict[str, dict] = {
    "qat-w4a4": dict(weight_bits=4, act_bits=4, epochs=4, lr=5e-4),
    "qat-w2a8": dict(weight_bits=2, act_bits=8, epochs=4, lr=5e-4),
}


def _qat_recipe(name: str, baseline: nn.Module, data: Splits) -> Variant:
    cfg = QAT_RECIPES[name]
    recipe = dict(cfg, method="lsq", batch_size=64, num_images=256, seed=0, fold_bn=True,
                  dataset=data.name, baseline=fingerprint(baseline), version=3)

    def build() -> nn.Module:
        torch.manual_seed(0)
        return prepare_qat(baseline, data, cfg["weight_bits"], cfg["act_bits"])

    def train(net: nn.Module) -> None:
        fit(net, data.loader("train", 64, seed=0), epochs=cfg["epochs"], lr=cfg["lr"],
            seed=0, progress=False)

    qmodel = cached_training(name, recipe, build, train)
    return packed_variant(name, convert_qat(qmodel), **{k: cfg[k] for k in cfg},
                          method="LSQ QAT")


def qat_w4a4(baseline: nn.Module, data: Splits) -> Variant:
    return _qat_recipe("qat-w4a4", baseline, data)


def qat_w2a8(baseline: nn.Module, data: Splits) -> Variant:
    return _qat_recipe("qat-w2a8", baseline, data)
