"""Notebook 07's random-answer checker (exercise 2, the bootstrap) judged on several answers.

Rule (c) of issue 15 item 4: where more than one implementation is right, the checker judges
properties and tolerances. This runs the checker cell of notebook 07 itself (cell
``ex2-check``, HIDDEN TESTS removed), so the reference, the inputs and the tolerances are the
notebook's, on two correct bootstraps that draw their resamples differently from the
notebook's solution, and on wrong ones that must fail. The fixed inputs ``correct_base`` and
``correct_minus3`` (the baseline's per-image correctness in the notebook) are replaced by
vectors with the same size and the same accuracy (984 and 981 right of 1,000).
"""

from __future__ import annotations

import math
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from qlib.course import check, workbook
from qlib.measure import stats

NB = Path(__file__).resolve().parent.parent / "notebooks" / "07_evaluation.ipynb"


def _checker_source() -> str:
    nb = nbformat.read(NB, as_version=4)
    cell = next(c for c in nb.cells if c.get("id") == "ex2-check")
    return workbook.strip_code(cell.source, "07 ex2-check")[0]   # the learner's view: no hidden tests


def _run(answer) -> check.CheckResult:
    rng = np.random.default_rng(7)
    base = np.zeros(1000, dtype=bool)
    base[rng.choice(1000, 984, replace=False)] = True
    minus3 = base.copy()
    minus3[np.flatnonzero(base)[:3]] = False
    ns = dict(np=np, torch=torch, math=math, check=check, stats=stats, bootstrap_accuracy=answer,
              correct_base=base, correct_minus3=minus3)
    exec(_checker_source(), ns)
    return ns["result"]


def with_torch(correct, n_boot=2000, confidence=0.95, seed=0):
    """Correct: torch.randint resamples, torch.quantile."""
    c = torch.as_tensor(np.asarray(correct), dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    accs = c[torch.randint(0, len(c), (n_boot, len(c)), generator=g)].mean(1)
    q = torch.quantile(accs, torch.tensor([(1 - confidence) / 2, (1 + confidence) / 2],
                                          dtype=torch.float64))
    return float(c.mean()), float(q[0]), float(q[1])


def with_a_loop(correct, n_boot=2000, confidence=0.95, seed=0):
    """Correct: one rng.choice per resample, order statistics instead of interpolation."""
    c = np.asarray(correct, dtype=bool)
    rng = np.random.default_rng(seed + 1000)
    accs = sorted(rng.choice(c, size=len(c), replace=True).mean() for _ in range(n_boot))
    lo = accs[int((1 - confidence) / 2 * n_boot)]
    hi = accs[int(math.ceil((1 + confidence) / 2 * n_boot)) - 1]
    return float(c.mean()), float(lo), float(hi)


def without_replacement(correct, n_boot=2000, confidence=0.95, seed=0):
    """Wrong: a permutation of the images always has the same accuracy (zero width)."""
    c = np.asarray(correct, dtype=bool)
    rng = np.random.default_rng(seed)
    accs = np.array([c[rng.permutation(len(c))].mean() for _ in range(n_boot)])
    lo, hi = np.quantile(accs, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(c.mean()), float(lo), float(hi)


def wrong_quantiles(correct, n_boot=2000, confidence=0.95, seed=0):
    """Wrong: the 1 - confidence and confidence quantiles (a narrower interval)."""
    c = np.asarray(correct, dtype=bool)
    rng = np.random.default_rng(seed)
    accs = c[rng.integers(0, len(c), (n_boot, len(c)))].mean(1)
    lo, hi = np.quantile(accs, [1 - confidence, confidence])
    return float(c.mean()), float(lo), float(hi)


def resampling_the_wrong_axis(correct, n_boot=2000, confidence=0.95, seed=0):
    """Wrong: resamples of 100 images instead of n (an interval far too wide)."""
    c = np.asarray(correct, dtype=bool)
    rng = np.random.default_rng(seed)
    accs = c[rng.integers(0, len(c), (n_boot, 100))].mean(1)
    lo, hi = np.quantile(accs, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(c.mean()), float(lo), float(hi)


@pytest.mark.parametrize("answer", [with_torch, with_a_loop,
                                    lambda *a: stats.bootstrap_ci(a[0], n_boot=a[1],
                                                                  confidence=a[2], seed=a[3])])
def test_correct_bootstraps_pass(answer):
    result = _run(answer)
    assert result.passed, result


@pytest.mark.parametrize("answer", [without_replacement, wrong_quantiles,
                                    resampling_the_wrong_axis])
def test_wrong_bootstraps_fail(answer):
    result = _run(answer)
    assert not result.passed and result.status != "not attempted", result


def test_a_wrong_accuracy_fails_even_with_a_right_interval():
    def off_by_one_image(correct, n_boot=2000, confidence=0.95, seed=0):
        acc, lo, hi = stats.bootstrap_ci(correct, n_boot=n_boot, confidence=confidence, seed=seed)
        return acc + 1 / len(correct), lo, hi
    assert not _run(off_by_one_image).passed


def test_an_unsolved_stub_reads_not_attempted():
    def stub(correct, n_boot=2000, confidence=0.95, seed=0):
        raise NotImplementedError("Exercise: write the body of bootstrap_accuracy")
    assert _run(stub).status == "not attempted"
