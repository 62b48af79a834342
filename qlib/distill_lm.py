"""Distilling the course language model into a smaller decoder, against the same student
trained on the text alone (notebook 10).

Introduced in notebook 10. Notebook 06's loss, applied to every next-token prediction: for
student logits z_s and teacher logits z_t, both (B, T, V), flattened to (B*T, V)::

    loss = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)

The teacher (the trained course LM) is frozen and sees the same windows. The two students
share everything else (:data:`LM_STUDENT`: architecture, seed, initial weights, batches,
optimiser, steps): only the loss differs, so they are a fair comparison. Trained students
are cached under ``data/models/`` (keyed on the settings, the seed, the corpus and the
teacher's weights), like the course LM.

>>> from qlib.gpt import GPT, GPTConfig
>>> t = GPT(GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=1, d_model=4))
>>> x = torch.zeros(2, 8, dtype=torch.long)
>>> float(lm_kd_loss_fn(t, temperature=2.0, alpha=1.0)(t, x, x).detach())   # student == teacher
0.0
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ._util import LossFn, set_seed
from .distill import distillation_loss
from .gpt import GPT
from .lm import LM_RECIPE, build_lm, train_lm
from .text import TextSplits
from .train import cached_training, fingerprint

__all__ = ["LM_STUDENT", "lm_kd_loss_fn", "get_lm_student"]

#: The students: half the course LM's width, two of its three blocks (about a sixth of its
#: parameters); their budget: 400 steps (the course LM's batches, about half its 750 steps, so
#: the six students train in about 2.5 min on 2 cores, not 5) at twice its peak learning rate
#: (smaller models take larger steps, as in GPT-3's Table 2.1); KD's temperature and weight of
#: the soft term. Everything else of the budget is the course LM's (:data:`qlib.lm.LM_RECIPE`).
LM_STUDENT = dict(d_model=128, n_layer=2, n_head=4, steps=400, lr=3e-3, temperature=2.0,
                  alpha=0.5)


def lm_kd_loss_fn(teacher: nn.Module, *, temperature: float, alpha: float) -> LossFn:
    """``loss_fn(student, x, y)`` for :func:`qlib.lm.train_lm`: the Hinton loss per token."""

    teacher.eval()                     # frozen: no dropout, no gradients (no_grad below)

    def loss(student: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():
            z_t = teacher(x)                                                 # (B, T, V)
        z_s = student(x)
        return distillation_loss(z_s.flatten(0, 1), z_t.flatten(0, 1), y.flatten(),
                                 temperature=temperature, alpha=alpha)

    return loss


_BUDGET = ("block_size", "steps", "lr", "batch_size", "warmup", "weight_decay", "grad_clip")


def get_lm_student(mode: str, data: TextSplits, teacher: GPT | None = None, *, seed: int = 0,
                   progress: bool = True, cache_dir: str | Path | None = None,
                   **overrides) -> GPT:
    """A :data:`LM_STUDENT` decoder trained on ``data`` from scratch (``mode="scratch"``) or
    distilled from ``teacher`` (``"kd"``); loaded from the cache when it was trained before.

    ``overrides`` replace entries of :data:`LM_STUDENT` (``steps``, ``lr``, ...) or of the rest
    of the training budget, taken from :data:`qlib.lm.LM_RECIPE` (``batch_size``, ``warmup``,
    ...); anything else is a ``ValueError``.
    """
    if mode not in ("scratch", "kd"):
        raise ValueError(f"mode must be 'scratch' or 'kd', got {mode!r}")
    if mode == "kd" and teacher is None:
        raise ValueError("mode 'kd' needs the trained course LM as teacher (qlib.lm.get_lm())")
    unknown = set(overrides) - set(LM_STUDENT) - set(_BUDGET)
    if unknown:
        raise ValueError(f"unknown student setting(s) {sorted(unknown)}; allowed: "
                         f"{sorted(set(LM_STUDENT) | set(_BUDGET))}")
    s = {k: overrides.get(k, v) for k, v in LM_STUDENT.items()}
    if mode == "scratch":   # the soft-target settings do not apply
        s.update(temperature=None, alpha=None)
    budget = {k: s[k] if k in s else overrides.get(k, LM_RECIPE[k]) for k in _BUDGET}
    recipe = dict(mode=mode, seed=seed, corpus_sha256=data.fingerprint,
                  vocab_size=data.vocab_size, **{**s, **budget},
                  teacher=fingerprint(teacher) if mode == "kd" else None)

    def build() -> GPT:
        set_seed(seed)
        return build_lm(data.vocab_size, seed=seed, block_size=budget["block_size"],
                        d_model=s["d_model"], n_layer=s["n_layer"], n_head=s["n_head"])

    def train(student: nn.Module) -> None:
        loss_fn = None if mode == "scratch" else lm_kd_loss_fn(
            teacher, temperature=s["temperature"], alpha=s["alpha"])
        train_lm(student, data, steps=budget["steps"], lr=budget["lr"],
                 batch_size=budget["batch_size"], seed=seed, warmup=budget["warmup"],
                 weight_decay=budget["weight_decay"], grad_clip=budget["grad_clip"],
                 loss_fn=loss_fn, progress=progress, desc=f"{mode} student (seed {seed})")

    return cached_training(f"gpt-student-{mode}", recipe, build, train, cache_dir=cache_dir)
