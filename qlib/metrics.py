"""Metrics under the course's public names, and the statistics that compare two models.

``from qlib.metrics import classification_report`` is part of the course's public contract
(notebook 00); the definitions of the classification metrics live in
:mod:`qlib.measure.metrics`. Introduced in notebook 07 (section 2), this module adds what a
*small* difference between two models scored on the same N images needs: an interval for
the paired difference, a non-inferiority decision, the power limit of McNemar's exact test,
and Holm's correction when many p-values are read together.

Counts on the same images (A and B are two models, "right" is per image)::

                 B right   B wrong
      A right       a         b
      A wrong       c         d          n = a + b + c + d

- difference of accuracies ``D = acc_A - acc_B = (b - c) / n``;
- :func:`paired_diff_ci`: Newcombe's (1998) hybrid score interval for D (his method 10).
  With Wilson score limits ``[l1, u1]`` for ``acc_A = (a+b)/n`` and ``[l2, u2]`` for
  ``acc_B = (a+c)/n``, and the correlation of the two correctness columns
  ``phi = (a d - b c) / sqrt((a+b)(c+d)(a+c)(b+d))`` (0 when a margin is empty)::

      low  = D - sqrt((acc_A - l1)^2 - 2 phi (acc_A - l1)(u2 - acc_B) + (u2 - acc_B)^2)
      high = D + sqrt((u1 - acc_A)^2 - 2 phi (u1 - acc_A)(acc_B - l2) + (acc_B - l2)^2)

  Wilson's limits for x successes in n: ``(x + z^2/2 +- z sqrt(x (n-x) / n + z^2/4)) /
  (n + z^2)``, ``z`` the standard normal ``(1 + confidence) / 2`` quantile. Unlike the Wald
  interval ``D +- z sqrt(b + c - (b - c)^2 / n) / n`` it does not collapse to a point when
  b = c = 0, and it keeps close to its nominal coverage with few discordant images;
- :func:`non_inferiority`: B (the new model) is non-inferior to A (the reference) with
  margin m when the interval's lower bound of ``acc_B - acc_A`` is above ``-m``. With a
  two-sided 95% interval this is a one-sided test at level 2.5%;
- :func:`mcnemar_min_p`: with n discordant images the exact McNemar p-value is at least
  ``min(1, 2 * 0.5^n)`` (reached when all n go one way), so below n = 6 no outcome is
  significant at 5%;
- :func:`holm`: Holm's step-down adjusted p-values for m tests, ``p_adj(i) = max over j <= i
  of min(1, (m - j + 1) p_(j))`` on the sorted p-values; reject where ``p_adj <= alpha``.
  This holds the chance of *any* false "significant" among the m at most alpha.

>>> r = paired_diff_ci([1, 1, 1, 1, 0], [1, 1, 1, 0, 0])      # a=3, b=1, c=0, d=1
>>> round(r["diff"], 2), r["low"] < 0 < r["high"]
(0.2, True)
>>> mcnemar_min_p(3)
0.25
>>> holm([0.01, 0.04, 0.03])
[0.03, 0.06, 0.06]
"""

from __future__ import annotations

from collections.abc import Sequence
from math import sqrt
from statistics import NormalDist

from ._util import check_finite_number, check_int
from .measure.metrics import agreement, classification_report, confusion_matrix, top_k_accuracy
from .measure.stats import BoolLike, as_correct

__all__ = ["classification_report", "confusion_matrix", "top_k_accuracy", "agreement",
           "paired_diff_ci", "non_inferiority", "mcnemar_min_p", "holm"]

def _wilson(x: int, n: int, z: float) -> tuple[float, float]:
    """Wilson score interval (low, high) for x successes out of n (n >= 1)."""
    centre, half = x + z * z / 2, z * sqrt(x * (n - x) / n + z * z / 4)
    return max(0.0, (centre - half) / (n + z * z)), min(1.0, (centre + half) / (n + z * z))


