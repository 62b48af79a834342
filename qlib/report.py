"""The report: evaluate the baseline and every registered recipe the same way.

Introduced in notebook 00; read in notebook 07. ``python -m qlib report --out DIR`` (or
``make report``) writes

- ``DIR/report.json``: ``{"baseline": {...}, "variants": [{...}, ...], "failed": [...],
  "meta": {...}}``; each row has ``name, technique, accuracy, precision, recall, f1``
  (fractions, macro averages), ``size_bytes, latency_ms`` (batch-1 median), ``params,
  nonzeros, agreement`` (with the baseline's test predictions) and more;
- ``DIR/report.md``: the same as a table;
- ``DIR/accuracy_vs_size.png`` and ``DIR/accuracy_vs_latency.png``.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from .recipes import baseline_variant, evaluate_variant, load_recipes

__all__ = ["build_report", "write_report", "markdown_table"]


def _public(row: dict) -> dict:
    """A row without its tensors (predictions stay in memory, not in the JSON)."""
    return {k: v for k, v in row.items() if k != "preds"}


def build_report(only: Sequence[str] | None = None, *, progress: bool = True,
                 latency_repeats: int = 50) -> dict:
    """Run the baseline and the chosen recipes (all by default); return the report dict.

    A recipe that raises is listed under ``"failed"`` with its error and the rest go on.
    """
    from tqdm.auto import tqdm

    from .train import get_baseline

    recipes = load_recipes()
    names = list(only) if only else list(recipes)
    unknown = [n for n in names if n not in recipes]
    if unknown:
        raise ValueError(f"unknown recipe(s) {unknown}; registered: {sorted(recipes)}")
    start = time.perf_counter()
    baseline, data = get_baseline(progress=progress)
    base = evaluate_variant(baseline_variant(baseline), data, latency_repeats=latency_repeats)
    ref = base["preds"]
    variants, failed = [], []
    bar = tqdm(names, desc="recipes", disable=not progress)
    for name in bar:
        bar.set_postfix_str(name)
        t0 = time.perf_counter()
        try:
            variant = recipes[name].fn(baseline, data)
            row = evaluate_variant(variant, data, ref, latency_repeats=latency_repeats)
        except Exception as err:  # noqa: BLE001 - one broken recipe must not hide the rest
            failed.append(dict(name=name, error=f"{type(err).__name__}: {err}"))
            continue
        row["seconds"] = round(time.perf_counter() - t0, 2)
        variants.append(_public(row))
    meta = dict(dataset=data.name, test_images=len(data.test), torch=torch.__version__,
                python=platform.python_version(), machine=platform.machine(),
                threads_for_latency=1, seconds=round(time.perf_counter() - start, 1))
    return dict(baseline=_public(base), variants=variants, failed=failed, meta=meta)


def markdown_table(rows: Sequence[dict], baseline: dict) -> str:
    """Rows as a markdown table with ratios against the baseline."""
    head = ("| name | technique | accuracy % | macro F1 % | size KB | smaller | latency ms | "
            "params | non-zeros | agreement % |\n|" + "---|" * 10 + "\n")
    lines = []
    for r in [baseline, *rows]:
        lines.append(
            f"| {r['name']} | {r['technique']} | {100 * r['accuracy']:.2f} | "
            f"{100 * r['f1']:.2f} | {r['size_bytes'] / 1024:.1f} | "
            f"{baseline['size_bytes'] / max(r['size_bytes'], 1):.1f}x | "
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
    base, rows = report["baseline"], report["variants"]
    md = [f"# Compression report\n\nDataset `{report['meta']['dataset']}` "
          f"({report['meta']['test_images']} test images); latency is the batch-1 median "
          "on 1 thread.\n", markdown_table(rows, base)]
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
