"""Post-training quantization: the PTQ flow, per-layer sensitivity and mixed precision.

Introduced in notebook 02. No retraining: a trained float model and a few hundred
calibration images are all PTQ needs::

    fold BN -> insert observers -> calibrate on N images -> freeze into fake-quant

Sensitivity analysis quantizes one layer at a time (weights only, the others float) and
measures the validation accuracy drop; :func:`assign_bits` then spends a size budget
where it costs the least accuracy (mixed precision). The recipes registered here
(``ptq-w8a8``, ``ptq-w4``, ...) are the report's rows for this technique; their
``size_bytes`` is the size of the packed file (:mod:`qlib.quant.packing`).

>>> model, data = qlib.get_baseline()                       # doctest: +SKIP
>>> q = ptq(model, data, weight_bits=8, act_bits=8)         # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import nn

from ..data import Splits, calibration_batches
from .._util import WEIGHT_LAYERS, check_bits, check_finite_number, check_int
from ..train import evaluate
from .fakequant import calibrate, fold_batchnorm, freeze, quant_layers, quantize_model
from .observers import ObserverSpec

__all__ = ["ptq", "layer_sensitivity", "assign_bits", "weight_counts", "accuracy_on"]


def ptq(model: nn.Module, calibration: Splits | Iterable | None = None,
        weight_bits: int | Mapping[str, int] = 8, act_bits: int | None = 8, *,
        per_channel: bool = True, observer: ObserverSpec = "minmax",
        weight_observer: ObserverSpec = "minmax", num_images: int = 256,
        fold_bn: bool = True) -> nn.Module:
    """Post-training quantization of a copy of ``model``, frozen and ready to evaluate.

    ``calibration`` is a :class:`~qlib.data.Splits` (its first ``num_images`` training
    images are used) or any iterable of batches; it may be None for weight-only
    (``act_bits=None``). Other arguments as :func:`~qlib.quant.fakequant.quantize_model`.
    """
    model = fold_batchnorm(model) if fold_bn else model
    qmodel = quantize_model(model, weight_bits, act_bits, per_channel, observer,
                            weight_observer=weight_observer, inplace=fold_bn)
    if act_bits is not None:
        if calibration is None:
            raise ValueError("act_bits needs calibration data: pass the Splits or batches")
        batches = (calibration_batches(calibration, num_images)
                   if isinstance(calibration, Splits) else calibration)
        calibrate(qmodel, batches)
    return freeze(qmodel)


def accuracy_on(model: nn.Module, data: Splits, split: str = "val") -> float:
    """Top-1 accuracy (fraction) of a model on one split of ``data`` (qlib.train.evaluate)."""
    return evaluate(model, data.loader(split, 500))["accuracy"]


def layer_sensitivity(model: nn.Module, data: Splits, bits: Iterable[int] = (2, 3, 4, 8), *,
                      per_channel: bool = True, split: str = "val",
                      fold_bn: bool = True) -> dict[str, dict[int, float]]:
    """Accuracy drop when one layer alone is weight-quantized: ``{layer: {bits: drop}}``.

    drop = acc(float model) - acc(model with only that layer at ``bits``), as a fraction,
    on the validation split (never the test split: the assignment is a design choice).
    ``fold_bn`` folds batch norm first, as deployment does. Notebook 02.
    """
    base = fold_batchnorm(model) if fold_bn else model
    ref = accuracy_on(base, data, split)
    names = list(quant_layers(quantize_model(base, 8)))
    out: dict[str, dict[int, float]] = {}
    for name in names:
        out[name] = {}
        for b in bits:
            q = quantize_model(base, {name: check_bits(b)}, per_channel=per_channel)
            out[name][b] = ref - accuracy_on(q, data, split)
    return out


def weight_counts(model: nn.Module) -> dict[str, int]:
    """Number of weights of each Conv2d / Linear (or its wrapper) by layer name."""
    q = quant_layers(model)
    if q:
        return {n: m.weight.numel() for n, m in q.items()}
    return {n: m.weight.numel() for n, m in model.named_modules()
            if isinstance(m, WEIGHT_LAYERS)}


def assign_bits(sensitivity: Mapping[str, Mapping[int, float]], counts: Mapping[str, int],
                budget_bytes: float) -> dict[str, int]:
    """Mixed precision: a bit width per layer whose weights fit ``budget_bytes``.

    Weight bytes = sum_l counts[l] * bits[l] / 8. Greedy: start every layer at its widest
    measured bit width; while over budget, make the one step down (to the layer's next
    measured width) with the least added accuracy drop per byte saved, drops from
    :func:`layer_sensitivity` (negative drops count as 0). ValueError if even the
    narrowest widths do not fit. Notebook 02.

    >>> assign_bits({"a": {2: .30, 8: 0}, "b": {2: .01, 8: 0}}, {"a": 100, "b": 100}, 125)
    {'a': 8, 'b': 2}
    """
    budget_bytes = check_finite_number(budget_bytes, "budget_bytes", 0, strict=True)
    if not sensitivity:
        raise ValueError("sensitivity is empty: pass {layer: {bits: accuracy drop}} for at "
                         "least one layer (from layer_sensitivity)")
    if set(sensitivity) - set(counts):
        raise ValueError(f"no weight count for layers {sorted(set(sensitivity) - set(counts))}")
    for n, drops in sensitivity.items():
        if not drops:
            raise ValueError(f"sensitivity[{n!r}] is empty: measure at least one bit width")
        for b, d in drops.items():
            check_bits(b, f"the bit widths of sensitivity[{n!r}]")
            check_finite_number(d, f"sensitivity[{n!r}][{b}] (an accuracy drop)")
        check_int(counts[n], f"counts[{n!r}] (weights in the layer)", 1)
    widths = {n: sorted(d) for n, d in sensitivity.items()}
    plan = {n: w[-1] for n, w in widths.items()}

    def size() -> float:
        return sum(counts[n] * b / 8 for n, b in plan.items())

    while size() > budget_bytes:
        best, best_cost = None, None
        for n, b in plan.items():
            i = widths[n].index(b)
            if i == 0:
                continue
            lower = widths[n][i - 1]
            added = max(sensitivity[n][lower], 0.0) - max(sensitivity[n][b], 0.0)
            cost = added / (counts[n] * (b - lower) / 8)
            if best_cost is None or cost < best_cost:
                best, best_cost = (n, lower), cost
        if best is None:
            raise ValueError(f"budget {budget_bytes:.0f} B is below the smallest size "
                             f"{size():.0f} B of the measured bit widths")
        plan[best[0]] = best[1]
    return plan
