"""Tests for qlib.distill: the Hinton loss against the formula and PyTorch's KL, the loop."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import qlib.train
from qlib import set_seed
from qlib.data import Splits
import qlib.distill
from qlib.distill import (UNLABELED, HintStudent, distill, distillation_loss, hint_loss,
                          kd_loss_fn, labeled_part, soft_targets, train_student, transfer_set)
from qlib.models import SmallCNN


def _logits(seed: int, n: int = 16, c: int = 10, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g) * scale


def _reference(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, temperature: float,
               alpha: float) -> torch.Tensor:
    """The contract written with explicit softmax / log ops, in float64."""
    s, t = s.double(), t.double()
    p_t = torch.exp(t / temperature) / torch.exp(t / temperature).sum(1, keepdim=True)
    p_s = torch.exp(s / temperature) / torch.exp(s / temperature).sum(1, keepdim=True)
    kl = (p_t * (torch.log(p_t) - torch.log(p_s))).sum() / s.shape[0]
    p1 = torch.exp(s) / torch.exp(s).sum(1, keepdim=True)
    ce = -torch.log(p1[torch.arange(len(y)), y]).mean()
    return alpha * temperature ** 2 * kl + (1 - alpha) * ce


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0, 20.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.9, 1.0])
def test_loss_matches_formula(temperature: float, alpha: float) -> None:
    s, t = _logits(0), _logits(1)
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(2))
    got = distillation_loss(s, t, y, temperature=temperature, alpha=alpha)
    want = _reference(s, t, y, temperature, alpha)
    assert got.ndim == 0
    assert got.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6)


def test_loss_matches_torch_kl_div_and_cross_entropy() -> None:
    s, t = _logits(3), _logits(4)
    y = torch.arange(16) % 10
    temperature, alpha = 3.0, 0.7
    kl = F.kl_div(F.log_softmax(s / temperature, 1), F.softmax(t / temperature, 1),
                  reduction="batchmean")
    want = alpha * temperature ** 2 * kl + (1 - alpha) * F.cross_entropy(s, y)
    got = distillation_loss(s, t, y, temperature=temperature, alpha=alpha)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_zero_when_logits_agree_and_alpha_one() -> None:
    z = _logits(5)
    y = torch.zeros(16, dtype=torch.long)  # labels irrelevant when alpha = 1
    for temperature in (1.0, 4.0, 10.0):
        loss = distillation_loss(z.clone(), z, y, temperature=temperature, alpha=1.0)
        assert abs(loss.item()) < 1e-6
    # logits that differ by a constant per row give the same softmax: still zero
    loss = distillation_loss(z + 7.0, z, y, temperature=2.0, alpha=1.0)
    assert abs(loss.item()) < 1e-5
    # and positive once they disagree
    assert distillation_loss(_logits(6), z, y, temperature=2.0, alpha=1.0).item() > 0.01


def test_alpha_zero_is_cross_entropy_and_teacher_gets_no_gradient() -> None:
    s = _logits(7).requires_grad_()
    t = _logits(8).requires_grad_()
    y = torch.arange(16) % 10
    loss = distillation_loss(s, t, y, temperature=4.0, alpha=0.0)
    torch.testing.assert_close(loss, F.cross_entropy(s, y))
    distillation_loss(s, t, y, temperature=4.0, alpha=0.5).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_gradient_matches_closed_form() -> None:
    """d(T^2 KL)/dz_s = T (p_s - p_t) / N: the T^2 factor makes it O(1/T) * T^2 / T^2."""
    s = _logits(9, n=4).requires_grad_()
    t = _logits(10, n=4)
    temperature = 5.0
    distillation_loss(s, t, torch.zeros(4, dtype=torch.long), temperature=temperature,
                      alpha=1.0).backward()
    want = temperature * (soft_targets(s.detach(), temperature) - soft_targets(t, temperature))
    torch.testing.assert_close(s.grad, want / 4)


def test_soft_targets() -> None:
    z = _logits(11)
    torch.testing.assert_close(soft_targets(z, 1.0), torch.softmax(z, 1))
    p_hot, p_soft = soft_targets(z, 1.0), soft_targets(z, 10.0)
    torch.testing.assert_close(p_soft.sum(1), torch.ones(16))
    # a higher temperature flattens: the top probability drops, the entropy rises
    assert (p_soft.max(1).values < p_hot.max(1).values).all()
    entropy = lambda p: -(p * p.log()).sum(1)  # noqa: E731
    assert (entropy(p_soft) > entropy(p_hot)).all()
    # the ranking of the classes is kept
    assert torch.equal(p_soft.argsort(1), p_hot.argsort(1))


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=0.0, alpha=0.5), "temperature"),
    (dict(temperature=-1.0, alpha=0.5), "temperature"),
    (dict(temperature=math.nan, alpha=0.5), "temperature"),
    (dict(temperature=2.0, alpha=-0.1), "alpha"),
    (dict(temperature=2.0, alpha=1.5), "alpha"),
])
def test_bad_settings_raise(kwargs: dict, match: str) -> None:
    z = _logits(12)
    with pytest.raises(ValueError, match=match):
        distillation_loss(z, z, torch.zeros(16, dtype=torch.long), **kwargs)


def test_bad_shapes_raise() -> None:
    z = _logits(13)
    y = torch.zeros(16, dtype=torch.long)
    with pytest.raises(ValueError, match="same shape"):
        distillation_loss(z, z[:, :5], y, temperature=2.0, alpha=0.5)
    with pytest.raises(ValueError, match="same shape"):
        distillation_loss(z, z[:8], y, temperature=2.0, alpha=0.5)
    with pytest.raises(ValueError, match="targets"):
        distillation_loss(z, z, y[:8], temperature=2.0, alpha=0.5)
    with pytest.raises(ValueError, match=r"\(N, classes\)"):
        distillation_loss(z[0], z[0], y, temperature=2.0, alpha=0.5)
    with pytest.raises(TypeError, match="torch.Tensor"):
        distillation_loss(z.tolist(), z, y, temperature=2.0, alpha=0.5)
    with pytest.raises(ValueError, match="temperature"):
        soft_targets(z, 0.0)


def test_hint_loss_is_mse_after_regressor() -> None:
    set_seed(0)
    r = nn.Conv2d(4, 6, 1)
    f_s, f_t = torch.randn(2, 4, 5, 5), torch.randn(2, 6, 5, 5)
    torch.testing.assert_close(hint_loss(f_s, f_t, r), ((r(f_s) - f_t) ** 2).mean())
    with pytest.raises(ValueError, match="must match"):
        hint_loss(f_s, torch.randn(2, 5, 5, 5), r)


def _toy(n: int = 96) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=False)


def test_distill_trains_student_and_leaves_teacher_untouched() -> None:
    set_seed(0)
    teacher = SmallCNN((8, 8), 16, dropout=0.3).train()
    before = copy.deepcopy(teacher.state_dict())
    student = SmallCNN((2, 4), 8)
    loader = _toy()
    start = kd_loss_fn(teacher, temperature=4.0, alpha=1.0)(student, *next(iter(loader)))
    hist = distill(student, teacher, loader, temperature=4.0, alpha=1.0, epochs=6,
                   max_shift=0, progress=False)
    end = kd_loss_fn(teacher, temperature=4.0, alpha=1.0)(student, *next(iter(loader)))
    assert end.item() < start.item()
    assert len(hist["loss"]) == 6
    assert teacher.training  # mode restored
    for k, v in teacher.state_dict().items():  # weights and BN statistics unchanged
        assert torch.equal(v, before[k]), k


def test_distill_is_deterministic_and_hint_path_runs() -> None:
    teacher = SmallCNN((8, 8), 16).eval()
    out = []
    for _ in range(2):
        set_seed(1)
        student = SmallCNN((2, 4), 8)
        distill(student, teacher, _toy(64), epochs=2, hint_weight=0.5, seed=3, progress=False)
        out.append(student.state_dict())
    assert all(torch.equal(out[0][k], out[1][k]) for k in out[0])
    assert not any("regressor" in k for k in out[0])  # the regressor is not part of the student
    wrapped = HintStudent(SmallCNN((2, 4), 8), teacher, torch.zeros(2, 1, 28, 28))
    assert wrapped.regressor.in_channels == 4 and wrapped.regressor.out_channels == 8


def test_kd_loss_fn_rejects_bad_settings() -> None:
    teacher = SmallCNN((2, 4), 8)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss_fn(teacher, temperature=0, alpha=0.5)
    with pytest.raises(ValueError, match="alpha"):
        kd_loss_fn(teacher, temperature=1, alpha=2)
    with pytest.raises(ValueError, match="hint_weight"):
        kd_loss_fn(teacher, temperature=1, alpha=0.5, hint_weight=-1)
    with pytest.raises(TypeError, match="features"):
        HintStudent(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), teacher,
                    torch.zeros(2, 1, 28, 28))


def _tiny_splits(n: int = 64) -> Splits:
    g = torch.Generator().manual_seed(0)
    make = lambda k: TensorDataset(torch.randn(k, 1, 28, 28, generator=g),  # noqa: E731
                                   torch.arange(k) % 10)
    return Splits("tiny", make(n), make(20), make(20), classes=tuple("0123456789"))


def test_train_student_caches_and_compares_fairly(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(qlib.train, "DATA_DIR", tmp_path)
    data = _tiny_splits()
    set_seed(0)
    teacher = SmallCNN((4, 4), 8).eval()
    kd = train_student("kd", data, teacher, seed=1, epochs=1, progress=False)
    again = train_student("kd", data, teacher, seed=1, epochs=1, progress=False)
    scratch = train_student("scratch", data, seed=1, epochs=1, progress=False)
    files = sorted(p.name for p in (tmp_path / "models").glob("*.pt"))
    assert len(files) == 2 and files[0].startswith("student-kd-tiny-")
    assert all(torch.equal(a, b) for a, b in zip(kd.state_dict().values(),
                                                   again.state_dict().values()))
    assert not torch.equal(kd.features[0].weight, scratch.features[0].weight)  # the loss differs
    # alpha = 0 is plain cross-entropy: the same weights as the scratch student
    ce_only = train_student("kd", data, teacher, seed=1, epochs=1, alpha=0.0, cache=False,
                            progress=False)
    for a, b in zip(ce_only.state_dict().values(), scratch.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_train_student_rejects_bad_input() -> None:
    data = _tiny_splits()
    with pytest.raises(ValueError, match="mode"):
        train_student("teacher", data)
    with pytest.raises(ValueError, match="needs a trained teacher"):
        train_student("kd", data)
    with pytest.raises(ValueError, match="unknown student settings"):
        train_student("scratch", data, epoch=3)


def test_recipes_are_registered() -> None:
    from qlib.recipes import RECIPES

    assert {"teacher", "scratch-student", "kd-student"} <= set(RECIPES)
    assert RECIPES["kd-student"].technique == "distillation"


# --- transfer sets: few labels or an omitted class (notebook 06, the report's students) ---

def _labelled(n_per_class: int = 12, classes: int = 5) -> TensorDataset:
    y = torch.arange(classes).repeat_interleave(n_per_class)
    return TensorDataset(torch.arange(len(y), dtype=torch.float32).view(-1, 1, 1, 1), y)


def test_transfer_set_omits_exactly_one_class() -> None:
    ds = _labelled()
    out = transfer_set(ds, omit_class=3)
    x, y = out.tensors
    assert 3 not in y.tolist() and len(y) == len(ds) - 12
    assert sorted(set(y.tolist())) == [0, 1, 2, 4]
    kept = ds.tensors[1] != 3  # the other images are all there, in order, with their labels
    assert torch.equal(x, ds.tensors[0][kept]) and torch.equal(y, ds.tensors[1][kept])
    assert transfer_set(ds) is ds


def test_transfer_set_few_labels_is_stratified_and_seeded() -> None:
    ds = _labelled()
    a = transfer_set(ds, labels_per_class=4, seed=0)
    x, y = a.tensors
    assert torch.equal(x, ds.tensors[0])  # every image stays
    labelled = y != UNLABELED
    assert torch.bincount(y[labelled]).tolist() == [4] * 5  # exactly k per class
    assert torch.equal(y[labelled], ds.tensors[1][labelled])  # kept labels are the true ones
    assert set(y[~labelled].tolist()) == {UNLABELED}
    assert torch.equal(transfer_set(ds, labels_per_class=4, seed=0).tensors[1], y)
    assert not torch.equal(transfer_set(ds, labels_per_class=4, seed=1).tensors[1], y)
    part = labeled_part(a)
    assert len(part) == 20 and (part.tensors[1] >= 0).all()
    both = transfer_set(ds, labels_per_class=2, omit_class=0)
    assert torch.bincount(both.tensors[1][both.tensors[1] >= 0]).tolist() == [0, 2, 2, 2, 2]


@pytest.mark.parametrize("kwargs, match", [
    (dict(omit_class=7), "omit_class must be one of"), (dict(omit_class=1.0), "omit_class"),
    (dict(labels_per_class=0), "labels_per_class"), (dict(labels_per_class=13), "rarest"),
    (dict(labels_per_class=2.5), "labels_per_class")])
def test_transfer_set_rejects_bad_input(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        transfer_set(_labelled(), **kwargs)


def test_labeled_part_of_unlabelled_set_raises() -> None:
    ds = TensorDataset(torch.zeros(3, 1, 1, 1), torch.full((3,), UNLABELED))
    with pytest.raises(ValueError, match="no labelled image"):
        labeled_part(ds)


def test_kd_loss_on_unlabelled_images_is_the_soft_term_only() -> None:
    set_seed(0)
    teacher, student = SmallCNN((2, 4), 8).eval(), SmallCNN((2, 4), 8)
    x = torch.randn(6, 1, 28, 28)
    y = torch.tensor([1, UNLABELED, 2, UNLABELED, UNLABELED, 0])
    got = kd_loss_fn(teacher, temperature=3.0, alpha=0.6)(student, x, y)
    with torch.no_grad():
        z_t = teacher(x)
    z_s = student(x)
    soft = distillation_loss(z_s, z_t, torch.zeros(6, dtype=torch.long), temperature=3.0,
                             alpha=1.0)
    lab = y >= 0
    hard = F.cross_entropy(z_s[lab], y[lab], reduction="sum") / 6
    torch.testing.assert_close(got, 0.6 * soft + 0.4 * hard)
    none = kd_loss_fn(teacher, temperature=3.0, alpha=0.6)(student, x, torch.full((6,), -1))
    torch.testing.assert_close(none, 0.6 * soft)


def test_train_student_on_a_transfer_set_matches_steps(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(qlib.train, "DATA_DIR", tmp_path)
    data = _tiny_splits(160)  # 16 per class
    set_seed(0)
    teacher = SmallCNN((4, 4), 8).eval()
    calls = []
    real_fit = qlib.distill.fit
    monkeypatch.setattr(qlib.distill, "fit", lambda m, loader, **kw: calls.append(
        (len(loader.dataset), len(loader), kw["epochs"])) or real_fit(m, loader, **kw))
    train_student("kd", data, teacher, seed=0, epochs=1, labels_per_class=2, progress=False)
    train_student("scratch", data, seed=0, epochs=1, labels_per_class=2, progress=False)
    (n_kd, b_kd, e_kd), (n_s, b_s, e_s) = calls
    assert (n_kd, n_s) == (160, 20)  # kd sees every image, scratch only the labelled ones
    assert b_kd * e_kd == b_s * e_s  # the same number of optimiser steps
    files = sorted(p.name for p in (tmp_path / "models").glob("*.pt"))
    assert [f.rsplit("-", 1)[0] for f in files] == ["student-kd-tiny-2pc", "student-scratch-tiny-2pc"]


def test_student_recipes_report_seed_means(monkeypatch) -> None:
    from qlib.recipes import distill as recipes

    data = _tiny_splits(40)
    set_seed(0)
    teacher = SmallCNN((4, 4), 8).eval()
    monkeypatch.setattr(recipes, "TRANSFER", dict(labels_per_class=2))
    monkeypatch.setattr(recipes, "train_student", lambda mode, d, t=None, *, seed, **kw:
                        train_student(mode, d, t, seed=seed, epochs=1, cache=False, **kw))
    kd = recipes.kd_student_recipe(teacher, data)
    scratch = recipes.scratch_student_recipe(teacher, data)
    for v in (kd, scratch):
        accs = [s["accuracy"] for s in v.extra["seeds"]]
        assert v.extra["n_seeds"] == len(recipes.STUDENT_SEEDS) == len(accs) == 3
        assert v.extra["accuracy_mean"] == pytest.approx(sum(accs) / 3)
        assert v.extra["accuracy_std"] >= 0 and v.extra["setting"] == dict(labels_per_class=2)
        lo, hi = v.extra["accuracy_ci"]
        assert lo <= v.extra["accuracy_mean"] <= hi
    assert kd.extra["scratch_accuracy_mean"] == pytest.approx(scratch.extra["accuracy_mean"])
    room = kd.extra["teacher_accuracy"] - scratch.extra["accuracy_mean"]
    if room > 0:
        assert kd.extra["gap_closed"] == pytest.approx(
            (kd.extra["accuracy_mean"] - scratch.extra["accuracy_mean"]) / room)
    assert [p["seed"] for p in kd.extra["paired_vs_scratch"]] == [0, 1, 2]
