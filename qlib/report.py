"""The report: evaluate the baseline and every registered recipe the same way.

Introduced in notebook 00; read in notebook 07. ``python -m qlib report --out DIR`` (or
``make report``) writes

- ``DIR/report.json``: ``{"baseline": {...}, "variants": [{...}, ...], "failed": [...],
  "pareto": {...}, "meta": {...}}``; each row has ``name, technique, accuracy, precision,
  recall, f1`` (fractions, macro averages), ``size_bytes, latency_ms`` (batch-1 median),
  ``params, nonzeros, agreement`` (with the baseline's test predictions), the derived
  ``compression``, ``speedup`` and ``accuracy_drop_points``, the statistics ``accuracy_ci,
  mcnemar_p, output_kl, ece`` and a one-paragraph ``verdict``: every figure the markdown
  shows; the speed fields below; and ``"challenge"`` (the compression challenge);
- ``DIR/report.md``: the same as tables and verdicts;
- ``DIR/accuracy_vs_size.png`` and ``DIR/accuracy_vs_latency.png`` with Pareto fronts.

**Speed** (notebook 08). Each row's ``execution`` (:data:`qlib.recipes.EXECUTIONS`) decides
its reference: an "eager" row is timed against the baseline module, an "ort" row against
the baseline exported to ONNX Runtime fp32 (``Variant.reference``), each in
``speed_rounds`` interleaved A-B-A rounds (:func:`qlib.measure.latency.paired_latency`).
``speedup`` is the median over rounds of reference_ms / row_ms, ``speed_low`` /
``speed_high`` its min / max, ``speed_noise`` the most the reference differed from itself,
and ``speed_verdict`` is "faster" / "slower" only where every round clears that noise
(:func:`qlib.measure.stats.speed_verdict`), else "same, within noise". A "simulated" row
(fake quantization, emulated integer arithmetic) gets no speedup and the verdict
:data:`SIMULATED`: its float arithmetic says nothing about deployed int speed.

**Compression challenge** (notebook 08): among all rows within :data:`CHALLENGE_POINTS`
accuracy points of the baseline (point estimate of the drop; the interval is shown), the
smallest file wins. ``build_report(challenge=[FILE, ...])`` scores files written by
:func:`qlib.pipeline.save_compressed` for the course model alongside the recipes.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ._table import markdown_table
from .codec import CorruptFileError
from .data import Splits
from .evaluate import baseline_variant, evaluate_lm_variant, evaluate_variant
from .lm import get_lm
from .measure import count_nonzeros, count_parameters
from .measure.latency import paired_latency
from .measure.stats import SAME_SPEED, speed_verdict
from .pipeline import load_compressed
from .plots import pareto_front, plot_tradeoff
from .recipes import Variant, load_recipes
from .train import get_baseline

__all__ = ["build_report", "build_lm_report", "write_report", "report_table", "lm_table",
           "verdict", "speed_text", "time_against_reference", "challenge_standings",
           "challenge_entry", "challenge_table", "TASKS", "SIMULATED", "SPEED_REFERENCES",
           "CHALLENGE_POINTS"]

#: The speed verdict of a simulated row (fake quantization, emulated integer arithmetic).
SIMULATED = "simulated — not timed as deployed"

#: What each execution kind's speed is measured against.
SPEED_REFERENCES = {"eager": "PyTorch eager fp32 (the baseline)",
                    "ort": "ONNX Runtime fp32 (the baseline, exported)"}

#: The compression challenge's accuracy budget: at most this many points below the baseline.
CHALLENGE_POINTS = 1.0

#: What ``python -m qlib report --task`` accepts.
TASKS = ("vision", "lm")

_PRIVATE = ("preds", "logits", "labels", "window_nll")


def _public(row: dict) -> dict:
    """A row without its tensors (predictions stay in memory, not in the JSON)."""
    return {k: v for k, v in row.items() if k not in _PRIVATE}


def _derive(row: dict, base: dict) -> dict:
    """Ratios against the baseline, stored so that the JSON carries every shown figure."""
    row["compression"] = base["size_bytes"] / max(row["size_bytes"], 1)
    row["accuracy_drop_points"] = 100 * (base["accuracy"] - row["accuracy"])
    return row


def time_against_reference(row: dict, variant: Variant, baseline: nn.Module, example: object,
                           *, rounds: int = 7, repeats: int = 20,
                           clock: Callable[[], float] = time.perf_counter) -> dict:
    """Add the speed fields to ``row`` (see the module docstring); returns ``row``.

    An "eager" variant is timed against ``baseline``, an "ort" one against
    ``variant.reference``; a "simulated" one is not timed against anything (``speedup``
    None, ``speed_verdict`` :data:`SIMULATED`). ``latency_ms`` of a timed row becomes the
    median of all its interleaved calls and ``latency_range_ms`` their 25th and 75th
    percentiles; ``clock`` is for tests (a deterministic fake clock).
    """
    row["execution"] = variant.execution
    if variant.execution == "simulated":
        row.update(speedup=None, speed_low=None, speed_high=None, speed_noise=None,
                   speed_rounds=0, speed_reference=None, reference_latency_ms=None,
                   latency_range_ms=None, speed_verdict=SIMULATED)
        return row
    reference = variant.reference if variant.execution == "ort" else baseline
    t = paired_latency(variant.model, reference, example, rounds=rounds, repeats=repeats,
                       threads=1, clock=clock)
    v = speed_verdict(t["speedup"], t["self"])
    row.update(latency_ms=t["median_ms"],
               latency_range_ms=[float(np.percentile(t["runs"], q)) for q in (25, 75)],
               reference_latency_ms=t["reference_median_ms"], speedup=v["speedup"],
               speed_low=v["low"], speed_high=v["high"], speed_noise=v["noise"],
               speed_rounds=v["rounds"], speed_reference=SPEED_REFERENCES[variant.execution],
               speed_verdict=v["verdict"])
    return row


def speed_text(row: dict) -> str:
    """The speed clause of a verdict: "same, within noise (...)", "1.4x faster than ... (...)",
    or :data:`SIMULATED`. Only rows whose every round clears the noise get a factor."""
    if row.get("speed_low") is None or row.get("speed_verdict") == "reference":
        return row.get("speed_verdict") or "not timed"
    spread = (f"{row['speed_low']:.2f}–{row['speed_high']:.2f}x over {row['speed_rounds']} "
              f"interleaved rounds, noise ±{100 * row['speed_noise']:.0f}%")
    if row["speed_verdict"] == SAME_SPEED:
        return f"{SAME_SPEED} against {row['speed_reference']} ({spread})"
    factor = row["speedup"] if row["speed_verdict"] == "faster" else 1 / row["speedup"]
    return (f"{factor:.2f}x {row['speed_verdict']} than {row['speed_reference']} at batch 1 "
            f"({spread})")


def verdict(row: dict) -> str:
    """One paragraph on a variant: what it saves, what it costs, and whether the cost is real."""
    drop = row["accuracy_drop_points"]
    significant = row["mcnemar_p"] < 0.05
    change = ("no accuracy change" if abs(drop) < 0.05 else
              f"{abs(drop):.2f} accuracy points {'lost' if drop > 0 else 'gained'}")
    stat = ("a real difference (McNemar p = {p:.3f})" if significant else
            "within noise on this test set (McNemar p = {p:.2f})").format(p=row["mcnemar_p"])
    text = (f"**{row['name']}** ({row['technique']}): {row['compression']:.1f}x smaller on "
            f"disk; speed: {speed_text(row)}; {change}, {stat}; agrees with the baseline on "
            f"{100 * row['agreement']:.1f}% of test images (macro F1 "
            f"{100 * row['f1']:.2f}%, ECE {row['ece']:.3f}).")
    extra = row.get("extra") or {}
    if extra.get("n_seeds"):  # notebook 06's students: accuracy and F1 are seed means
        text += (f" Accuracy and F1 are the mean of {extra['n_seeds']} seeds (accuracy std "
                 f"{100 * extra['accuracy_std']:.2f} points); McNemar p, agreement and ECE "
                 "are seed 0's model.")
        if extra.get("gap_closed") is not None:
            worst = max(p["mcnemar_p"] for p in extra["paired_vs_scratch"])
            text += (f" Against scratch-student (same seeds, setting {extra['setting']}): "
                     f"{100 * (extra['accuracy_mean'] - extra['scratch_accuracy_mean']):+.2f} "
                     f"points, {100 * extra['gap_closed']:.0f}% of the teacher - scratch gap "
                     f"closed; paired McNemar p per seed at most {worst:.2g}.")
    if extra.get("note"):  # notebook 11's mobile rows: another architecture, not a copy
        text += f" Note: {extra['note']}."
    return text


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
                 latency_repeats: int = 50, speed_rounds: int = 7,
                 challenge: Sequence[str | Path] = (),
                 clock: Callable[[], float] = time.perf_counter) -> dict:
    """Run the baseline and the chosen recipes (all by default); return the report dict.

    ``dataset`` and ``model`` pick the baseline (``qlib.train.get_trained``); the embedded
    MNIST sample and the course model are the defaults. A recipe that raises is listed
    under ``"failed"`` with its error and the rest go on. Each row's speed is measured
    against its reference in ``speed_rounds`` interleaved rounds (module docstring);
    ``clock`` is for tests. ``challenge``: files from :func:`qlib.pipeline.save_compressed`
    to score in the compression challenge (:func:`challenge_entry`).
    """
    recipes, names = _chosen("vision", only)
    start = time.perf_counter()
    baseline, data = get_baseline(model=model, dataset=dataset, progress=progress)
    example = data.test.tensors[0][:1]
    base = evaluate_variant(baseline_variant(baseline), data, latency_repeats=latency_repeats)
    _derive(base, base)
    base.update(execution="eager", speedup=1.0, speed_low=1.0, speed_high=1.0,
                speed_noise=None, speed_rounds=0, speed_reference=None,
                reference_latency_ms=base["latency_ms"], latency_range_ms=None,
                speed_verdict="reference")

    def measure(v: Variant) -> dict:
        row = evaluate_variant(v, data, base, latency_repeats=latency_repeats)
        return time_against_reference(row, v, baseline, example, rounds=speed_rounds,
                                      clock=clock)

    variants, failed = _run_recipes(recipes, names, baseline, data, measure, "recipes",
                                    progress)
    entries = [challenge_entry(path, baseline, data, base) for path in challenge]  # not timed
    for row in [*variants, *entries]:
        row["verdict"] = verdict(_derive(row, base))
    variants = [_public(row) for row in variants]
    entries = [_public(row) for row in entries]
    rows = [_public(base), *variants]
    timed = [r for r in rows if r["execution"] != "simulated"]
    pareto = {"size_bytes": [rows[i]["name"] for i in pareto_front(
                  [r["size_bytes"] for r in rows], [r["accuracy"] for r in rows])],
              "latency_ms": [timed[i]["name"] for i in pareto_front(
                  [r["latency_ms"] for r in timed], [r["accuracy"] for r in timed])]}
    meta = dict(dataset=data.name, model=model, test_images=len(data.test),
                torch=torch.__version__, python=platform.python_version(),
                machine=platform.machine(), threads_for_latency=1, speed_rounds=speed_rounds,
                seconds=round(time.perf_counter() - start, 1))
    standings = challenge_standings([*rows, *entries], rows[0])
    return dict(baseline=rows[0], variants=variants, failed=failed, pareto=pareto, meta=meta,
                challenge=dict(points=CHALLENGE_POINTS, standings=standings,
                               entries=entries,
                               course_best=next((r["name"] for r in standings
                                                 if r["rank"] and not r["entry"]), None)))


def challenge_standings(rows: Sequence[dict], baseline: dict, *,
                        points: float = CHALLENGE_POINTS) -> list[dict]:
    """Rank rows for the compression challenge: the smallest file within ``points``.

    Introduced in notebook 08. A row qualifies when its accuracy drop,
    ``100 * (baseline accuracy - row accuracy)`` (the point estimate on the test set), is
    at most ``points``; its 95% interval is carried along so a reader sees how sure that
    is. Qualifying rows are ranked by ``size_bytes`` (rank 1 = smallest; ties share the
    earlier row's order), the rest follow by size with ``rank`` None. Each standing:
    ``name, size_bytes, compression, accuracy, accuracy_ci, drop_points, qualifies, rank,
    entry`` (True for a learner's file, technique "challenge entry").

    >>> base = dict(name="b", accuracy=0.99, size_bytes=400, accuracy_ci=[0.98, 1.0])
    >>> rows = [base, dict(base, name="s", size_bytes=40), dict(base, name="t", size_bytes=4,
    ...                                                          accuracy=0.9)]
    >>> [(r["name"], r["rank"]) for r in challenge_standings(rows, base)]
    [('s', 1), ('b', 2), ('t', None)]
    """
    if not points >= 0:
        raise ValueError(f"points must be a number >= 0 (accuracy points), got {points!r}")
    out = []
    for r in rows:
        drop = 100 * (baseline["accuracy"] - r["accuracy"])
        out.append(dict(name=r["name"], size_bytes=int(r["size_bytes"]),
                        compression=baseline["size_bytes"] / max(r["size_bytes"], 1),
                        accuracy=r["accuracy"], accuracy_ci=list(r["accuracy_ci"]),
                        drop_points=drop, qualifies=drop <= points + 1e-9,
                        entry=r.get("technique") == "challenge entry"))
    out.sort(key=lambda r: (not r["qualifies"], r["size_bytes"]))
    for i, r in enumerate(out):
        r["rank"] = i + 1 if r["qualifies"] else None
    return out


def challenge_entry(path: str | Path, baseline: nn.Module, data: Splits, base_row: dict) -> dict:
    """Score a learner's file in the compression challenge: its report row.

    Introduced in notebook 08. ``path`` holds bytes from
    :func:`qlib.pipeline.save_compressed` for the course model's architecture (``baseline``
    is the template); its length is the size. The decoded model is evaluated like every
    recipe (:func:`qlib.evaluate.evaluate_variant`, against ``base_row``); the row is named
    ``entry:<file name>`` with technique "challenge entry".
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no challenge file at {str(path)!r}: pass a file written with "
                         "Path(FILE).write_bytes(qlib.pipeline.save_compressed(model, books))")
    blob = path.read_bytes()
    try:
        model = load_compressed(blob, baseline)
    except (CorruptFileError, ValueError) as err:
        raise ValueError(f"{path} is not a qlib.pipeline.save_compressed file of the course "
                         f"model ({type(err).__name__}: {err})") from None
    v = Variant(f"entry:{path.name}", "challenge entry", model, len(blob),
                count_parameters(model), count_nonzeros(model))
    row = evaluate_variant(v, data, base_row, latency_repeats=5)
    row.update(execution="eager", speed_verdict="not timed (challenge entries are scored on "
               "size and accuracy)")
    return row


