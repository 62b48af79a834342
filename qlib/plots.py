"""The figures notebooks and the report show (matplotlib; each returns its Figure).

Introduced in notebook 00 (confusion matrix) and notebook 07 (trade-off plots).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["plot_confusion", "plot_tradeoff", "pareto_front"]


def plot_confusion(confusion: Sequence[Sequence[int]], classes: Sequence[str] | None = None,
                   title: str = "Confusion matrix (rows = true class)", normalize: bool = False):
    """Heat map of a confusion matrix (num_classes, num_classes), counts written in the cells."""
    import matplotlib.pyplot as plt  # lazy: optional heavy dependency

    cm = np.asarray(confusion, dtype=float)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion must be square, got shape {cm.shape}")
    shown = cm / np.maximum(cm.sum(1, keepdims=True), 1) if normalize else cm
    classes = list(classes) if classes is not None else [str(i) for i in range(len(cm))]
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    im = ax.imshow(shown, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set(xticks=range(len(cm)), yticks=range(len(cm)), xticklabels=classes,
           yticklabels=classes, xlabel="predicted", ylabel="true", title=title)
    for i in range(len(cm)):
        for j in range(len(cm)):
            if cm[i, j]:
                text = f"{shown[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if shown[i, j] > shown.max() / 2 else "black")
    fig.tight_layout()
    return fig


def pareto_front(cost: Sequence[float], quality: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats: lower-or-equal cost and higher-or-equal
    quality, strictly better in one. Sorted by cost.

    >>> pareto_front([1, 2, 3], [0.9, 0.8, 0.95])
    [0, 2]
    """
    c, q = np.asarray(cost, float), np.asarray(quality, float)
    if c.shape != q.shape:
        raise ValueError(f"cost and quality must have the same length, got {c.shape} and "
                         f"{q.shape}")
    keep = [i for i in range(len(c))
            if not np.any((c <= c[i]) & (q >= q[i]) & ((c < c[i]) | (q > q[i])))]
    return sorted(keep, key=lambda i: (c[i], -q[i]))


def plot_tradeoff(rows: Sequence[dict], x: str = "size_bytes", y: str = "accuracy", *,
                  log_x: bool = True, title: str | None = None, lower_is_better: bool = False,
                  xerr_key: str | None = None, vlines: dict[str, float] | None = None,
                  note: str | None = None):
    """Scatter of report rows (dicts with ``name`` and the two keys), Pareto front drawn.

    ``x`` is a cost (smaller is better: ``size_bytes``, ``latency_ms``); ``y`` a quality,
    higher is better unless ``lower_is_better`` (perplexity, notebook 09). Points carry
    numbers and a numbered legend beside the axes names them, so labels never overlap
    (points within 3% in x and 0.05 in y share one label, "2,5"). ``xerr_key``: a row key
    holding ``[low, high]`` of x (drawn as a horizontal bar; rows without it get none);
    ``vlines``: reference values of x drawn as dashed vertical lines, legend label -> x;
    ``note``: a line of small text under the axes (e.g. which rows were left out, and why).
    The report's latency plot shows only timed rows (``qlib.report``, notebook 08).
    """
    import matplotlib.pyplot as plt  # lazy: optional heavy dependency

    if not rows:
        raise ValueError("no rows to plot")
    scale = 1024 if x == "size_bytes" else 1  # show sizes in KiB
    xs = np.array([r[x] for r in rows], float) / scale
    ys = np.array([r[y] for r in rows], float) * (100 if y in ("accuracy", "f1") else 1)
    fig, ax = plt.subplots(figsize=(9.5, 4.6))
    ax.scatter(xs, ys, color="tab:blue", zorder=3)
    if xerr_key:
        for r, xi, yi in zip(rows, xs, ys):
            if r.get(xerr_key):
                lo, hi = (v / scale for v in r[xerr_key])
                ax.plot([lo, hi], [yi, yi], color="tab:blue", alpha=0.5, lw=1.5, zorder=2)
    # one number per spot: variants that land (nearly) on the same point share it ("2,5")
    spots: list[tuple[float, float, list[int]]] = []
    for i, (xi, yi) in enumerate(zip(xs, ys), start=1):
        near = [sp for sp in spots if abs(np.log10(max(xi, 1e-12) / max(sp[0], 1e-12))) < 0.013
                and abs(yi - sp[1]) < 0.05]
        if near:
            near[0][2].append(i)
        else:
            spots.append((xi, yi, [i]))
    for xi, yi, nums in spots:
        ax.annotate(",".join(map(str, nums)), (xi, yi), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    front = pareto_front(xs, -ys if lower_is_better else ys)
    ax.step(xs[front], ys[front], where="post", color="tab:orange", label="Pareto front",
            zorder=2)
    for label, value in (vlines or {}).items():
        ax.axvline(value / scale, color="gray", ls="--", lw=1, label=label)
    for i, r in enumerate(rows, start=1):
        ax.plot([], [], " ", label=f"{i}  {r['name']}")  # the numbered legend entries
    if log_x:
        ax.set_xscale("log")
        # lazy: optional heavy dependency
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    unit = {"size_bytes": "size on disk (KiB)", "latency_ms": "latency, batch 1 (ms)"}
    ax.set(xlabel=unit.get(x, x), ylabel=f"{y} (%)" if y in ("accuracy", "f1") else y,
           title=title or f"{y} vs {unit.get(x, x)}")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, color="dimgray")
    fig.tight_layout(rect=(0, 0.04 if note else 0, 1, 1))
    return fig
