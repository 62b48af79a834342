"""The report: evaluate the baseline and every registered recipe the same way.

Introduced in notebook 00; read in notebook 07. ``python -m qlib report --out DIR`` (or
``make report``) writes

- ``DIR/report.json``: ``{"baseline": {...}, "variants": [{...}, ...], "failed": [...],
  "pareto": {...}, "meta": {...}}``; each row has ``name, technique, accuracy, precision,
  recall, f1`` (fractions, macro averages), ``size_bytes, latency_ms`` (batch-1 median),
  ``params, nonzeros, agreement`` (with the baseline's test predictions), the derived
  ``compression``, ``speedup`` and ``accuracy_drop_points``, the statistics ``accuracy_ci,
  mcnemar_p, output_kl, ece`` and a one-paragraph ``verdict``: every figure the markdown
  shows;
- ``DIR/report.md``: the same as tables and verdicts;
- ``DIR/accuracy_vs_size.png`` and ``DIR/accuracy_vs_latency.png`` with Pareto fronts.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ._util import markdown_table
from .evaluate import baseline_variant, evaluate_lm_variant, evaluate_variant
from .lm import get_lm
from .plots import pareto_front, plot_tradeoff
from .recipes import Variant, load_recipes
from .train import get_baseline

__all__ = ["build_report", "build_lm_report", "write_report", "report_table", "lm_table",
           "verdict", "TASKS"]

#: What ``python -m qlib report --task`` accepts.
TASKS = ("vision", "lm")

_PRIVATE = ("preds", "logits", "labels", "window_nll")


def _public(row: dict) -> dict:
    """A row without its tensors (predictions stay in memory, not in the JSON)."""
    return {k: v for k, v in row.items() if k not in _PRIVATE}


def _derive(row: dict, base: dict) -> dict:
    """Ratios against the baseline, stored so that the JSON carries every shown figure."""
    row["compression"] = base["size_bytes"] / max(row["size_bytes"], 1)
    row["speedup"] = base["latency_ms"] / max(row["latency_ms"], 1e-9)
    row["accuracy_drop_points"] = 100 * (base["accuracy"] - row["accuracy"])
    return row


def verdict(row: dict) -> str:
    """One paragraph on a variant: what it saves, what it costs, and whether the cost is real."""
    drop = row["accuracy_drop_points"]
    significant = row["mcnemar_p"] < 0.05
    change = ("no accuracy change" if abs(drop) < 0.05 else
              f"{abs(drop):.2f} accuracy points {'lost' if drop > 0 else 'gained'}")
    stat = ("a real difference (McNemar p = {p:.3f})" if significant else
            "within noise on this test set (McNemar p = {p:.2f})").format(p=row["mcnemar_p"])
    speed = (f"{row['speedup']:.1f}x faster" if row["speedup"] >= 1.1 else
             f"{1 / row['speedup']:.1f}x slower" if row["speedup"] <= 0.9 else
             "about as fast") + " at batch 1"
    return (f"**{row['name']}** ({row['technique']}): {row['compression']:.1f}x smaller on "
            f"disk, {speed}; {change}, {stat}; agrees with the baseline on "
            f"{100 * row['agreement']:.1f}% of test images (macro F1 "
            f"{100 * row['f1']:.2f}%, ECE {row['ece']:.3f}).")


def _chosen(task: str, only: Sequence[str] | None) -> tuple[dict, list[str]]:
    """The task's recipes and the names to run (all, or ``only``, checked)."""
    recipes = load_recipes(task)
    names = list(only) if only else list(recipes)
    unknown = [n for n in names if n not in recipes]
    if unknown:
        kind, listed = ("", "registered") if task == "vision" else (f"{task} ", f"{task} recipes")
        raise ValueError(f"unknown {kind}recipe(s) {unknown}; {listed}: {sorted(recipes)}")
    return recipes, names