def challenge_table(standings: Sequence[dict]) -> str:
    """Challenge standings (from :func:`challenge_standings`) as a markdown table."""
    table = [{"rank": r["rank"] or "—", "name": r["name"],
              "size KB": f"{r['size_bytes'] / 1024:.1f}", "smaller": f"{r['compression']:.1f}x",
              "accuracy % (95% CI)": f"{100 * r['accuracy']:.2f} "
                                     f"({100 * r['accuracy_ci'][0]:.1f}–"
                                     f"{100 * r['accuracy_ci'][1]:.1f})",
              "drop (points)": f"{r['drop_points']:+.2f}",
              "within budget": "yes" if r["qualifies"] else "no"} for r in standings]
    return markdown_table(table) + "\n"


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
            "accuracy % (95% CI)": f"{100 * r['accuracy']:.2f}{_seed_spread(r)} "
                                   f"({100 * lo:.1f}–{100 * hi:.1f})",
            "macro F1 %": f"{100 * r['f1']:.2f}", "McNemar p": f"{r['mcnemar_p']:.3f}",
            "size KB": f"{r['size_bytes'] / 1024:.1f}", "smaller": f"{r['compression']:.1f}x",
            "latency ms": ("— (simulated)" if r.get("execution") == "simulated"
                           else f"{r['latency_ms']:.3f}"),
            "speed (vs its fp32 reference)": _speed_cell(r), "params": f"{r['params']:,}",
            "non-zeros": f"{r['nonzeros']:,}", "agreement %": f"{100 * r['agreement']:.1f}"})
    return markdown_table(table) + "\n"


