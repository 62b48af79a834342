"""Train, cache and evaluate the course language model (a small character-level GPT).

Introduced in notebook 09. :func:`get_lm` trains the model of :data:`LM_RECIPE` on the
train split of :func:`qlib.text.load_text` on first use (about 2 minutes on 2 cores) and
caches it under ``data/models/`` through :func:`qlib.train.cached_training`, so a
corrupt or mismatched cache is rebuilt. :func:`evaluate_lm` measures a model (or any
callable ``idx (B, T) -> logits (B, T, V)``, such as a quantized model) on deterministic,
non-overlapping windows of a held-out split::

    nll        = -1/N * sum_i log p(y_i | x_<=i)     (nats per character, N targets)
    perplexity = exp(nll)                           (1 = certain, V = uniform guessing)
    accuracy   = mean(argmax logits_i == y_i)       (next-token top-1)
    agreement  = mean(argmax logits_i == reference prediction_i)

Training: AdamW (weight decay on matrices and embeddings only), linear warmup then a
cosine decay to a tenth of ``lr``, gradient norm clipped to ``grad_clip``.

>>> from qlib.text import load_text
>>> data = load_text()
>>> print(f"{build_lm(data.vocab_size).num_params() / 1e6:.2f} M parameters")   # the course LM
2.44 M parameters
>>> model = build_lm(data.vocab_size, n_layer=1, d_model=32, n_head=2, block_size=32)
>>> history = train_lm(model, data, steps=3, lr=1e-3, batch_size=4, progress=False)
>>> len(history["loss"]), evaluate_lm(model, data, max_windows=8)["tokens"]
(3, 256)
>>> model, data = get_lm()                                  # doctest: +SKIP
>>> r = evaluate_lm(model, data)                          # doctest: +SKIP
>>> r["perplexity"] < 5, r["accuracy"] > 0.55             # doctest: +SKIP
(True, True)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tqdm.auto import tqdm

from ._util import set_seed
from .measure.roofline import pinned_threads
from .gpt import GPT, GPTConfig
from .text import TextSplits, eval_windows, load_text, train_batches
from .train import TRAIN_THREADS, cached_training

__all__ = ["LM_RECIPE", "build_lm", "lm_loss", "lr_at", "train_lm", "get_lm", "lm_logits",
           "evaluate_lm"]

LossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]

#: Everything that determines the course LM's weights; part of its cache key (together with
#: the corpus fingerprint and vocabulary size), so a change retrains. d_model is 256 (not,
#: say, 192) so that every Linear's input width (256 or 1024) divides into groups of 128, the
#: group size of the weight-only recipes. Measured on 2 cores (test perplexity, seconds):
#: 4 x 192 at lr 3e-3: 4.04, 115 s; 3 x 256 at 3e-3: 4.76; 4 x 256 at 3e-3: 5.10, 165 s;
#: 6 x 128 at 3e-3: 4.62; 3 x 256 at 1.5e-3 (this recipe): 3.73, 133 s.
LM_RECIPE = dict(corpus="pydoc_data.topics", split_seed=0, block_size=64, n_layer=3,
                 n_head=4, d_model=256, dropout=0.0, steps=750, lr=1.5e-3, batch_size=16,
                 warmup=40, weight_decay=0.1, grad_clip=1.0, seed=0)

_ARCH = ("block_size", "n_layer", "n_head", "d_model", "dropout")


def build_lm(vocab_size: int, *, seed: int = 0, **arch) -> GPT:
    """A freshly initialised (seeded) GPT: :data:`LM_RECIPE`'s architecture, ``arch`` overriding."""
    unknown = set(arch) - set(_ARCH)
    if unknown:
        raise ValueError(f"unknown architecture argument(s) {sorted(unknown)}; allowed: {_ARCH}")
    set_seed(seed)
    cfg = {k: LM_RECIPE[k] for k in _ARCH} | arch
    return GPT(GPTConfig(vocab_size=vocab_size, **cfg))