def _run_recipes(recipes: dict, names: Sequence[str], baseline: object, data: object,
                 evaluate: Callable[[Variant], dict], desc: str, progress: bool
                 ) -> tuple[list[dict], list[dict]]:
    """Run each named recipe on (baseline, data) and evaluate its variant: (rows, failed).

    A recipe that raises goes to ``failed`` with its error and the rest go on; each row gets
    ``seconds``, the recipe's and its evaluation's wall time.
    """
    rows, failed = [], []
    bar = tqdm(names, desc=desc, disable=not progress)
    for name in bar:
        bar.set_postfix_str(name)
        t0 = time.perf_counter()
        try:
            row = evaluate(recipes[name].fn(baseline, data))
        except Exception as err:  # noqa: BLE001 - one broken recipe must not hide the rest
            failed.append(dict(name=name, error=f"{type(err).__name__}: {err}"))
            continue
        row["seconds"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
    return rows, failed


def build_report(only: Sequence[str] | None = None, *, dataset: str = "embedded",
                 model: str = "course", progress: bool = True,
                 latency_repeats: int = 50) -> dict:
    """Run the baseline and the chosen recipes (all by default); return the report dict.

    ``dataset`` and ``model`` pick the baseline (``qlib.train.get_trained``); the embedded
    MNIST sample and the course model are the defaults. A recipe that raises is listed
    under ``"failed"`` with its error and the rest go on.
    """
    recipes, names = _chosen("vision", only)
    start = time.perf_counter()
    baseline, data = get_baseline(model=model, dataset=dataset, progress=progress)
    base = evaluate_variant(baseline_variant(baseline), data, latency_repeats=latency_repeats)
    _derive(base, base)
    variants, failed = _run_recipes(
        recipes, names, baseline, data,
        lambda v: evaluate_variant(v, data, base, latency_repeats=latency_repeats),
        "recipes", progress)
    for row in variants:
        row["verdict"] = verdict(_derive(row, base))
    variants = [_public(row) for row in variants]
    rows = [_public(base), *variants]
    pareto = {x: [rows[i]["name"] for i in pareto_front([r[x] for r in rows],
                                                         [r["accuracy"] for r in rows])]
              for x in ("size_bytes", "latency_ms")}
    meta = dict(dataset=data.name, model=model, test_images=len(data.test),
                torch=torch.__version__, python=platform.python_version(),
                machine=platform.machine(), threads_for_latency=1,
                seconds=round(time.perf_counter() - start, 1))
    return dict(baseline=_public(base), variants=variants, failed=failed, pareto=pareto,
                meta=meta)


def build_lm_report(only: Sequence[str] | None = None, *, progress: bool = True,
                    latency_repeats: int = 50) -> dict:
    """The language-model report (notebook 09): the fp32 course LM and the "lm" recipes.

    Rows: ``name, technique, perplexity, accuracy`` (next-token top-1), ``agreement`` (with
    fp32), ``size_bytes`` (the packed file), ``latency_ms`` (one decode step, batch 1),
    ``params, nonzeros``; derived ``compression`` and ``perplexity_increase_pct``.
    """
    recipes, names = _chosen("lm", only)
    start = time.perf_counter()
    lm, data = get_lm(progress=progress)
    base = evaluate_lm_variant(baseline_variant(lm), data, latency_repeats=latency_repeats)
    variants, failed = _run_recipes(
        recipes, names, lm, data,
        lambda v: evaluate_lm_variant(v, data, base, latency_repeats=latency_repeats),
        "lm recipes", progress)
    for row in [base, *variants]:
        row["compression"] = base["size_bytes"] / max(row["size_bytes"], 1)
        row["perplexity_increase_pct"] = 100 * (row["perplexity"] / base["perplexity"] - 1)
    rows = [_public(base), *map(_public, variants)]
    pareto = {"size_bytes": [rows[i]["name"] for i in pareto_front(
        [r["size_bytes"] for r in rows], [-r["perplexity"] for r in rows])]}
    meta = dict(task="lm", dataset="pydoc_data.topics", model="course GPT",
                test_tokens=base["tokens"], torch=torch.__version__,
                python=platform.python_version(), machine=platform.machine(),
                threads_for_latency=1, seconds=round(time.perf_counter() - start, 1))
    return dict(baseline=rows[0], variants=rows[1:], failed=failed, pareto=pareto, meta=meta)


def lm_table(rows: Sequence[dict], baseline: dict) -> str:
    """LM rows (from :func:`build_lm_report`) as a markdown table."""
    table = [{"name": r["name"], "technique": r["technique"],
              "perplexity": f"{r['perplexity']:.3f}",
              "vs fp32": f"{r['perplexity_increase_pct']:+.2f}%",
              "next-token acc %": f"{100 * r['accuracy']:.2f}",
              "agreement %": f"{100 * r['agreement']:.1f}",
              "size KB": f"{r['size_bytes'] / 1024:.1f}", "smaller": f"{r['compression']:.2f}x",
              "decode step ms": f"{r['latency_ms']:.3f}", "params": f"{r['params']:,}"}
             for r in [baseline, *rows]]
    return markdown_table(table) + "\n"


def report_table(rows: Sequence[dict], baseline: dict) -> str:
    """Rows (from :func:`build_report`, with ``compression`` derived) as a markdown table."""
    table = []
    for r in [baseline, *rows]:
        lo, hi = r["accuracy_ci"]
        table.append({
            "name": r["name"], "technique": r["technique"],
            "accuracy % (95% CI)": f"{100 * r['accuracy']:.2f} ({100 * lo:.1f}–{100 * hi:.1f})",
            "macro F1 %": f"{100 * r['f1']:.2f}", "McNemar p": f"{r['mcnemar_p']:.3f}",
            "size KB": f"{r['size_bytes'] / 1024:.1f}", "smaller": f"{r['compression']:.1f}x",
            "latency ms": f"{r['latency_ms']:.3f}", "params": f"{r['params']:,}",
            "non-zeros": f"{r['nonzeros']:,}", "agreement %": f"{100 * r['agreement']:.1f}"})
    return markdown_table(table) + "\n"


def write_report(report: dict, out: str | Path) -> list[Path]:
    """Write report.json, report.md and the PNG trade-off plots into ``out``."""
    # lazy: matplotlib is loaded only when PNGs are written (Agg: no display needed)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # (see above)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json", out / "report.md"]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    base, rows, meta = report["baseline"], report["variants"], report["meta"]
    if meta.get("task") == "lm":
        return paths + _write_lm(report, out, plt)
    md = [f"# Compression report\n\nModel `{meta['model']}` on dataset `{meta['dataset']}` "
          f"({meta['test_images']} test images). Latency is the batch-1 median on 1 thread; "
          "the interval is a 95% bootstrap interval of accuracy; McNemar p tests whether a "
          "variant's accuracy differs from the baseline's on the same images.\n\n",
          report_table(rows, base)]
    if rows:
        md.append("\n## Verdicts\n\n" + "\n\n".join(r["verdict"] for r in rows) + "\n")
    md.append("\n## Pareto fronts\n\nNo other variant is both smaller (faster) and more "
              "accurate than these:\n\n" + "".join(
                  f"- accuracy vs {x.replace('_', ' ')}: {', '.join(names)}\n"
                  for x, names in report["pareto"].items()))
    if report["failed"]:
        md.append("\n## Failed recipes\n\n" + "\n".join(
            f"- `{f['name']}`: {f['error']}" for f in report["failed"]) + "\n")
    for x, fname in (("size_bytes", "accuracy_vs_size.png"),
                     ("latency_ms", "accuracy_vs_latency.png")):
        fig = plot_tradeoff([base, *rows], x=x, y="accuracy")
        fig.savefig(out / fname, dpi=120)
        plt.close(fig)
        paths.append(out / fname)
        md.append(f"\n![{fname}]({fname})\n")
    paths[1].write_text("".join(md))
    return paths


def _write_lm(report: dict, out: Path, plt) -> list[Path]:
    """report.md and perplexity_vs_size.png of an LM report (report.json is written)."""
    base, rows, meta = report["baseline"], report["variants"], report["meta"]
    md = [f"# Compression report: the course language model\n\n{meta['model']} on "
          f"`{meta['dataset']}` ({meta['test_tokens']:,} held-out test tokens). Perplexity = "
          "exp(mean next-token cross-entropy); agreement = top-1 next-token agreement with "
          "fp32; size = the packed file; the decode step is one token at batch 1 on 1 thread, "
          "measured on the fake-quantized (float) model, so it is not int4 speed: "
          "`python -m qlib deploy --suite lm` measures real int4 kernels.\n\n",
          lm_table(rows, base),
          "\n## Pareto front\n\nNo other variant is both smaller and lower in perplexity "
          f"than these: {', '.join(report['pareto']['size_bytes'])}\n"]
    if report["failed"]:
        md.append("\n## Failed recipes\n\n" + "\n".join(
            f"- `{f['name']}`: {f['error']}" for f in report["failed"]) + "\n")
    fig = plot_tradeoff([base, *rows], x="size_bytes", y="perplexity", lower_is_better=True,
                        title="perplexity vs size on disk (lower left is better)")
    fig.savefig(out / "perplexity_vs_size.png", dpi=120)
    plt.close(fig)
    md.append("\n![perplexity_vs_size.png](perplexity_vs_size.png)\n")
    (out / "report.md").write_text("".join(md))
    return [out / "perplexity_vs_size.png"]
