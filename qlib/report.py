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
from collections.abc import Sequence
from pathlib import Path

import torch

from .recipes import baseline_variant, evaluate_variant, load_recipes

__all__ = ["build_report", "write_report", "markdown_table", "verdict"]

_PRIVATE = ("preds", "logits", "labels")


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


def build_report(only: Sequence[str] | None = None, *, dataset: str = "embedded",
                 model: str = "course", progress: bool = True,
                 latency_repeats: int = 50) -> dict:
    """Run the baseline and the chosen recipes (all by default); return the report dict.

    ``dataset`` and ``model`` pick the baseline (``qlib.train.get_trained``); the embedded
    MNIST sample and the course model are the defaults. A recipe that raises is listed
    under ``"failed"`` with its error and the rest go on.
    """
    from tqdm.auto import tqdm

    from .plots import pareto_front
    from .train import get_baseline

    recipes = load_recipes()
    names = list(only) if only else list(recipes)
    unknown = [n for n in names if n not in recipes]
    if unknown:
        raise ValueError(f"unknown recipe(s) {unknown}; registered: {sorted(recipes)}")
    start = time.perf_counter()
    baseline, data = get_baseline(model=model, dataset=dataset, progress=progress)
    base = evaluate_variant(baseline_variant(baseline), data, latency_repeats=latency_repeats)
    _derive(base, base)
    variants, failed = [], []
    bar = tqdm(names, desc="recipes", disable=not progress)
    for name in bar:
        bar.set_postfix_str(name)
        t0 = time.perf_counter()
        try:
            variant = recipes[name].fn(baseline, data)
            row = evaluate_variant(variant, data, base, latency_repeats=latency_repeats)
        except Exception as err:  # noqa: BLE001 - one broken recipe must not hide the rest
            failed.append(dict(name=name, error=f"{type(err).__name__}: {err}"))
            continue
        row["seconds"] = round(time.perf_counter() - t0, 2)
        row["verdict"] = verdict(_derive(row, base))
        variants.append(_public(row))
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


def markdown_table(rows: Sequence[dict], baseline: dict) -> str:
    """Rows (from :func:`build_report`, with ``compression`` derived) as a markdown table."""
    head = ("| name | technique | accuracy % (95% CI) | macro F1 % | McNemar p | size KB | "
            "smaller | latency ms | params | non-zeros | agreement % |\n|" + "---|" * 11 + "\n")
    lines = []
    for r in [baseline, *rows]:
        lo, hi = r["accuracy_ci"]
        lines.append(
            f"| {r['name']} | {r['technique']} | {100 * r['accuracy']:.2f} "
            f"({100 * lo:.1f}–{100 * hi:.1f}) | {100 * r['f1']:.2f} | {r['mcnemar_p']:.3f} | "
            f"{r['size_bytes'] / 1024:.1f} | {r['compression']:.1f}x | "
            f"{r['latency_ms']:.3f} | {r['params']:,} | {r['nonzeros']:,} | "
            f"{100 * r['agreement']:.1f} |")
    return head + "\n".join(lines) + "\n"


def write_report(report: dict, out: str | Path) -> list[Path]:
    """Write report.json, report.md and the PNG trade-off plots into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import plot_tradeoff

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json", out / "report.md"]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    base, rows, meta = report["baseline"], report["variants"], report["meta"]
    md = [f"# Compression report\n\nModel `{meta['model']}` on dataset `{meta['dataset']}` "
          f"({meta['test_images']} test images). Latency is the batch-1 median on 1 thread; "
          "the interval is a 95% bootstrap interval of accuracy; McNemar p tests whether a "
          "variant's accuracy differs from the baseline's on the same images.\n\n",
          markdown_table(rows, base)]
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
