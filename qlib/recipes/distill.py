"""The distillation recipes (notebook 06): the teacher is the course baseline."""

from __future__ import annotations

import copy

from torch import nn

from ..data import Splits
from ..distill import STUDENT_RECIPE, train_student
from .registry import Variant

__all__ = ["teacher_recipe", "scratch_student_recipe", "kd_student_recipe"]


def teacher_recipe(baseline: nn.Module, data: Splits) -> Variant:
    """The teacher's own row (the course baseline), for reading students against."""
    return Variant.from_module("teacher", "distillation", copy.deepcopy(baseline),
                               role="teacher")


def scratch_student_recipe(baseline: nn.Module, data: Splits) -> Variant:
    """The small student trained alone on the labels (the control for kd-student)."""
    student = train_student("scratch", data, seed=0, progress=False)
    return Variant.from_module("scratch-student", "distillation", student, role="scratch")


def kd_student_recipe(baseline: nn.Module, data: Splits) -> Variant:
    """The small student distilled from the baseline (T and alpha from STUDENT_RECIPE)."""
    student = train_student("kd", data, baseline, seed=0, progress=False)
    return Variant.from_module("kd-student", "distillation", student, role="kd",
                               temperature=STUDENT_RECIPE["temperature"],
                               alpha=STUDENT_RECIPE["alpha"])
