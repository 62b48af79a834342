"""Seeded fit / evaluate loops, atomic checkpoints and the cached course baseline.

Introduced in notebook 00. ``fit`` trains with AdamW and a one-cycle learning-rate
schedule, augmenting with small random shifts (digits move a pixel or two; the label does
not). ``get_baseline()`` trains the course model on first use (about 15 s on 2 cores)
and caches it under ``data/``; a missing, corrupt or mismatched cache is rebuilt.

>>> import qlib
>>> model, data = get_baseline()           # doctest: +SKIP
>>> evaluate(model, data.loader("test"))["accuracy"] > 0.98   # doctest: +SKIP
True
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import json
import os
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from filelock import FileLock, Timeout
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ._files import atomic_write, writable_dir_problem
from ._util import LossFn, set_seed
from .data import DATA_DIR, Splits, load_dataset
from .measure.metrics import classification_report
from .measure.roofline import pinned_threads
from .models import build_model

__all__ = ["fit", "predict", "evaluate", "save_checkpoint", "load_checkpoint",
           "fingerprint", "source_hash", "cached_training", "get_trained", "get_baseline",
           "random_shift", "BASELINE_RECIPE"]


def random_shift(x: Tensor, max_shift: int = 2, generator: torch.Generator | None = None
                 ) -> Tensor:
    """Shift each image (N, C, H, W) by up to ``max_shift`` pixels, filling with the border.

    Augmentation for images only: other inputs (sequences, features) need ``max_shift=0``."""
    if max_shift == 0:
        return x
    if max_shift < 0 or x.dim() != 4:
        raise ValueError(f"random_shift shifts images (N, C, H, W) by max_shift >= 0 pixels; "
                         f"got inputs of shape {tuple(x.shape)} and max_shift={max_shift}: "
                         "pass max_shift=0 for inputs that are not images")
    n, _, h, w = x.shape
    pad = F.pad(x, (max_shift,) * 4, mode="replicate")
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w)
    idx_n = torch.arange(n).view(n, 1, 1, 1)
    idx_c = torch.arange(x.shape[1]).view(1, -1, 1, 1)
    return pad[idx_n, idx_c, rows, cols]


def _cross_entropy(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(model(x), y)


def fit(model: nn.Module, train_loader: DataLoader, *, epochs: int = 10, lr: float = 3e-3,
        weight_decay: float = 1e-4, loss_fn: LossFn | None = None, max_shift: int = 2,
        val_loader: DataLoader | None = None, seed: int = 0, progress: bool = True,
        desc: str = "train") -> dict[str, list[float]]:
    """Train ``model`` in place; returns a history of per-epoch train loss (and val accuracy).

    ``loss_fn(model, x, y) -> scalar`` defaults to cross-entropy; distillation and QAT pass
    their own. Same seed, same weights: shuffling, augmentation and init are seeded.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if len(train_loader) == 0:
        raise ValueError("train_loader yields no batches; give it at least one image")
    set_seed(seed)
    loss_fn = loss_fn or _cross_entropy
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, epochs=epochs,
                                                steps_per_epoch=len(train_loader))
    gen = torch.Generator().manual_seed(seed)
    history: dict[str, list[float]] = {"loss": [], "val_accuracy": [], "seconds": []}
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    for _ in bar:
        model.train()
        start, total, count = time.perf_counter(), 0.0, 0
        for x, y in train_loader:
            x = random_shift(x, max_shift, gen)
            loss = loss_fn(model, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, count = total + loss.item() * len(y), count + len(y)
        history["loss"].append(total / count)
        history["seconds"].append(time.perf_counter() - start)
        if val_loader is not None:
            history["val_accuracy"].append(evaluate(model, val_loader)["accuracy"])
        bar.set_postfix(loss=f"{history['loss'][-1]:.3f}")
    model.eval()
    return history


@torch.no_grad()
def predict(model: nn.Module | Callable[[Tensor], Tensor], loader: DataLoader | Iterable
            ) -> tuple[Tensor, Tensor]:
    """Logits (N, classes) and labels (N,) of a model or any ``batch -> logits`` callable.

    Non-finite outputs (NaN, Inf) raise ``ValueError``: every metric computed from them would
    be a number, and a wrong one."""
    if isinstance(model, nn.Module):
        model.eval()
    logits, labels = [], []
    for i, (x, y) in enumerate(loader):
        out = torch.as_tensor(model(x)).float()
        if not torch.isfinite(out).all():  # argmax of NaN is index 0: an accuracy, but wrong
            raise ValueError(f"the model's outputs are not finite (NaN or Inf) in batch {i}: "
                             "a model that outputs NaN has no accuracy; check its weights")
        logits.append(out)
        labels.append(y)
    if not logits:
        raise ValueError("the loader yielded no batches")
    return torch.cat(logits), torch.cat(labels)


def evaluate(model: nn.Module | Callable[[Tensor], Tensor], loader: DataLoader | Iterable,
             num_classes: int | None = None) -> dict:
    """``classification_report`` of a model on a loader, plus its logits and predictions."""
    logits, labels = predict(model, loader)
    preds = logits.argmax(1)
    report = classification_report(labels, preds, num_classes or logits.shape[1])
    report.update(logits=logits, preds=preds, labels=labels)
    return report


def save_checkpoint(obj: dict, path: str | Path) -> Path:
    """Write ``obj`` with ``torch.save`` atomically: a temp file in the same folder, then rename.

    A crash mid-write leaves the old file (or none), never a half-written one.
    """
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint saved by :func:`save_checkpoint` with ``weights_only=True``."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)


#: How the course baseline is trained; part of the cache key, so a change retrains.
BASELINE_RECIPE = dict(model="course", dataset="embedded", epochs=12, lr=3e-3, batch_size=64,
                       weight_decay=1e-4, max_shift=2, seed=0)


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    """The same tree without docstrings: a documentation edit changes no cache key."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(
                    getattr(body[0], "value", None), ast.Constant) and isinstance(
                    body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _qlib_imports(module: str, tree: ast.AST, is_package: bool) -> set[str]:
    """The qlib modules ``module`` imports (absolute names), read from its syntax tree."""
    out = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "qlib")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.split(".")[0] != "qlib":
                continue
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)  # `from . import data`
    return out


@functools.lru_cache(maxsize=None)
def source_hash(*modules: str) -> str:
    """A hash of the code of ``modules`` and every qlib module they import, transitively.

    Introduced with the caches of notebook 00. Docstrings are stripped first (comments are
    not in the syntax tree), so a documentation edit changes nothing, while a code edit
    in any module a training depends on changes the hash and retrains once. Modules
    outside qlib (a notebook's ``__main__``) are ignored.
    """
    seen: dict[str, str] = {}
    todo = [m for m in modules if m.split(".")[0] == "qlib"] or ["qlib.train"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, AttributeError, ValueError):  # `from qlib.data import Splits`
            spec = None
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            continue  # `from qlib.x import name` where name is not a module
        tree = ast.parse(Path(spec.origin).read_text())
        seen[name] = ast.dump(_strip_docstrings(tree))
        todo += _qlib_imports(name, tree, spec.submodule_search_locations is not None)
    h = hashlib.sha256()
    for name in sorted(seen):
        h.update(name.encode() + b"\0" + seen[name].encode())
    return h.hexdigest()[:12]


def _key(recipe: dict, modules: tuple[str, ...]) -> str:
    blob = json.dumps({**recipe, "torch": torch.__version__.split("+")[0],
                       "qlib": source_hash(*sorted(set(modules)))}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def fingerprint(model: nn.Module) -> str:
    """A short hash of a model's state dict: put it in a recipe's cache key so that a cache
    built from one baseline is never reused for another."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def cached_training(name: str, recipe: dict, build: Callable[[], nn.Module],
                    train: Callable[[nn.Module], object], *,
                    cache_dir: str | Path | None = None) -> nn.Module:
    """``build()`` a model, then load its trained weights from the cache or ``train`` it.

    The cache file is ``data/models/{name}-{key}.pt``, ``key`` a hash of ``recipe`` (a JSON-
    able dict of everything that determines the weights), the torch version and the
    :func:`source_hash` of the modules that define ``build`` and ``train`` (and what they
    import): a code change there retrains, an edit elsewhere or to a docstring does not. It
    holds the state dict and the recipe. A file that fails to load, holds another recipe or
    does not fit the architecture is retrained and overwritten with a one-line message,
    never a crash. A cache folder that cannot be written is found before training: the
    model is trained, returned and used, with one warning, and not saved. ``build`` must be
    deterministic (seed inside it); ``train(model)`` trains in place. A lock file beside the
    cache (``filelock``) lets one process train a model while another that needs the same
    one waits and then loads it.
    Used by the baseline and by every recipe that trains (notebooks 04-08).
    """
    modules = (build.__module__, train.__module__, "qlib.train")
    path = Path(cache_dir or DATA_DIR / "models") / f"{name}-{_key(recipe, modules)}.pt"

    def cached(say: bool) -> nn.Module | None:
        """The cached model, or None when there is none or it is unusable (``say``: say so)."""
        if not path.exists():
            return None
        net = build()
        try:
            ckpt = load_checkpoint(path)
            if ckpt.get("recipe") != recipe:
                raise ValueError("the cached recipe differs")
            net.load_state_dict(ckpt["state_dict"])
            return net.eval()
        except Exception as err:  # noqa: BLE001 - any bad cache is rebuilt
            if say:
                print(f"qlib: cache {path.name} unusable ({type(err).__name__}); retraining")
            return None

    net = cached(say=False)    # the usual case: no lock, no probe (a save is an atomic rename)
    if net is not None:
        return net
    # Checked before training, so the learner hears it now and not after minutes of work;
    # either way the trained model is returned and used, with one warning.
    problem = writable_dir_problem(path.parent)
    # One process trains a given model at a time (two notebooks open at once, two test runs):
    # the other waits on the lock file, then loads what the first saved.
    lock = FileLock(f"{path}.lock") if not problem else None
    if lock is not None:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            print(f"qlib: another process is training {path.name}; waiting for it")
            lock.acquire()
    try:
        net = cached(say=True)     # saved meanwhile by the process we waited for?
        if net is not None:
            return net
        net = build()
        if problem:
            warnings.warn(f"qlib: the cache folder {problem}: {name} is trained now and used, but "
                          f"not saved (set QLIB_DATA to a writable folder to keep it)", stacklevel=2)
        train(net)
        if not problem:
            try:
                save_checkpoint({"recipe": recipe, "state_dict": net.state_dict()}, path)
            except OSError as err:  # a full disk, or the folder changed under us
                warnings.warn(f"qlib: could not save {path} ({err.strerror or err}); the trained "
                              f"{name} is used but not cached", stacklevel=2)
    finally:
        if lock is not None:
            lock.release()
    return net.eval()


#: Threads the cached baseline trains on: the course machine's 2 cores (see get_trained).
TRAIN_THREADS = 2


def get_trained(model: str = "course", dataset: str = "embedded", *, epochs: int = 12,
                lr: float = 3e-3, batch_size: int = 64, weight_decay: float = 1e-4,
                max_shift: int = 2, seed: int = 0, cache_dir: str | Path | None = None,
                progress: bool = True) -> tuple[nn.Module, Splits]:
    """A trained model and its data: loaded from the cache, or trained now and cached.

    The cache file is ``data/models/{model}-{dataset}-{key}.pt`` (see
    :func:`cached_training`): a corrupt or mismatched cache is rebuilt, never a crash.
    Training runs on :data:`TRAIN_THREADS` threads whatever the caller set, so the weights do
    not depend on who trained them first (measured: a baseline trained on 1 thread differs
    from the 2-thread one by up to 0.35 in a weight, and fails notebook 04's assert).
    """
    recipe = dict(model=model, dataset=dataset, epochs=epochs, lr=lr, batch_size=batch_size,
                  weight_decay=weight_decay, max_shift=max_shift, seed=seed)
    data = load_dataset(dataset)

    def build() -> nn.Module:
        set_seed(seed)
        return build_model(model, data.num_classes, data.input_shape[0], data.input_shape[1])

    def train(net: nn.Module) -> None:
        with pinned_threads(TRAIN_THREADS):
            fit(net, data.loader("train", batch_size, seed=seed), epochs=epochs, lr=lr,
                weight_decay=weight_decay, max_shift=max_shift, seed=seed, progress=progress,
                desc=f"train {model}")

    return cached_training(f"{model}-{dataset}", recipe, build, train,
                           cache_dir=cache_dir), data


def get_baseline(**overrides) -> tuple[nn.Module, Splits]:
    """The trained course baseline and the embedded data (trained on first use, then cached).

    Each call builds a fresh model from the cache, so a notebook may modify it freely.
    """
    return get_trained(**{**BASELINE_RECIPE, **overrides})