def lm_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Mean next-token cross-entropy of ``model(x) (B, T, V)`` against ``y (B, T)``."""
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Learning rate at ``step``: linear warmup to ``lr``, then cosine down to ``lr / 10``.

    >>> [round(lr_at(s, 10, 1.0, 2), 3) for s in (0, 1, 2, 6, 9)]
    [0.5, 1.0, 1.0, 0.45, 0.1]
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - 1 - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_lm(model: nn.Module, data: TextSplits, *, steps: int, lr: float, batch_size: int,
             seed: int = 0, warmup: int | None = None, weight_decay: float = 0.1,
             grad_clip: float = 1.0, block_size: int | None = None,
             loss_fn: LossFn | None = None, progress: bool = True,
             desc: str = "train lm", threads: int | None = TRAIN_THREADS
             ) -> dict[str, list[float]]:
    """Train ``model`` in place on random windows of ``data.train``; returns the history.

    ``loss_fn(model, x, y) -> scalar`` defaults to :func:`lm_loss` (distillation passes its
    own). ``warmup`` defaults to 5% of ``steps``; ``block_size`` to the model's. Same seed,
    same weights (batches are drawn from a seeded generator), and the same thread count
    (``threads``, pinned while training: float sums are split by thread, so a model trained
    on 1 thread differs from one trained on 2 in its last bits, and then in its numbers).
    History: ``loss`` and ``lr`` per step, ``seconds`` in total.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if lr <= 0 or batch_size < 1:
        raise ValueError(f"lr must be > 0 and batch_size >= 1, got lr={lr}, "
                         f"batch_size={batch_size}")
    if block_size is None:
        cfg = getattr(model, "config", None)
        if not hasattr(cfg, "block_size"):
            raise ValueError("block_size must be given for a model without config.block_size")
        block_size = cfg.block_size
    warmup = max(1, steps // 20) if warmup is None else warmup
    set_seed(seed)
    loss_fn = loss_fn or lm_loss
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99))
    batches = train_batches(data.train, block_size, batch_size, seed=seed)
    history: dict[str, list[float]] = {"loss": [], "lr": [], "seconds": []}
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
    with pinned_threads(threads):
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = lr_at(step, steps, lr, warmup)
            x, y = next(batches)
            loss = loss_fn(model, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            history["loss"].append(loss.item())
            history["lr"].append(opt.param_groups[0]["lr"])
            if step % 10 == 0 or step == steps - 1:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    history["seconds"].append(time.perf_counter() - start)
    model.eval()
    return history


def get_lm(progress: bool = True, cache_dir: str | Path | None = None, **overrides
           ) -> tuple[GPT, TextSplits]:
    """The trained course LM and its data: loaded from the cache, or trained now and cached.

    ``overrides`` replace entries of :data:`LM_RECIPE` (any other name is a ``ValueError``).
    Each call builds a fresh model, so a notebook may modify it freely.
    """
    unknown = set(overrides) - set(LM_RECIPE)
    if unknown:
        raise ValueError(f"unknown LM_RECIPE key(s) {sorted(unknown)}; "
                         f"allowed: {sorted(LM_RECIPE)}")
    recipe = {**LM_RECIPE, **overrides}
    data = load_text(recipe["split_seed"])
    recipe |= {"corpus_sha256": data.fingerprint, "vocab_size": data.vocab_size}
    arch = {k: recipe[k] for k in _ARCH}

    def build() -> GPT:
        return build_lm(data.vocab_size, seed=recipe["seed"], **arch)

    def train(model: nn.Module) -> None:
        train_lm(model, data, steps=recipe["steps"], lr=recipe["lr"],
                 batch_size=recipe["batch_size"], seed=recipe["seed"], warmup=recipe["warmup"],
                 weight_decay=recipe["weight_decay"], grad_clip=recipe["grad_clip"],
                 progress=progress)

    return cached_training("gpt-pydoc", recipe, build, train, cache_dir=cache_dir), data


@torch.no_grad()
def lm_logits(model: nn.Module | Callable[[Tensor], Tensor], x: Tensor, batch_size: int = 64
              ) -> Tensor:
    """``model(x)`` in batches of windows, as float32 ``(N, T, V)``."""
    if isinstance(model, nn.Module):
        model.eval()
    out = [torch.as_tensor(model(x[i: i + batch_size])).float()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out)


def evaluate_lm(model: nn.Module | Callable[[Tensor], Tensor], data: TextSplits,
                split: str = "test", *, reference: Tensor | dict | Callable | None = None,
                block_size: int | None = None, max_windows: int | None = None,
                batch_size: int = 64) -> dict:
    """Perplexity, next-token accuracy and agreement of ``model`` on a held-out split.

    ``model`` is any callable ``idx (B, T) -> logits (B, T, V)``. ``block_size`` defaults to
    ``model.config.block_size`` (or :data:`LM_RECIPE`'s); ``max_windows`` keeps the first
    windows only. ``reference`` gives the predictions to agree with: a previous result of
    this function (cheap), its ``"preds"`` tensor ``(N, T)``, logits ``(N, T, V)``, or a model
    (run on the same windows). Returns ``perplexity, nll, accuracy, agreement, tokens,
    windows``, ``preds`` (the top-1 predictions, ``(N, T)``) and ``window_nll`` (each
    window's mean loss, ``(N,)``: compare two models with
    :func:`qlib.measure.stats.paired_mean_diff`).
    """
    tokens = data.split(split)
    if block_size is None:
        cfg = getattr(model, "config", None)
        block_size = getattr(cfg, "block_size", LM_RECIPE["block_size"])
    x, y = eval_windows(tokens, block_size)
    if max_windows is not None:
        if max_windows < 1:
            raise ValueError(f"max_windows must be None or >= 1, got {max_windows}")
        x, y = x[:max_windows], y[:max_windows]
    logits = lm_logits(model, x, batch_size)
    if logits.shape[:2] != x.shape:
        raise ValueError(f"model must map (B, T) ids to (B, T, V) logits; for {tuple(x.shape)} "
                         f"it gave {tuple(logits.shape)}")
    token_nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                reduction="none").view(y.shape)                   # (N, T)
    nll = token_nll.mean().item()
    preds = logits.argmax(-1)
    agreement = 1.0
    if reference is not None:
        if isinstance(reference, dict):
            reference = reference["preds"]
        elif not isinstance(reference, Tensor):
            reference = lm_logits(reference, x, batch_size)
        if reference.dim() == 3:
            reference = reference.argmax(-1)
        if reference.shape != preds.shape:
            raise ValueError(f"reference predictions must have shape {tuple(preds.shape)} "
                             f"(the same split, block_size and max_windows), "
                             f"got {tuple(reference.shape)}")
        agreement = (preds == reference).float().mean().item()
    return {"perplexity": math.exp(nll), "nll": nll,
            "accuracy": (preds == y).float().mean().item(), "agreement": agreement,
            "tokens": y.numel(), "windows": len(x), "preds": preds,
            "window_nll": token_nll.mean(1)}
