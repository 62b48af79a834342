"""Knowledge distillation: soft targets, the Hinton loss, a hint loss and the teacher-student loop.

Introduced in notebook 06. A larger, more accurate *teacher* is trained first (in the
course: the baseline, 117k parameters); a small *student* (``student_model``, 7.7k) then
learns from the teacher's softened predictions as well as from the labels (Hinton, Vinyals
& Dean, 2015, "Distilling the knowledge in a neural network"). For logits z::

    soft_targets(z, T) = softmax(z / T)                       (N, classes)
    loss = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))  (mean over the batch)
         + (1 - alpha) * cross_entropy(z_s, y)

The T^2 factor keeps the soft term's gradients the same size as T changes (they shrink
as 1 / T^2 otherwise), so alpha means the same thing at every temperature.

The knowledge flows one way: teacher -> student. The teacher is frozen (eval mode, no
gradients) and sees the same augmented batch as the student. The report's distillation rows
(``teacher``, ``scratch-student``, ``kd-student``) are in :mod:`qlib.recipes.distill`.

A *transfer set* (:func:`transfer_set`) is what the student is distilled on: the training
images, some of them without a label (:data:`UNLABELED`, only the teacher labels them) or
with a whole class left out (Hinton et al.'s omitted digit). On such an image the loss keeps
only its soft term; the cross-entropy is summed over the labelled images and divided by the
batch size.

>>> s, t = torch.tensor([[2.0, 0.0]]), torch.tensor([[2.0, 0.0]])
>>> float(distillation_loss(s, t, torch.tensor([0]), temperature=4.0, alpha=1.0))
0.0
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from ._util import LossFn, check_finite_number, check_int, check_logits, check_tensor, set_seed
from .data import Splits
from .models import student_model
from .train import cached_training, fingerprint, fit

__all__ = ["soft_targets", "distillation_loss", "hint_loss", "kd_loss_fn", "HintStudent",
           "distill", "train_student", "STUDENT_RECIPE", "UNLABELED", "transfer_set",
           "labeled_part"]

#: The label of a transfer-set image that no person labelled: only the teacher's soft
#: targets train on it.
UNLABELED = -1


#: The students' shared budget: scratch and distilled students differ only in the loss.
STUDENT_RECIPE = dict(epochs=8, lr=1e-2, batch_size=64, weight_decay=1e-4, max_shift=2,
                      temperature=4.0, alpha=0.9, hint_weight=0.0)


def _check_floating(logits: Tensor, name: str) -> None:
    """O(1): real floating-point (N, classes) with N >= 1, before any pass over the values."""
    check_tensor(logits, name)
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be floating-point logits, got {logits.dtype}")
    if logits.ndim != 2 or 0 in logits.shape:
        raise ValueError(f"{name} must be (N, classes) logits with N >= 1 rows (an empty "
                         f"batch has no loss), got shape {tuple(logits.shape)}")


def _check_temperature(temperature: float) -> float:
    return check_finite_number(temperature, "temperature", 0, strict=True)


def _check_alpha(alpha: float) -> float:
    return check_finite_number(alpha, "alpha (the weight of the soft term)", 0, 1)


def soft_targets(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """The softened distribution p_T = softmax(z / T) along the class axis.

    Introduced in notebook 06. ``logits`` is (N, classes); the result has the same shape
    and rows that sum to 1. T = 1 is the ordinary softmax; a larger T flattens it and
    reveals how the model ranks the wrong classes (the "dark knowledge").

    >>> soft_targets(torch.tensor([[2.0, 0.0]]), 2.0)
    tensor([[0.7311, 0.2689]])
    """
    check_logits(logits, "logits")
    return torch.softmax(logits / _check_temperature(temperature), dim=1)


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, *,
                      temperature: float, alpha: float) -> Tensor:
    """Hinton's loss: alpha * T^2 * KL(p_T(teacher) || p_T(student)) + (1 - alpha) * CE.

    Introduced in notebook 06. Logits are (N, classes), ``targets`` (N,) class indices;
    returns a 0-d tensor. The KL term sums over classes and averages over the batch
    ("batchmean"): KL = mean_n sum_c p_t[n, c] * (log p_t[n, c] - log p_s[n, c]) with
    p = softmax(z / T). Gradients flow to the student only; the teacher is detached.

    >>> z = torch.tensor([[1.0, 0.0]])
    >>> round(float(distillation_loss(z, z, torch.tensor([0]), temperature=2.0, alpha=0.0)), 4)
    0.3133
    """
    _check_floating(student_logits, "student_logits")
    _check_floating(teacher_logits, "teacher_logits")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits must have the same shape (N, classes), "
                         f"got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    n, classes = student_logits.shape
    if not isinstance(targets, Tensor) or targets.shape != (n,):
        shape = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
        raise ValueError(f"targets must be a (N,) tensor of class indices with N = {n}, "
                         f"got {shape}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"targets must hold integer class indices (e.g. torch.long), got "
                        f"{targets.dtype}; use targets.long() if they are whole numbers")
    targets = targets.long()  # cross_entropy wants int64; no copy when it already is
    t = _check_temperature(temperature)
    alpha = _check_alpha(alpha)
    # one host sync for every value check (this runs once per training step): NaN / Inf
    # logits would give a NaN loss, a label outside 0..classes-1 an index error
    if not bool(torch.isfinite(student_logits).all() & torch.isfinite(teacher_logits).all()
                & (targets >= 0).all() & (targets < classes).all()):
        check_logits(student_logits, "student_logits")
        check_logits(teacher_logits, "teacher_logits")
        raise ValueError(f"targets must lie in 0..{classes - 1} (one per class of the logits), "
                         f"got min {int(targets.min())}, max {int(targets.max())}")
    log_p_s = F.log_softmax(student_logits / t, dim=1)            # (N, C)
    log_p_t = F.log_softmax(teacher_logits.detach() / t, dim=1)   # (N, C)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1).mean()      # batchmean
    ce = F.cross_entropy(student_logits, targets)
    return alpha * t * t * kl + (1.0 - alpha) * ce


def hint_loss(student_features: Tensor, teacher_features: Tensor, regressor: nn.Module
              ) -> Tensor:
    """FitNets hint: mean squared error between regressor(student features) and the teacher's.

    Introduced in notebook 06 (optional section). Features are (N, C, H, W) maps with the
    same H, W; ``regressor`` (a 1x1 conv, C_s -> C_t) maps the narrow student's channels
    onto the teacher's. loss = mean((r(f_s) - f_t)^2) over every element.

    >>> r = nn.Conv2d(2, 3, 1)
    >>> hint_loss(torch.zeros(1, 2, 4, 4), r(torch.zeros(1, 2, 4, 4)), r).item()
    0.0
    """
    mapped = regressor(student_features)
    if mapped.shape != teacher_features.shape:
        raise ValueError(f"regressor(student_features) has shape {tuple(mapped.shape)} but the "
                         f"teacher features have {tuple(teacher_features.shape)}; they must match")
    return F.mse_loss(mapped, teacher_features.detach())


@contextmanager
def _frozen(teacher: nn.Module) -> Iterator[nn.Module]:
    """Run ``teacher`` in eval mode (dropout off, BN statistics fixed) without gradients,
    then put its train / eval mode back as it was."""
    was_training = teacher.training
    teacher.eval()
    try:
        with torch.no_grad():
            yield teacher
    finally:
        teacher.train(was_training)


def _split(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """(features, logits) of a model built as ``features`` then ``classifier`` (SmallCNN)."""
    if not (hasattr(model, "features") and hasattr(model, "classifier")):
        raise TypeError(f"a hint loss needs a model with .features and .classifier (as "
                        f"qlib.models.SmallCNN), got {type(model).__name__}")
    f = model.features(x)
    return f, model.classifier(f)


class HintStudent(nn.Module):
    """A student plus the 1x1 conv regressor its hint loss trains (dropped after training).

    ``fit`` optimises every parameter of the module it is given; wrapping both makes the
    regressor learn with the student. ``forward`` is the student's.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, example: Tensor) -> None:
        super().__init__()
        with _frozen(teacher):
            c_s = _split(student, example)[0].shape[1]
            c_t = _split(teacher, example)[0].shape[1]
        self.student, self.regressor = student, nn.Conv2d(c_s, c_t, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.student(x)


def _partly_labeled_loss(z_s: Tensor, z_t: Tensor, y: Tensor, temperature: float,
                         alpha: float) -> Tensor:
    """:func:`distillation_loss`, where images labelled :data:`UNLABELED` add the soft term
    only: alpha * T^2 * KL (mean over all N) + (1 - alpha) * sum_labelled CE / N."""
    labeled = y != UNLABELED
    if bool(labeled.all()):
        return distillation_loss(z_s, z_t, y, temperature=temperature, alpha=alpha)
    soft = distillation_loss(z_s, z_t, torch.where(labeled, y, 0), temperature=temperature,
                             alpha=1.0)
    if not bool(labeled.any()):
        return alpha * soft
    hard = F.cross_entropy(z_s[labeled], y[labeled], reduction="sum") / len(y)
    return alpha * soft + (1.0 - alpha) * hard


def kd_loss_fn(teacher: nn.Module, *, temperature: float, alpha: float,
               hint_weight: float = 0.0) -> LossFn:
    """A ``loss_fn(model, x, y)`` for :func:`qlib.train.fit` that distils ``teacher``.

    Introduced in notebook 06. On each (already augmented) batch x (N, C, H, W) the frozen
    teacher runs in eval mode under ``no_grad``; the loss is :func:`distillation_loss`, plus
    ``hint_weight * hint_loss`` when ``model`` is a :class:`HintStudent`. Images labelled
    :data:`UNLABELED` (a transfer set) contribute the soft term only.
    """
    _check_temperature(temperature)
    _check_alpha(alpha)
    hint_weight = check_finite_number(hint_weight, "hint_weight", 0)

    def loss_fn(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        use_hint = hint_weight > 0 and isinstance(model, HintStudent)
        with _frozen(teacher):
            f_t, z_t = _split(teacher, x) if use_hint else (None, teacher(x))
        if not use_hint:
            return _partly_labeled_loss(model(x), z_t, y, temperature, alpha)
        f_s, z_s = _split(model.student, x)
        return (_partly_labeled_loss(z_s, z_t, y, temperature, alpha)
                + hint_weight * hint_loss(f_s, f_t, model.regressor))
    return loss_fn


def distill(student: nn.Module, teacher: nn.Module, train_loader: DataLoader, *,
            temperature: float = 4.0, alpha: float = 0.9, hint_weight: float = 0.0,
            epochs: int = 8, lr: float = 1e-2, weight_decay: float = 1e-4, max_shift: int = 2,
            val_loader: DataLoader | None = None, seed: int = 0, progress: bool = True
            ) -> dict[str, list[float]]:
    """Train ``student`` in place from ``teacher`` (frozen, left as it was); returns fit's history.

    Introduced in notebook 06. Same optimiser, schedule and augmentation as
    :func:`qlib.train.fit`; only the loss differs, so a scratch student trained with
    ``fit`` on the same settings is a fair comparison. ``hint_weight > 0`` adds the
    FitNets hint on the two models' ``features`` outputs.
    """
    model: nn.Module = student
    if hint_weight > 0:
        model = HintStudent(student, teacher, next(iter(train_loader))[0][:2])
    hist = fit(model, train_loader, epochs=epochs, lr=lr, weight_decay=weight_decay,
               loss_fn=kd_loss_fn(teacher, temperature=temperature, alpha=alpha,
                                  hint_weight=hint_weight),
               max_shift=max_shift, val_loader=val_loader, seed=seed, progress=progress,
               desc="distil")
    student.eval()
    return hist


def transfer_set(train: TensorDataset, *, labels_per_class: int | None = None,
                 omit_class: int | None = None, seed: int = 0) -> TensorDataset:
    """The images a student learns from: ``train`` with fewer labels or one class left out.

    Introduced in notebook 06. ``train`` holds images (N, C, H, W) and labels (N,).
    ``omit_class=c`` drops every image of class c (Hinton et al. 2015 left out the digit 3:
    the student never sees one). ``labels_per_class=k`` keeps every image but only k labels
    per class, drawn at random with ``seed``; the others become :data:`UNLABELED` and only the
    teacher labels them. Both may be combined; with neither, ``train`` itself is returned.

    >>> ds = TensorDataset(torch.zeros(6, 1, 2, 2), torch.tensor([0, 0, 0, 1, 1, 1]))
    >>> transfer_set(ds, labels_per_class=1).tensors[1].tolist()
    [-1, -1, 0, -1, -1, 1]
    >>> transfer_set(ds, omit_class=1).tensors[1].tolist()
    [0, 0, 0]
    """
    x, y = train.tensors
    classes = sorted(set(y.tolist()))
    if omit_class is not None:
        if isinstance(omit_class, bool) or not isinstance(omit_class, int) or \
                omit_class not in classes:
            raise ValueError(f"omit_class must be one of the classes present, {classes}, got "
                             f"{omit_class!r}")
        keep = y != omit_class
        x, y = x[keep], y[keep]
    if labels_per_class is None:
        return TensorDataset(x, y) if omit_class is not None else train
    check_int(labels_per_class, "labels_per_class", 1)
    counts = torch.bincount(y[y >= 0])
    fewest = int(counts[counts > 0].min())
    if labels_per_class > fewest:
        raise ValueError(f"labels_per_class={labels_per_class} is more than the {fewest} "
                         f"images of the rarest class; allowed: 1..{fewest}")
    gen = torch.Generator().manual_seed(seed)
    labeled = torch.zeros(len(y), dtype=torch.bool)
    for c in y.unique().tolist():
        idx = (y == c).nonzero()[:, 0]
        labeled[idx[torch.randperm(len(idx), generator=gen)[:labels_per_class]]] = True
    return TensorDataset(x, torch.where(labeled, y, torch.full_like(y, UNLABELED)))


def labeled_part(transfer: TensorDataset) -> TensorDataset:
    """The images of a transfer set that carry a label (what a student without a teacher
    can learn from). Introduced in notebook 06."""
    x, y = transfer.tensors
    keep = y != UNLABELED
    if not bool(keep.any()):
        raise ValueError("the transfer set has no labelled image: a scratch student needs some")
    return TensorDataset(x[keep], y[keep])


def train_student(mode: str, data: Splits, teacher: nn.Module | None = None, *, seed: int = 0,
                  cache: bool = True, progress: bool = True, labels_per_class: int | None = None,
                  omit_class: int | None = None, **overrides) -> nn.Module:
    """A ``student_model`` trained from scratch (``mode="scratch"``) or distilled (``"kd"``).

    Introduced in notebook 06. Both use :data:`STUDENT_RECIPE` (``overrides`` change any of
    its entries), the same seed, initial weights, optimiser and augmentation: only the loss
    differs, so the two are a fair comparison. ``teacher`` (needed for ``"kd"``) is the
    trained course baseline in the course. With ``cache=True`` the result is stored under
    ``data/models/student-{mode}-...pt`` (keyed on the settings, the seed, the dataset and
    the teacher's weights) and loaded on the next call.

    ``labels_per_class`` / ``omit_class`` train on :func:`transfer_set` (seeded with
    ``seed``) instead of the whole training split: the distilled student sees every image of
    the transfer set, labelled or not; the scratch student only the labelled ones, for as
    many more epochs as it takes to make the same number of optimiser steps.

    >>> teacher, data = qlib.get_baseline()                       # doctest: +SKIP
    >>> student = train_student("kd", data, teacher, seed=1)       # doctest: +SKIP
    """
    if mode not in ("scratch", "kd"):
        raise ValueError(f"mode must be 'scratch' or 'kd', got {mode!r}")
    if mode == "kd" and teacher is None:
        raise ValueError("mode 'kd' needs a trained teacher (e.g. qlib.get_baseline()[0])")
    unknown = set(overrides) - set(STUDENT_RECIPE)
    if unknown:
        raise ValueError(f"unknown student settings {sorted(unknown)}; allowed: "
                         f"{sorted(STUDENT_RECIPE)}")
    s = {**STUDENT_RECIPE, **overrides}
    if mode == "scratch":  # the soft-target settings do not apply
        s.update(temperature=None, alpha=None, hint_weight=None)
    c, h, _ = data.input_shape
    transfer = transfer_set(data.train, labels_per_class=labels_per_class,
                            omit_class=omit_class, seed=seed)
    seen = transfer if mode == "kd" else labeled_part(transfer)
    bs = s["batch_size"]
    steps = s["epochs"] * -(-len(transfer) // bs)          # optimiser steps of the kd student
    epochs = max(1, round(steps / -(-len(seen) // bs)))    # the same number for scratch
    recipe = dict(mode=mode, dataset=data.name, seed=seed, size=len(data.train), **s,
                  teacher=fingerprint(teacher) if mode == "kd" else None)
    if labels_per_class is not None or omit_class is not None:
        recipe.update(labels_per_class=labels_per_class, omit_class=omit_class,
                      run_epochs=epochs)

    def build() -> nn.Module:
        set_seed(seed)
        return student_model(data.num_classes, c, h)

    def train(student: nn.Module) -> None:
        loader = DataLoader(seen, batch_size=bs, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))
        common = dict(epochs=epochs, lr=s["lr"], weight_decay=s["weight_decay"],
                      max_shift=s["max_shift"], seed=seed, progress=progress)
        if mode == "scratch":
            fit(student, loader, desc="scratch", **common)
        else:
            distill(student, teacher, loader, temperature=s["temperature"], alpha=s["alpha"],
                    hint_weight=s["hint_weight"], **common)

    if not cache:
        student = build()
        train(student)
        return student.eval()
    tag = "" if transfer is data.train else (
        (f"-omit{omit_class}" if omit_class is not None else "")
        + (f"-{labels_per_class}pc" if labels_per_class is not None else ""))
    return cached_training(f"student-{mode}-{data.name}{tag}", recipe, build, train)
