"""Tests for qlib.prune.schedule: the cubic schedule against its formula, and a pruner that follows
it inside qlib.train.fit with pruned weights staying pruned."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import qlib
from qlib.prune.schedule import GradualPruner, cubic_sparsity
from qlib.models import student_model
from qlib.prune import prunable_layers, remove_masks, sparsity
from qlib.train import fit


def test_cubic_schedule_matches_zhu_gupta() -> None:
    s_i, s_f, t0, n, dt = 0.1, 0.9, 5, 8, 3
    for t in range(t0, t0 + n * dt + 1, dt):  # at every pruning step, the paper's formula
        expected = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3
        got = cubic_sparsity(t, s_f, n_steps=n, initial=s_i, start=t0, every=dt)
        assert got == pytest.approx(expected, abs=1e-12)
    # held between pruning steps, initial before t0, final after t0 + n dt
    assert cubic_sparsity(t0 + 4, s_f, n_steps=n, initial=s_i, start=t0, every=dt) == \
        cubic_sparsity(t0 + 3, s_f, n_steps=n, initial=s_i, start=t0, every=dt)
    assert cubic_sparsity(0, s_f, n_steps=n, initial=s_i, start=t0, every=dt) == s_i
    assert cubic_sparsity(10_000, s_f, n_steps=n, initial=s_i, start=t0, every=dt) == s_f
    values = [cubic_sparsity(t, 0.9, n_steps=10) for t in range(12)]
    assert values == sorted(values)
    steps = [b - a for a, b in zip(values, values[1:11])]
    assert steps == sorted(steps, reverse=True)  # prunes fast first, slowly at the end


def test_cubic_schedule_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cubic_sparsity(0, 1.2, n_steps=3)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cubic_sparsity(0, 0.5, n_steps=3, initial=-0.1)
    with pytest.raises(ValueError, match="n_steps"):
        cubic_sparsity(0, 0.5, n_steps=0)


def test_gradual_pruner_inside_fit(data) -> None:
    qlib.set_seed(0)
    model = student_model()
    x, y = data.train.tensors
    loader = DataLoader(TensorDataset(x[:320], y[:320]), batch_size=32)  # 10 steps per epoch
    pruner = GradualPruner(model, 0.8, total_steps=20, n_steps=5, end_fraction=0.5)
    assert pruner.every == 2
    seen: list[dict[str, torch.Tensor]] = []

    def spy(m, xb, yb):  # after the pruner stepped: record which weights are zero
        seen.append({n: (layer.weight == 0).clone() for n, layer in prunable_layers(m).items()})
        return torch.nn.functional.cross_entropy(m(xb), yb)

    fit(model, loader, epochs=2, lr=1e-2, loss_fn=pruner.loss_fn(spy), progress=False)
    assert pruner.t == 20
    targets = [s for _, s in pruner.history]
    assert [t for t, _ in pruner.history] == [0, 2, 4, 6, 8, 10]
    assert targets == pytest.approx([cubic_sparsity(2 * k, 0.8, n_steps=5, every=2)
                                     for k in range(6)])
    assert sparsity(model)["total"] == pytest.approx(0.8, abs=1e-3)
    for before, after in zip(seen, seen[1:]):  # once pruned, stays pruned
        assert all(torch.all(after[n] | ~before[n]) for n in before)
    remove_masks(model)
    assert sparsity(model)["total"] == pytest.approx(0.8, abs=1e-3)


def test_gradual_pruner_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        GradualPruner(student_model(), 1.5, total_steps=10)
    with pytest.raises(ValueError, match="total_steps"):
        GradualPruner(student_model(), 0.5, total_steps=3, n_steps=10)
    with pytest.raises(ValueError, match="no prunable layer"):
        GradualPruner(torch.nn.ReLU(), 0.5, total_steps=100)
