"""Is a difference real? Confidence intervals, paired tests, fidelity and calibration.

Introduced in notebook 07. A compressed model that scores 98.0% against the baseline's
98.3% on 1,000 test images differs by 3 images; whether that means anything depends on
*which* images. These tools answer that question:

- :func:`bootstrap_ci`: percentile bootstrap interval of accuracy (resample test images).
- :func:`paired_bootstrap`: interval of the accuracy *difference* of two models scored on
  the same images (resampling pairs keeps the correlation between them).
- :func:`paired_mean_diff`: the same for a continuous score per item (a language model's
  loss per text window, notebook 09): mean difference A - B with a paired interval.
- :func:`mcnemar`: exact McNemar test on the discordant pairs b (A right, B wrong) and
  c (A wrong, B right): under H0 each discordant image is a fair coin, so
  ``p = min(1, 2 * P[Binomial(b + c, 1/2) <= min(b, c)])``.
- :func:`output_kl`: mean KL(p_ref || p_other) between two models' softmax outputs.
- :func:`speed_verdict`: is one model faster than its reference? From per-round speed
  ratios s_r and the reference-against-itself ratios n_r (A-B-A rounds), with the noise
  band ``e = max_r |log n_r|``: "faster" if ``min_r s_r > exp(e)``, "slower" if
  ``max_r s_r < exp(-e)``, otherwise "same, within noise" (notebook 08, the report).
- :func:`expected_calibration_error`: ``ECE = sum_m |B_m|/n * |acc(B_m) - conf(B_m)|``
  over equal-width confidence bins B_m.

>>> mcnemar([1, 1, 1, 0], [1, 0, 0, 0])["p_value"]   # b=2, c=0
0.5
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb

import numpy as np
import torch
from torch import Tensor

from .._util import as_real_tensor, check_finite_number, check_int, check_logits

__all__ = ["bootstrap_ci", "paired_bootstrap", "paired_mean_diff", "mcnemar", "output_kl",
           "expected_calibration_error", "reliability_bins", "imbalanced_indices",
           "speed_verdict", "SAME_SPEED", "as_correct"]

#: What :func:`speed_verdict` says when the rounds do not tell a model from its reference.
SAME_SPEED = "same, within noise"

BoolLike = Tensor | np.ndarray | Sequence[int] | Sequence[bool]


def as_correct(x: BoolLike, name: str) -> np.ndarray:
    """Per-image correctness (1-d, 0/1 or False/True) as a bool array; anything else raises."""
    a = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-d array of per-image correctness, "
                         f"got shape {a.shape}")
    ok = np.isin(a, (0, 1))  # False for NaN, strings, None
    if not ok.all():
        raise ValueError(f"{name} must hold only 0/1 or False/True (is the prediction right?), "
                         f"got {a[~ok].tolist()[0]!r}")
    return a.astype(bool)


def _floats(v: object, name: str) -> np.ndarray:
    a = as_real_tensor(v, name).detach().cpu().numpy() if isinstance(v, Tensor) else v
    try:
        if a is None or np.iscomplexobj(a):
            raise TypeError
        return np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be real numbers (one value per item), got "
                        f"{type(v).__name__}") from None


def _check_boot(n_boot: int, confidence: float) -> None:
    check_int(n_boot, "n_boot (resamples; fewer give no usable interval)", 100)
    check_finite_number(confidence, "confidence", 0, 1, strict=True)


def bootstrap_ci(correct: BoolLike, *, n_boot: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """Accuracy and its percentile-bootstrap interval: ``(accuracy, low, high)``.

    ``correct`` (N,) is 1 where the model is right. Each of ``n_boot`` resamples draws N
    images with replacement; the interval is the (1-confidence)/2 and (1+confidence)/2
    quantiles of the resampled accuracies.
    """
    c = as_correct(correct, "correct")
    _check_boot(n_boot, confidence)
    rng = np.random.default_rng(seed)
    accs = c[rng.integers(0, len(c), (n_boot, len(c)))].mean(1)
    lo, hi = np.quantile(accs, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(c.mean()), float(lo), float(hi)


def paired_bootstrap(correct_a: BoolLike, correct_b: BoolLike, *, n_boot: int = 2000,
                     confidence: float = 0.95, seed: int = 0) -> dict:
    """Accuracy difference A - B on the same images with a paired bootstrap interval.

    Returns ``{"diff", "low", "high", "p_value"}``; ``p_value`` is the two-sided bootstrap
    p-value of "no difference" (twice the smaller tail mass at 0, at most 1).
    """
    a, b = as_correct(correct_a, "correct_a"), as_correct(correct_b, "correct_b")
    if a.shape != b.shape:
        raise ValueError(f"both models must be scored on the same images, got {len(a)} and "
                         f"{len(b)}")
    _check_boot(n_boot, confidence)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), (n_boot, len(a)))
    diffs = a[idx].mean(1) - b[idx].mean(1)
    lo, hi = np.quantile(diffs, [(1 - confidence) / 2, (1 + confidence) / 2])
    tail = min((diffs <= 0).mean(), (diffs >= 0).mean())
    return dict(diff=float(a.mean() - b.mean()), low=float(lo), high=float(hi),
                p_value=float(min(1.0, 2 * tail)))


def paired_mean_diff(a: Tensor | np.ndarray | Sequence[float],
                     b: Tensor | np.ndarray | Sequence[float], *, n_boot: int = 2000,
                     confidence: float = 0.95, seed: int = 0) -> dict:
    """Mean of ``a - b`` over paired items (N,), with a paired percentile-bootstrap interval.

    Introduced in notebook 09: ``a`` and ``b`` are two models' mean losses on the same N text
    windows; resampling windows (not tokens) keeps the correlation of neighbouring tokens.
    Returns ``{"diff", "low", "high", "p_value", "n"}``; ``p_value`` as in
    :func:`paired_bootstrap`.

    >>> r = paired_mean_diff([1.0, 2.0, 3.0, 4.0], [0.5, 1.5, 2.5, 3.5])
    >>> r["diff"], r["low"], r["high"], r["p_value"]
    (0.5, 0.5, 0.5, 0.0)
    """
    x = [_floats(a, "a"), _floats(b, "b")]
    if x[0].ndim != 1 or x[0].shape != x[1].shape or not len(x[0]):
        raise ValueError(f"a and b must be 1-D, non-empty and of the same length (one value per "
                         f"item), got shapes {x[0].shape} and {x[1].shape}")
    if not (np.isfinite(x[0]).all() and np.isfinite(x[1]).all()):
        raise ValueError("a and b must be finite (a NaN or inf loss means a broken model)")
    _check_boot(n_boot, confidence)
    d = x[0] - x[1]
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), (n_boot, len(d)))].mean(1)
    lo, hi = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    tail = min((means <= 0).mean(), (means >= 0).mean())
    return dict(diff=float(d.mean()), low=float(lo), high=float(hi),
                p_value=float(min(1.0, 2 * tail)), n=len(d))


def mcnemar(correct_a: BoolLike, correct_b: BoolLike) -> dict:
    """Exact McNemar test: are A and B equally accurate on the same images?

    Only discordant images count: ``b`` = A right & B wrong, ``c`` = A wrong & B right.
    Returns ``{"b", "c", "p_value"}`` (two-sided exact binomial, as scipy's ``binomtest``).
    """
    a, bb = as_correct(correct_a, "correct_a"), as_correct(correct_b, "correct_b")
    if a.shape != bb.shape:
        raise ValueError(f"both models must be scored on the same images, got {len(a)} and "
                         f"{len(bb)}")
    b, c = int((a & ~bb).sum()), int((~a & bb).sum())
    n, k = b + c, min(b, c)
    tail = sum(comb(n, i) for i in range(k + 1)) / 2 ** n if n else 1.0
    return dict(b=b, c=c, p_value=float(min(1.0, 2 * tail)))


def output_kl(logits_ref: Tensor, logits_other: Tensor) -> float:
    """Mean over images of KL(softmax(ref) || softmax(other)) in nats; 0 when they agree."""
    check_logits(logits_ref, "logits_ref")
    check_logits(logits_other, "logits_other")
    if logits_ref.shape != logits_other.shape:
        raise ValueError(f"logits must both be (N, classes) of the same shape, got "
                         f"{tuple(logits_ref.shape)} and {tuple(logits_other.shape)}")
    log_p = torch.log_softmax(logits_ref.double(), 1)
    log_q = torch.log_softmax(logits_other.double(), 1)
    return float((log_p.exp() * (log_p - log_q)).sum(1).mean())


def reliability_bins(logits: Tensor, labels: Tensor, n_bins: int = 15) -> dict:
    """Per confidence bin: ``count``, mean ``confidence`` and ``accuracy`` (arrays of n_bins).

    Confidence is the top softmax probability; bin m holds confidences in
    ((m-1)/n_bins, m/n_bins]. Empty bins have count 0 and NaN means.
    """
    check_int(n_bins, "n_bins", 1)
    check_logits(logits, "logits")
    labels = as_real_tensor(labels, "labels")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must hold integer class indices, got {labels.dtype}")
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (N, classes) with N labels, got "
                         f"{tuple(logits.shape)} and labels of shape {tuple(labels.shape)}")
    probs = torch.softmax(logits.double(), 1)
    conf, pred = probs.max(1)
    right = (pred == labels).double()
    which = torch.clamp(torch.ceil(conf * n_bins).long() - 1, 0, n_bins - 1)
    count = torch.bincount(which, minlength=n_bins).double()
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = (torch.bincount(which, conf, n_bins) / count).numpy()
        acc = (torch.bincount(which, right, n_bins) / count).numpy()
    return dict(count=count.numpy().astype(int), confidence=mean_conf, accuracy=acc)


def expected_calibration_error(logits: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """ECE: the bin-weighted mean gap between confidence and accuracy (0 = calibrated)."""
    bins = reliability_bins(logits, labels, n_bins)
    w = bins["count"] / bins["count"].sum()
    gap = np.nan_to_num(np.abs(bins["accuracy"] - bins["confidence"]))
    return float((w * gap).sum())


def imbalanced_indices(labels: Tensor, fractions: Sequence[float], *, seed: int = 0
                       ) -> Tensor:
    """Indices of a subset keeping ``fractions[c]`` of each class c (seeded).

    Used in notebook 07 to make an imbalanced test split on purpose, where accuracy and
    macro F1 disagree. ``fractions`` has one entry in [0, 1] per class.
    """
    labels = as_real_tensor(labels, "labels")
    if labels.numel() == 0 or labels.is_floating_point() or labels.min() < 0:
        raise ValueError(f"labels must be a non-empty tensor of class indices >= 0, got "
                         f"{labels.numel()} values of {labels.dtype}")
    if any(not 0 <= f <= 1 for f in fractions):
        raise ValueError(f"fractions must lie in [0, 1], got {list(fractions)}")
    if int(labels.max()) >= len(fractions):
        raise ValueError(f"need one fraction per class ({int(labels.max()) + 1}), got "
                         f"{len(fractions)}")
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for c, f in enumerate(fractions):
        idx = torch.nonzero(labels == c).flatten()
        keep.append(idx[torch.randperm(len(idx), generator=gen)[:round(f * len(idx))]])
    return torch.cat(keep).sort().values


def speed_verdict(speedup: Sequence[float], self_ratios: Sequence[float]) -> dict:
    """Faster, slower or the same as the reference, judged against the measured noise.

    Introduced in notebook 08. ``speedup``: per-round ratios reference_ms / model_ms (> 1:
    faster); ``self_ratios``: per-round ratios of the reference against itself in the same
    rounds (:func:`qlib.measure.latency.paired_latency` returns both). With the noise band
    ``e = max_r |log self_r|`` (the most the reference ever differed from itself), the
    verdict is "faster" if every round's speedup exceeds ``exp(e)``, "slower" if every
    round's is below ``exp(-e)``, otherwise :data:`SAME_SPEED`: the interval
    ``[min_r, max_r]`` must clear the noise band entirely. Returns ``{"speedup"`` (median
    over rounds), ``"low", "high"`` (min and max), ``"noise"`` (``exp(e) - 1``, a fraction),
    ``"rounds", "verdict"}``. Needs at least 3 rounds (fewer cannot show a spread).

    >>> speed_verdict([2.0, 2.1, 1.9], [1.02, 0.99, 1.01])["verdict"]
    'faster'
    >>> speed_verdict([1.05, 0.97, 1.01], [1.03, 0.98, 1.0])["verdict"]
    'same, within noise'
    """
    s, n = _floats(speedup, "speedup"), _floats(self_ratios, "self_ratios")
    if len(s) < 3 or len(n) < 3:
        raise ValueError(f"speed_verdict needs at least 3 rounds of speedup and self_ratios, "
                         f"got {len(s)} and {len(n)}")
    if not (np.isfinite(s).all() and np.isfinite(n).all() and (s > 0).all() and (n > 0).all()):
        raise ValueError("speed ratios must be positive finite numbers (ms / ms), got "
                         f"min speedup {s.min()}, min self ratio {n.min()}")
    e = float(np.abs(np.log(n)).max())
    lo, hi = float(s.min()), float(s.max())
    verdict = ("faster" if np.log(lo) > e else "slower" if np.log(hi) < -e else SAME_SPEED)
    return {"speedup": float(np.median(s)), "low": lo, "high": hi,
            "noise": float(np.expm1(e)), "rounds": int(len(s)), "verdict": verdict}
