"""Gradual pruning: the cubic sparsity schedule of Zhu & Gupta (2017), applied while training.

Introduced in notebook 05. One-shot pruning to 90% removes many weights the network still
needs at once; pruning a little at a time during training lets the survivors take over.
The schedule (t = training step, t0 = start, dt = steps between pruning steps, n = number
of pruning steps)::

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n dt))^3    for t0 <= t <= t0 + n dt

prunes fast while many weights are redundant and slowly near the end.

>>> [round(cubic_sparsity(t, 0.8, n_steps=4), 2) for t in range(6)]
[0.0, 0.46, 0.7, 0.79, 0.8, 0.8]
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .._util import LossFn, check_sparsity
from .masks import magnitude_prune, prunable_layers

__all__ = ["cubic_sparsity", "GradualPruner"]


def cubic_sparsity(step: int, final: float, *, n_steps: int, initial: float = 0.0,
                   start: int = 0, every: int = 1) -> float:
    """Zhu & Gupta (2017) gradual schedule: s_t = s_f + (s_i - s_f) (1 - (t - t0)/(n dt))^3.

    Introduced in notebook 05. Sparsity rises fast at first (many redundant weights) and
    levels off at ``final`` after ``n_steps`` pruning steps of ``every`` (dt) training
    steps each, starting at ``start`` (t0). ``step`` is rounded down to the last pruning
    step; before t0 it is ``initial``, after t0 + n dt it is ``final``.

    >>> [round(cubic_sparsity(t, 0.8, n_steps=4), 2) for t in range(6)]
    [0.0, 0.46, 0.7, 0.79, 0.8, 0.8]
    """
    initial, final = check_sparsity(initial, "initial"), check_sparsity(final, "final")
    if n_steps < 1 or every < 1 or start < 0:
        raise ValueError(f"need n_steps >= 1, every >= 1 and start >= 0, got n_steps={n_steps}"
                         f", every={every}, start={start}")
    done = min(max((step - start) // every, 0), n_steps)  # pruning steps taken so far
    if done in (0, n_steps):  # exact end points, free of rounding
        return initial if done == 0 else final
    return final + (initial - final) * (1.0 - done / n_steps) ** 3




class GradualPruner:
    """Prune while training: before each training step, re-mask to the cubic schedule.

    Introduced in notebook 05. Hooks into ``qlib.train.fit`` through its ``loss_fn``, which
    ``fit`` calls exactly once per optimizer step, so ``fit`` itself needs no change::

        pruner = GradualPruner(model, 0.9, total_steps=epochs * len(loader))
        fit(model, loader, epochs=epochs, loss_fn=pruner.loss_fn())
        remove_masks(model)

    Masks are recomputed from the weights the model currently computes with, so a pruned
    weight (now 0) stays pruned while the schedule rises. By default the schedule reaches
    ``final`` after 3/4 of ``total_steps`` in 10 pruning steps, leaving the rest to recover.
    """

    def __init__(self, model: nn.Module, final: float, *, total_steps: int,
                 initial: float = 0.0, n_steps: int = 10, end_fraction: float = 0.75,
                 scope: str = "global") -> None:
        check_sparsity(final, "final")
        if total_steps < n_steps or not 0.0 < end_fraction <= 1.0:
            raise ValueError(f"need total_steps >= n_steps and end_fraction in (0, 1], got "
                             f"total_steps={total_steps}, n_steps={n_steps}, "
                             f"end_fraction={end_fraction}")
        if scope not in ("global", "layer"):
            raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
        prunable_layers(model)
        self.model, self.final, self.initial, self.scope = model, final, initial, scope
        self.n_steps = n_steps
        self.every = max(1, int(total_steps * end_fraction) // n_steps)
        self.t, self.current = 0, -1.0
        self.history: list[tuple[int, float]] = []  # (training step, sparsity) at each change

    def step(self) -> float:
        """Advance one training step; re-mask when the scheduled sparsity changed."""
        target = cubic_sparsity(self.t, self.final, n_steps=self.n_steps,
                                initial=self.initial, every=self.every)
        if target != self.current:
            magnitude_prune(self.model, target, scope=self.scope)
            self.current = target
            self.history.append((self.t, target))
        self.t += 1
        return target

    def loss_fn(self, inner: LossFn | None = None) -> LossFn:
        """A ``loss_fn(model, x, y)`` for ``fit`` that steps the schedule, then calls
        ``inner`` (cross-entropy by default)."""
        def loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
            self.step()
            return inner(model, x, y) if inner else F.cross_entropy(model(x), y)
        return loss
