"""Evaluate a variant the same way for every row: the report's measuring harness.

Introduced in notebook 00 (the baseline row) and used by notebooks 02-08 and the report.
Every row gets the same test metrics, uncertainty, size, latency, counts and fidelity
against the baseline, so that rows compare.

>>> model, data = qlib.train.get_baseline()                        # doctest: +SKIP
>>> row = evaluate_variant(baseline_variant(model), data)          # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .data import Splits
from .gpt import KVCache
from .lm import evaluate_lm, get_lm
from .measure import agreement, measure_latency
from .measure.stats import bootstrap_ci, expected_calibration_error, mcnemar, output_kl
from .recipes import Variant, get_recipe
from .text import TextSplits
from .train import evaluate, get_baseline

__all__ = ["baseline_variant", "evaluate_variant", "evaluate_lm_variant", "decode_step_latency",
           "run_recipe"]


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
    When ``variant.extra["seeds"]`` lists per-seed results, accuracy, precision, recall and
    F1 are their means (``extra["accuracy_ci"]`` the interval of that mean); the other
    fields are of ``variant.model`` (seed 0's).
    """
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
    seeds = variant.extra.get("seeds")
    if seeds:  # trained over several seeds (notebook 06's students): the row is their mean
        row |= {k: sum(s[k] for s in seeds) / len(seeds)
                for k in ("accuracy", "precision", "recall", "f1")}
        row["accuracy_ci"] = list(variant.extra.get("accuracy_ci", row["accuracy_ci"]))
    if reference is not None:
        ref_correct = (reference["preds"] == reference["labels"]).numpy()
        row.update(agreement=agreement(ev["preds"], reference["preds"]),
                   mcnemar_p=mcnemar(correct, ref_correct)["p_value"],
                   output_kl=output_kl(reference["logits"], ev["logits"]))
    return row


def decode_step_latency(model: nn.Module, *, context: int = 64, repeats: int = 50,
                        threads: int = 1) -> dict:
    """Latency of one decode step at batch 1: the next token after ``context`` cached ones.

    Introduced in notebook 09. A prompt of ``context`` tokens (at most block_size - 1) is
    run once into a
    :class:`~qlib.gpt.KVCache`; each timed call then feeds one token through a fresh
    cache that shares the prompt's keys and values (storing a token makes new tensors, so
    the prompt is never modified): the work of generating one token. Median / p90 / min ms
    as :func:`~qlib.measure.measure_latency`.
    """
    block = getattr(getattr(model, "config", None), "block_size", context + 1)
    context = min(context, block - 1)  # the new token must still fit in the positions
    prompt = torch.zeros(1, context, dtype=torch.long)
    with torch.no_grad():
        warm = KVCache()
        model(prompt, warm)

    def step(token: Tensor) -> Tensor:
        cache = KVCache()
        cache.state = {layer: dict(entry) for layer, entry in warm.state.items()}
        cache.lengths = dict(warm.lengths)
        return model(token, cache)

    return measure_latency(step, torch.zeros(1, 1, dtype=torch.long), repeats=repeats,
                           threads=threads)


def evaluate_lm_variant(variant: Variant, data: TextSplits, reference: dict | None = None,
                        *, latency_repeats: int = 50) -> dict:
    """One LM report row: ``name, technique, perplexity, accuracy`` (next-token top-1),
    ``agreement`` (top-1 with ``reference``, the fp32 row; 1.0 without), ``nll, size_bytes,
    latency_ms`` (one decode step, batch 1, median, 1 thread), ``latency_p90_ms, params,
    nonzeros, extra``; in memory only, ``preds`` and ``window_nll`` (of ``variant.model``).
    When ``variant.extra["seeds"]`` lists per-seed results (the students of notebook 10),
    perplexity, nll, accuracy and agreement are their means. Every row of ``python -m qlib
    report --task lm``, which notebooks 09 and 10 describe; they do not call it directly."""
    ev = evaluate_lm(variant.model, data, "test", reference=reference)
    lat = decode_step_latency(variant.model, repeats=latency_repeats)
    seeds = variant.extra.get("seeds")
    if seeds:  # a recipe trained over several seeds: the row is their mean (spread in extra)
        ev |= {k: sum(s[k] for s in seeds) / len(seeds)
               for k in ("perplexity", "nll", "accuracy", "agreement")}
    return dict(name=variant.name, technique=variant.technique,
                perplexity=ev["perplexity"], nll=ev["nll"], accuracy=ev["accuracy"],
                agreement=ev["agreement"], tokens=ev["tokens"],
                size_bytes=int(variant.size_bytes), latency_ms=lat["median_ms"],
                latency_p90_ms=lat["p90_ms"], params=int(variant.params),
                nonzeros=int(variant.nonzeros), extra=variant.extra, preds=ev["preds"],
                window_nll=ev["window_nll"])


def run_recipe(name: str, baseline: nn.Module | None = None, data: Splits | None = None,
               *, evaluate: bool = True) -> tuple[Variant, dict | None]:
    """Build one registered recipe's variant (from the cached baseline by default) and,
    unless ``evaluate=False``, its report row (agreement measured against the baseline)."""
    recipe = get_recipe(name)
    lm = recipe.task == "lm"
    if baseline is None or data is None:
        baseline, data = get_lm() if lm else get_baseline()
    variant = recipe.fn(baseline, data)
    if not evaluate:
        return variant, None
    row = evaluate_lm_variant if lm else evaluate_variant
    ref = row(baseline_variant(baseline), data, latency_repeats=5)
    return variant, row(variant, data, ref)
