"""The distillation recipes (notebook 06): the teacher is the course baseline.

The students learn in the regime where distillation is known to help (Hinton et al., 2015):
a transfer set with few labels, :data:`TRANSFER` (10 labelled images per class; the rest of
the training split is labelled only by the teacher). ``scratch-student`` trains on the
labelled images alone, ``kd-student`` on the whole transfer set with the teacher's soft
targets, for the same number of optimiser steps. Each row is the mean over
:data:`STUDENT_SEEDS` (each seed draws its own labelled images and initial weights); the
variant's model is seed 0's and ``extra`` holds every seed's numbers, the mean, the spread
(sample standard deviation), and for ``kd-student`` the fraction of the teacher - scratch gap
it closes and a paired McNemar test against the scratch student of the same seed.
"""

from __future__ import annotations

import copy
import statistics

import numpy as np

from torch import nn

from ..data import Splits
from ..distill import STUDENT_RECIPE, train_student
from ..measure.stats import mcnemar
from ..train import evaluate
from .registry import Variant

__all__ = ["teacher_recipe", "scratch_student_recipe", "kd_student_recipe", "STUDENT_SEEDS",
           "BUDGET", "TRANSFER", "student_seeds"]

#: The seeds every student recipe trains (mean and spread are over these).
STUDENT_SEEDS = (0, 1, 2)

#: Overrides of STUDENT_RECIPE for the transfer-set students: 4 epochs of the whole training
#: split (half of section 4's budget, to keep CI cheap; 8 gave the same picture). Notebook 06
#: uses it for every transfer set it tries, so that they share one training budget.
BUDGET = dict(epochs=4)

#: The students' transfer set: 10 labels per class, the other training images unlabelled.
TRANSFER = dict(labels_per_class=10, **BUDGET)


def teacher_recipe(baseline: nn.Module, data: Splits) -> Variant:
    """The teacher's own row (the course baseline), for reading students against."""
    return Variant.from_module("teacher", "distillation", copy.deepcopy(baseline),
                               role="teacher")


def student_seeds(mode: str, baseline: nn.Module, data: Splits, setting: dict | None = None
                  ) -> tuple[list[nn.Module], list[dict]]:
    """The students of ``mode`` ("scratch" or "kd") for each of :data:`STUDENT_SEEDS`, trained
    by :func:`~qlib.distill.train_student` with ``setting`` (its keyword arguments; default
    :data:`TRANSFER`), and each one's test accuracy, macro precision / recall / F1 and
    per-image correctness (``correct``, a list of 0/1). Used by notebook 06 for every
    setting it compares."""
    models, rows = [], []
    for seed in STUDENT_SEEDS:
        m = train_student(mode, data, baseline if mode == "kd" else None, seed=seed,
                          progress=False, **(TRANSFER if setting is None else setting))
        ev = evaluate(m, data.loader("test", 256), data.num_classes)
        models.append(m)
        rows.append(dict(seed=seed, **{k: ev[k] for k in ("accuracy", "precision", "recall",
                                                           "f1")},
                         correct=(ev["preds"] == ev["labels"]).int().tolist()))
    return models, rows


def _summary(rows: list[dict], num_classes: int) -> dict:
    acc = [r["accuracy"] for r in rows]
    # 95% bootstrap interval of the mean over seeds: resample test images, average each
    # image's correctness over the seeds
    per_image = np.mean([r["correct"] for r in rows], axis=0)              # (N,)
    rng = np.random.default_rng(0)
    boot = per_image[rng.integers(0, len(per_image), (2000, len(per_image)))].mean(1)
    return dict(accuracy_ci=[float(q) for q in np.quantile(boot, [0.025, 0.975])],seeds=[{k: v for k, v in r.items() if k != "correct"} for r in rows],
                accuracy_mean=statistics.fmean(acc), accuracy_std=statistics.stdev(acc),
                n_seeds=len(rows), setting=dict(TRANSFER),
                labeled_images=TRANSFER["labels_per_class"] * num_classes)


def scratch_student_recipe(baseline: nn.Module, data: Splits) -> Variant:
    """The small student trained alone on the 10 labels per class (the control for kd-student);
    mean of :data:`STUDENT_SEEDS`."""
    models, rows = student_seeds("scratch", baseline, data)
    return Variant.from_module("scratch-student", "distillation", models[0], role="scratch",
                               **_summary(rows, data.num_classes))


def kd_student_recipe(baseline: nn.Module, data: Splits) -> Variant:
    """The same student distilled from the baseline on the whole transfer set (T and alpha
    from STUDENT_RECIPE); mean of :data:`STUDENT_SEEDS`, with the gap it closes."""
    models, rows = student_seeds("kd", baseline, data)
    _, scratch = student_seeds("scratch", baseline, data)
    teacher_acc = evaluate(baseline, data.loader("test", 256), data.num_classes)["accuracy"]
    out = _summary(rows, data.num_classes)
    scratch_mean = statistics.fmean(r["accuracy"] for r in scratch)
    paired = []
    for k, s in zip(rows, scratch):
        m = mcnemar(k["correct"], s["correct"])
        paired.append(dict(seed=k["seed"], kd_minus_scratch=k["accuracy"] - s["accuracy"],
                           mcnemar_b=m["b"], mcnemar_c=m["c"], mcnemar_p=m["p_value"]))
    room = teacher_acc - scratch_mean
    out.update(teacher_accuracy=teacher_acc, scratch_accuracy_mean=scratch_mean,
               gap_closed=(out["accuracy_mean"] - scratch_mean) / room if room > 0 else None,
               paired_vs_scratch=paired, temperature=STUDENT_RECIPE["temperature"],
               alpha=STUDENT_RECIPE["alpha"])
    return Variant.from_module("kd-student", "distillation", models[0], role="kd", **out)