def _seed_spread(r: dict) -> str:
    """" ± std, mean of n seeds" for a row trained over several seeds (notebook 06's students),
    else ""."""
    extra = r.get("extra") or {}
    if not extra.get("n_seeds"):
        return ""
    return f" ± {100 * extra['accuracy_std']:.2f}, mean of {extra['n_seeds']} seeds"


def _speed_cell(r: dict) -> str:
    """The table's short speed cell: verdict, factor where real, min–max over rounds."""
    v = r.get("speed_verdict")
    if v is None or r.get("speed_low") is None or v == "reference":
        return {"reference": "reference", SIMULATED: SIMULATED}.get(v, "not timed")
    ref = {"eager": "eager", "ort": "ORT"}[r["execution"]] + " fp32"
    spread = f"{r['speed_low']:.2f}–{r['speed_high']:.2f}x vs {ref}"
    if v == SAME_SPEED:
        return f"{v} ({spread})"
    return f"{r['speedup']:.2f}x, {v} ({spread})"


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
    rounds = meta.get("speed_rounds", 7)
    md = [f"# Compression report\n\nModel `{meta['model']}` on dataset `{meta['dataset']}` "
          f"({meta['test_images']} test images). Latency is the batch-1 median on 1 thread; "
          "the interval is a 95% bootstrap interval of accuracy; McNemar p tests whether a "
          "variant's accuracy differs from the baseline's on the same images. It is one test "
          "per row: a variant that truly matches the baseline still gets p < 0.05 one time "
          "in twenty, so among many rows read together some can by chance alone (multiple "
          "comparisons); compare each p with 0.05 / (number of rows), Bonferroni, before "
          "calling several differences real.\n\n"
          "**Speed** is measured against the fastest fp32 path of the same kind: a PyTorch "
          "row against the baseline in PyTorch eager fp32, an ONNX Runtime row against the "
          f"baseline exported to ONNX Runtime fp32, in {rounds} interleaved rounds "
          "(reference, row, reference). A row is called faster or slower only if every "
          "round's ratio clears the noise, the most the reference differed from itself in "
          f"those rounds; otherwise it is '{SAME_SPEED}'. Rows that simulate quantization "
          "in float arithmetic (fake quant) or emulate integer arithmetic in PyTorch are "
          f"marked '{SIMULATED}' and get no speed verdict: that is not how they would run "
          "deployed.\n\n",
          report_table(rows, base)]
    if rows:
        md.append("\n## Verdicts\n\n" + "\n\n".join(r["verdict"] for r in rows) + "\n")
    md.append("\n## Pareto fronts\n\nNo other variant is both smaller (faster) and more "
              "accurate than these (latency: timed rows only, simulated rows left out):\n\n"
              + "".join(f"- accuracy vs {x.replace('_', ' ')}: {', '.join(names)}\n"
                        for x, names in report["pareto"].items()))
    if "challenge" in report:
        md.append(_challenge_md(report["challenge"]))
    if report["failed"]:
        md.append("\n## Failed recipes\n\n" + "\n".join(
            f"- `{f['name']}`: {f['error']}" for f in report["failed"]) + "\n")
    timed = [r for r in [base, *rows] if r.get("execution") != "simulated"]
    left_out = [r["name"] for r in rows if r.get("execution") == "simulated"]
    ort_refs = {f"ONNX Runtime fp32 baseline (reference of {r['name']})":
                r["reference_latency_ms"] for r in rows if r.get("execution") == "ort"}
    for x, fname, shown, kw in (
            ("size_bytes", "accuracy_vs_size.png", [base, *rows], {}),
            ("latency_ms", "accuracy_vs_latency.png", timed, dict(
                xerr_key="latency_range_ms", vlines=ort_refs,
                note=("not shown (simulated, not timed as deployed): " + ", ".join(left_out)
                      if left_out else None),
                title="accuracy vs latency, batch 1 (bar: middle half of its calls)"))):
        fig = plot_tradeoff(shown, x=x, y="accuracy", **kw)
        fig.savefig(out / fname, dpi=120)
        plt.close(fig)
        paths.append(out / fname)
        md.append(f"\n![{fname}]({fname})\n")
    paths[1].write_text("".join(md))
    return paths