def paired_diff_ci(correct_a: BoolLike, correct_b: BoolLike, *,
                   confidence: float = 0.95) -> dict:
    """Accuracy difference A - B on the same images, with Newcombe's paired score interval.

    ``correct_a``, ``correct_b``: (N,) per-image correctness of the two models on the same
    N images. Returns ``{"diff", "low", "high", "a", "b", "c", "d", "n"}`` (the counts of
    the module docstring; ``diff = (b - c) / n``). Deterministic: no resampling.

    >>> r = paired_diff_ci([1] * 97 + [0] * 3, [1] * 100)        # B right everywhere A is
    >>> r["b"], r["c"], r["diff"], r["low"] < -0.03 < 0.0 < r["high"]
    (0, 3, -0.03, True)
    """
    x, y = as_correct(correct_a, "correct_a"), as_correct(correct_b, "correct_b")
    if x.shape != y.shape:
        raise ValueError(f"both models must be scored on the same images, got {len(x)} and "
                         f"{len(y)} per-image results")
    conf = check_finite_number(confidence, "confidence", 0, 1, strict=True)
    z = NormalDist().inv_cdf((1 + conf) / 2)
    a, b = int((x & y).sum()), int((x & ~y).sum())
    c, d = int((~x & y).sum()), int((~x & ~y).sum())
    n = a + b + c + d
    pa, pb = (a + b) / n, (a + c) / n
    l1, u1 = _wilson(a + b, n, z)
    l2, u2 = _wilson(a + c, n, z)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / sqrt(margins) if margins else 0.0
    diff = (b - c) / n
    low = diff - sqrt(max(0.0, (pa - l1) ** 2 - 2 * phi * (pa - l1) * (u2 - pb) + (u2 - pb) ** 2))
    high = diff + sqrt(max(0.0, (u1 - pa) ** 2 - 2 * phi * (u1 - pa) * (pb - l2) + (pb - l2) ** 2))
    return dict(diff=float(diff), low=float(max(-1.0, low)), high=float(min(1.0, high)),
                a=a, b=b, c=c, d=d, n=n)


def non_inferiority(correct_new: BoolLike, correct_ref: BoolLike, margin: float, *,
                    confidence: float = 0.95) -> dict:
    """Is the new model at most ``margin`` (a fraction: 0.01 = one point) worse than the reference?

    Computes :func:`paired_diff_ci` of ``acc_new - acc_ref`` and decides
    ``non_inferior = low > -margin``: the whole interval lies above "worse by the margin".
    A two-sided ``confidence`` interval gives a one-sided test at level
    ``(1 - confidence) / 2``. Returns the interval's dict plus ``margin`` and
    ``non_inferior``. Failing the test does not show the new model is worse: the interval
    may simply be too wide (too few images).

    >>> non_inferiority([1] * 997 + [0] * 3, [1] * 1000, margin=0.01)["non_inferior"]
    True
    """
    m = check_finite_number(margin, "margin (a fraction of accuracy: 0.01 is one point)", 0, 1,
                            strict=True)
    r = paired_diff_ci(correct_new, correct_ref, confidence=confidence)
    return dict(r, margin=m, non_inferior=bool(r["low"] > -m))


def mcnemar_min_p(n_discordant: int) -> float:
    """The smallest two-sided exact McNemar p-value possible with n discordant images.

    ``min(1, 2 * 0.5^n)`` for n >= 1 (all n discordant images favour one model) and 1 for
    n = 0. If it is above the test's level, no outcome can be significant: the test has no
    power at all, whatever the true difference.

    >>> [mcnemar_min_p(n) for n in (0, 1, 3, 6)]
    [1.0, 1.0, 0.25, 0.03125]
    """
    n = check_int(n_discordant, "n_discordant (images where the two models disagree)", 0)
    return 1.0 if n == 0 else min(1.0, 2 * 0.5 ** n)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given.

    For m p-values sorted ascending ``p_(1) <= ... <= p_(m)``:
    ``p_adj(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``. Rejecting every test with
    ``p_adj <= alpha`` keeps the family-wise error rate (the chance of one or more false
    rejections among the m) at most alpha, without assuming independence. It is uniformly
    more powerful than Bonferroni's ``min(1, m p)``.

    >>> holm([0.2, 0.001])
    [0.2, 0.002]
    """
    p = [check_finite_number(v, f"p_values[{i}]", 0, 1) for i, v in enumerate(p_values)]
    m, out, running = len(p), [0.0] * len(p), 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda k: p[k])):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out
