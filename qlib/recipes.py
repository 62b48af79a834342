"""Recipes: named compression pipelines that the notebooks and the report share.

Introduced in notebook 00 (the baseline row) and used by every technique notebook. A
*recipe* is a function ``(baseline, data) -> Variant``: it takes the trained fp32 course
model and its :class:`~qlib.data.Splits` and returns the compressed model together with
the facts only the recipe knows (its file size on disk, parameter and non-zero counts).
A recipe never modifies the baseline in place (it works on ``copy.deepcopy(baseline)``).
:func:`evaluate_variant` then measures every variant the same way, so that rows compare.

Technique modules register their recipes with :func:`register`; :data:`PROVIDERS` lists
the modules that do, and :func:`load_recipes` imports them.

>>> @register("identity", technique="none")              # doctest: +SKIP
... def identity(baseline, data):
...     return Variant.from_module("identity", "none", baseline)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .data import Splits

__all__ = ["Variant", "Recipe", "RECIPES", "PROVIDERS", "register", "load_recipes",
           "run_recipe", "evaluate_variant", "baseline_variant"]


@dataclass
class Variant:
    """A compressed (or baseline) model as the report sees it.

    ``model`` maps a float batch (N, C, H, W) to logits (N, classes): an ``nn.Module`` or
    any callable (an ONNX Runtime session wrapped in a function, say). ``size_bytes`` is
    the size of the file the recipe would ship; ``params`` counts stored weights and
    ``nonzeros`` those not zero. ``extra`` carries anything else worth reporting.
    """

    name: str
    technique: str
    model: nn.Module | Callable[[Tensor], Tensor]
    size_bytes: int
    params: int
    nonzeros: int
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_module(cls, name: str, technique: str, model: nn.Module, **extra) -> "Variant":
        """A variant whose file is the module's plain ``torch.save`` state dict."""
        from .bench import count_nonzeros, count_parameters, model_size_bytes

        return cls(name, technique, model.eval(), model_size_bytes(model),
                   count_parameters(model), count_nonzeros(model), dict(extra))


RecipeFn = Callable[[nn.Module, Splits], Variant]


@dataclass(frozen=True)
class Recipe:
    name: str
    technique: str
    description: str
    fn: RecipeFn


#: All registered recipes by name, in registration order.
RECIPES: dict[str, Recipe] = {}

#: Modules that register recipes; :func:`load_recipes` imports them.
PROVIDERS: tuple[str, ...] = (
    "qlib.quant.ptq",
    "qlib.quant.integer",
    "qlib.quant.qat",
    "qlib.onnx",
    "qlib.prune_recipes",
    "qlib.distill",
    "qlib.compress",
)


def register(name: str, technique: str, description: str = "") -> Callable[[RecipeFn], RecipeFn]:
    """Decorator: register ``fn(baseline, data) -> Variant`` under a fixed name."""
    def wrap(fn: RecipeFn) -> RecipeFn:
        if name in RECIPES and RECIPES[name].fn.__qualname__ != fn.__qualname__:
            raise ValueError(f"recipe name {name!r} is already taken")
        RECIPES[name] = Recipe(name, technique, description or (fn.__doc__ or "").strip()
                               .split("\n")[0], fn)
        return fn
    return wrap


def load_recipes() -> dict[str, Recipe]:
    """Import every provider module so that its recipes are registered; return the registry."""
    for module in PROVIDERS:
        importlib.import_module(module)
    return RECIPES


def baseline_variant(baseline: nn.Module) -> Variant:
    """The fp32 baseline as a variant (the report's reference row)."""
    return Variant.from_module("baseline", "fp32", baseline)


def evaluate_variant(variant: Variant, data: Splits, reference: dict | None = None,
                     *, latency_repeats: int = 50) -> dict:
    """One report row: test metrics, their uncertainty, size, latency, counts and fidelity.

    Keys: ``name, technique, accuracy, precision, recall, f1`` (fractions, macro),
    ``accuracy_ci`` (95% bootstrap interval), ``ece`` (calibration error), ``size_bytes,
    latency_ms`` (batch-1 median, 1 thread), ``latency_p90_ms, params, nonzeros``, and,
    against ``reference`` (the baseline's row): ``agreement`` (top-1, 1.0 without a
    reference), ``mcnemar_p`` and ``output_kl``; plus ``per_class`` and ``extra``.
    In-memory only (dropped from report.json): ``preds``, ``logits``, ``labels``.
    """
    from .bench import measure_latency
    from .metrics import agreement
    from .stats import bootstrap_ci, expected_calibration_error, mcnemar, output_kl
    from .train import evaluate

    ev = evaluate(variant.model, data.loader("test", 256), data.num_classes)
    x1 = data.test.tensors[0][:1]
    lat = measure_latency(variant.model, x1, repeats=latency_repeats, threads=1)
    correct = (ev["preds"] == ev["labels"]).numpy()
    row = dict(
        name=variant.name, technique=variant.technique, accuracy=ev["accuracy"],
        precision=ev["precision"], recall=ev["recall"], f1=ev["f1"],
        accuracy_ci=list(bootstrap_ci(correct)[1:]),
        ece=expected_calibration_error(ev["logits"], ev["labels"]),
        size_bytes=int(variant.size_bytes), latency_ms=lat["median_ms"],
        latency_p90_ms=lat["p90_ms"], params=int(variant.params),
        nonzeros=int(variant.nonzeros), agreement=1.0, mcnemar_p=1.0, output_kl=0.0,
        per_class=ev["per_class"], extra=variant.extra,
        preds=ev["preds"], logits=ev["logits"], labels=ev["labels"],
    )
    if reference is not None:
        ref_correct = (reference["preds"] == reference["labels"]).numpy()
        row.update(agreement=agreement(ev["preds"], reference["preds"]),
                   mcnemar_p=mcnemar(correct, ref_correct)["p_value"],
                   output_kl=output_kl(reference["logits"], ev["logits"]))
    return row


def run_recipe(name: str, baseline: nn.Module | None = None, data: Splits | None = None,
               *, evaluate: bool = True) -> tuple[Variant, dict | None]:
    """Build one registered recipe's variant (from the cached baseline by default) and,
    unless ``evaluate=False``, its report row (agreement measured against the baseline)."""
    from .train import get_baseline

    recipes = load_recipes()
    if name not in recipes:
        raise ValueError(f"unknown recipe {name!r}; registered: {sorted(recipes)}")
    if baseline is None or data is None:
        baseline, data = get_baseline()
    variant = recipes[name].fn(baseline, data)
    if not evaluate:
        return variant, None
    ref = evaluate_variant(baseline_variant(baseline), data, latency_repeats=5)
    return variant, evaluate_variant(variant, data, ref)