def _challenge_md(ch: dict) -> str:
    """The report's "Compression challenge" section."""
    best = next((r for r in ch["standings"] if r["name"] == ch["course_best"]), None)
    text = ("\n## Compression challenge\n\nThe smallest model within "
            f"{ch['points']:g} accuracy point of the baseline wins. 'Within' is judged on the "
            "point estimate of the drop on the test set; the 95% interval of accuracy is shown "
            "beside it, and the row's McNemar p above says whether its drop is measurable. ")
    if best:
        text += (f"The course's best, the number to beat: **{best['name']}**, "
                 f"{best['size_bytes']:,} bytes ({best['compression']:.1f}x smaller), "
                 f"{100 * best['accuracy']:.2f}% accuracy ({best['drop_points']:+.2f} points). ")
    text += ("Enter your own: save the course model with `qlib.pipeline.save_compressed` into "
             "a file and score it with `python -m qlib report --out DIR --challenge FILE` (or "
             "`build_report(challenge=[FILE])`; notebook 08).\n\n")
    for e in ch["entries"]:
        r = next(s for s in ch["standings"] if s["name"] == e["name"])
        text += (f"- {e['name']}: rank {r['rank']}\n" if r["rank"] else
                 f"- {e['name']}: not within the budget ({r['drop_points']:+.2f} points)\n")
    return text + "\n" + challenge_table(ch["standings"])


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
