"""Pruning a language model without retraining: Wanda and SparseGPT, layer by layer.

Introduced in notebook 10. Each ``nn.Linear`` (weight W, shape (out, in)) is pruned so
that its output on calibration inputs X (shape (in, N) for N tokens) changes as little as
possible. Forward pre-hooks gather what the methods need, H = X X^T (in, in)::

    magnitude                          score_ij = |W_ij|
    Wanda (Sun et al. 2023)            score_ij = |W_ij| * ||X_j||_2,   ||X_j||_2 = sqrt(H_jj)
                                       keep the largest scores within each output row
    SparseGPT (Frantar & Alistarh 2023)  columns left to right; a pruned weight w_j is removed
                                       with the optimal-brain-surgeon update of the columns
                                       not yet visited:
                                       W[:, j:] -= w_j / [H^-1]_jj * H^-1[j, j:]

(H^-1 of the columns still free shrinks as j moves on; the upper Cholesky factor U of H^-1
holds all of them at once: row j of U is H_{j:}^-1[0, :] / sqrt(H_{j:}^-1[0, 0]).) Wanda
and magnitude only choose a mask; SparseGPT also moves the surviving weights. Both can
produce N:M patterns (n kept in every m consecutive inputs; 2:4 runs on sparse tensor cores).

>>> w = torch.tensor([[1.0, -2.0, 3.0, 0.5]])
>>> wanda_mask(w, torch.tensor([4.0, 1.0, 1.0, 1.0]), 0.5)   # |w| * ||x|| = [4, 2, 3, .5]
tensor([[ True, False,  True, False]])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .._util import check_int, check_sparsity, inference, run_batch, weight_layers
from .masks import nm_mask

__all__ = ["wanda_scores", "wanda_mask", "sparsegpt", "InputStats",
           "collect_input_stats", "prune_linear_layers", "METHODS"]

#: The methods of :func:`prune_linear_layers`.
METHODS = ("magnitude", "wanda", "sparsegpt")


def _check_sparsity(sparsity: float) -> float:
    """A fraction in [0, 1): pruning every weight of a layer would cut the network."""
    if check_sparsity(sparsity) == 1.0:
        raise ValueError("sparsity must be in [0, 1) for LLM pruning (1.0 would remove every "
                         "weight of the layer), got 1.0")
    return float(sparsity)


def _check_nm(n: int, m: int, row: int) -> None:
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n <= m):
        raise ValueError(f"N:M sparsity needs integers 0 < n <= m (n kept of every m), "
                         f"got n={n!r}, m={m!r}")
    if row % m:
        raise ValueError(f"rows have {row} inputs, not a multiple of m={m}; N:M sparsity "
                         "needs the input dimension divisible by m")


def _check_weight(weight: Tensor, act_norm: Tensor | None = None) -> None:
    if not isinstance(weight, Tensor) or weight.ndim != 2 or weight.numel() == 0:
        raise ValueError("weight must be a non-empty 2-d tensor (out, in), got "
                         f"{getattr(weight, 'shape', type(weight).__name__)}")
    if act_norm is not None and (act_norm.ndim != 1 or act_norm.numel() != weight.shape[1]):
        raise ValueError(f"act_norm must be 1-d with in = {weight.shape[1]} entries (one per "
                         f"input channel), got shape {tuple(act_norm.shape)}")


def wanda_scores(weight: Tensor, act_norm: Tensor) -> Tensor:
    """Wanda's importance |W_ij| * ||X_j||_2, shape (out, in), of a Linear's weight.

    Introduced in notebook 10. ``act_norm`` (in,) is the L2 norm of each input channel over
    all calibration tokens (:class:`InputStats`). A small weight on a loud input matters.

    >>> wanda_scores(torch.tensor([[1.0, -1.0]]), torch.tensor([3.0, 0.5]))
    tensor([[3.0000, 0.5000]])
    """
    _check_weight(weight, act_norm)
    return weight.detach().abs() * act_norm.detach().to(weight.dtype)[None, :]


def _row_mask(scores: Tensor, sparsity: float) -> Tensor:
    """Drop the k = round(sparsity * in) smallest scores of each row (ties: lower index)."""
    k = round(_check_sparsity(sparsity) * scores.shape[1])
    order = torch.argsort(scores, dim=1, stable=True)[:, :k]  # (out, k) pruned positions
    return torch.ones_like(scores, dtype=torch.bool).scatter_(1, order, False)


def wanda_mask(weight: Tensor, act_norm: Tensor, sparsity: float) -> Tensor:
    """Keep-mask (out, in) pruning the smallest Wanda scores *within each output row*.

    Introduced in notebook 10. Every row loses round(sparsity * in) weights (the paper's
    per-output comparison group). ``True`` = kept. With all ``act_norm`` equal this is
    magnitude pruning per row. Example: see the module docstring.
    """
    return _row_mask(wanda_scores(weight, act_norm), sparsity)


def sparsegpt(weight: Tensor, hessian: Tensor, sparsity: float | tuple[int, int] = 0.5, *,
              block_size: int = 128, damp: float = 0.01) -> tuple[Tensor, Tensor]:
    """SparseGPT: prune ``weight`` (out, in) and correct the survivors. Returns (new W, mask).

    Introduced in notebook 10. ``hessian`` (in, in) is any positive multiple of X X^T (the
    paper's H = 2 X X^T: the scale cancels). ``sparsity`` is a fraction in [0, 1) or a
    pair (n, m) for N:M. Columns are visited in blocks of ``block_size``: at the start of a
    block the mask is chosen from the OBS saliency w^2 / [H^-1]_jj (= w^2 / U_jj^2 with
    U the upper Cholesky factor of H^-1) over the whole block (N:M: per group of m, at its
    first column), so every block loses the same fraction and exactly
    round(sparsity * numel) weights go in total. ``damp`` adds damp * mean(diag H) to the
    diagonal so that H can be inverted. Computes in float64; returns weight's dtype.

    >>> x = torch.randn(4, 64); w = torch.randn(3, 4)
    >>> new, mask = sparsegpt(w, x @ x.T, 0.5)
    >>> int(mask.sum()), bool((new[~mask] == 0).all())
    (6, True)
    """
    _check_weight(weight)
    out_f, in_f = weight.shape
    if not isinstance(hessian, Tensor) or hessian.shape != (in_f, in_f):
        raise ValueError(f"hessian must be (in, in) = ({in_f}, {in_f}) for a weight of shape "
                         f"{tuple(weight.shape)}, got {tuple(getattr(hessian, 'shape', ()))}")
    if not (bool(torch.isfinite(hessian).all()) and bool(torch.isfinite(weight).all())):
        raise ValueError("weight and hessian must be finite (no NaN or Inf)")
    check_int(block_size, "block_size", 1)
    if not (isinstance(damp, (int, float)) and 0.0 <= damp < float("inf")):
        raise ValueError(f"damp must be a finite number >= 0, got {damp!r}")
    nm = isinstance(sparsity, (tuple, list))
    if nm:
        if len(sparsity) != 2:
            raise ValueError(f"an N:M pattern is a pair (n, m), got {sparsity!r}")
        n, m = sparsity
        _check_nm(n, m, in_f)
        if block_size % m:
            raise ValueError(f"block_size={block_size} must be a multiple of m={m} so that "
                             "no N:M group straddles two blocks")
    else:
        frac = _check_sparsity(sparsity)

    W = weight.detach().to(torch.float64).clone()                # (out, in), updated in place
    H = hessian.detach().to(torch.float64).clone()               # (in, in)
    H = (H + H.T) / 2
    dead = torch.diag(H) <= 0                                    # inputs that were always 0
    H[dead, dead] = 1.0
    H += damp * torch.diag(H).mean() * torch.eye(in_f, dtype=H.dtype)
    try:
        Hinv = torch.cholesky_inverse(torch.linalg.cholesky(H))   # (in, in) = H^-1
        U = torch.linalg.cholesky(Hinv, upper=True)              # H^-1 = U^T U, U upper
    except RuntimeError as err:  # torch.linalg.LinAlgError
        raise ValueError(f"the hessian is not positive definite even with damp={damp}; "
                         "use more calibration tokens or a larger damp") from err

    mask = torch.ones_like(W, dtype=torch.bool)                  # (out, in), True = kept
    pruned = 0                                                   # unstructured: so far
    for b0 in range(0, in_f, block_size):
        b1 = min(b0 + block_size, in_f)
        W1, U1 = W[:, b0:b1].clone(), U[b0:b1, b0:b1]            # (out, B), (B, B)
        d = torch.diag(U1)                                       # (B,)  U_jj = sqrt([H^-1]_jj)
        M1 = torch.ones_like(W1, dtype=torch.bool)
        if not nm:  # adaptive mask: the smallest saliencies of the whole block
            k = round(frac * out_f * b1) - pruned                # exact total after the block
            order = torch.argsort((W1 ** 2 / d[None, :] ** 2).flatten(), stable=True)
            M1.view(-1)[order[:k]] = False
            pruned += k
        Err1 = torch.zeros_like(W1)                              # (out, B) scaled errors
        for i in range(b1 - b0):
            if nm and i % m == 0:  # choose this group's survivors from the updated weights
                M1[:, i:i + m] = nm_mask(W1[:, i:i + m] ** 2 / d[None, i:i + m] ** 2, n, m)
            w = W1[:, i]                                         # (out,)
            q = torch.where(M1[:, i], w, torch.zeros_like(w))
            err = (w - q) / d[i]                                 # (out,)
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]       # OBS update of the block
            W1[:, i] = q                                         # exact zeros where pruned
            Err1[:, i] = err
        W[:, b0:b1] = W1
        W[:, b1:] -= Err1 @ U[b0:b1, b1:]                        # lazy update of later blocks
        mask[:, b0:b1] = M1
    return W.to(weight.dtype), mask


class InputStats(NamedTuple):
    """What a Linear saw on the calibration set (all tokens of all batches)."""

    act_norm: Tensor  # (in,) ||X_j||_2 = sqrt(H_jj)
    hessian: Tensor   # (in, in) H = sum over tokens of x x^T = X X^T (float32)
    count: int        # N, the number of tokens


class _StopForward(Exception):
    """Raised by a hook to end a forward early, once the wanted inputs have been seen."""


def collect_input_stats(model: nn.Module, layers: dict[str, nn.Linear], batches: Iterable,
                        *, stop_early: bool = False) -> dict[str, InputStats]:
    """Run ``batches`` through ``model`` and return each layer's :class:`InputStats`.

    Introduced in notebook 10. A forward pre-hook flattens each input to (B*T, in) and
    adds x^T x; the model runs in eval mode without gradients. ``batches`` yields inputs
    (or (input, target) pairs, or dicts of keyword arguments); a single tensor is one
    batch. Raises ``ValueError`` on an empty calibration set, NaN/Inf activations, or a
    layer that is never called. ``stop_early`` ends each forward as soon as every layer
    has been called (the rest of the model is not needed; only right when each layer runs
    once per forward).

    >>> lin = nn.Linear(3, 2); s = collect_input_stats(lin, {"": lin}, [torch.ones(2, 5, 3)])
    >>> s[""].act_norm, s[""].count
    (tensor([3.1623, 3.1623, 3.1623]), 10)
    """
    if not layers:
        raise ValueError("no layer to collect statistics for; pass {name: nn.Linear}")
    for name, layer in layers.items():
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"layer {name!r} is a {type(layer).__name__}; only nn.Linear "
                             "layers are supported")
    if isinstance(batches, Tensor):
        batches = [batches]
    sums = {n: torch.zeros(l.in_features, l.in_features, dtype=torch.float64)
            for n, l in layers.items()}
    counts = dict.fromkeys(layers, 0)
    called: set[str] = set()  # layers seen in the current batch

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].detach().reshape(-1, module.in_features).to(torch.float64)  # (N, in)
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"layer {name!r} received NaN or Inf activations; the "
                                 "calibration data or the model upstream is broken")
            sums[name] += x.T @ x
            counts[name] += x.shape[0]
            called.add(name)
            if stop_early and len(called) == len(layers):
                raise _StopForward
        return hook

    handles = [l.register_forward_pre_hook(hook_for(n)) for n, l in layers.items()]
    seen = 0
    try:
        with inference(model):
            for batch in batches:
                called.clear()
                try:
                    run_batch(model, batch)
                except _StopForward:
                    pass
                seen += 1
    finally:
        for h in handles:
            h.remove()
    if seen == 0:
        raise ValueError("the calibration set is empty; pass at least one batch")
    never = [n for n, c in counts.items() if c == 0]
    if never:
        raise ValueError(f"layers {never} were never called by the model's forward")
    return {n: InputStats(torch.sqrt(torch.diag(sums[n])).float(), sums[n].float(), counts[n])
            for n in layers}


def _linears(model: nn.Module, layers: Sequence[str] | None, exclude: Sequence[str]
             ) -> dict[str, nn.Linear]:
    found = weight_layers(model, (nn.Linear,))
    if layers is None:
        chosen = {n: m for n, m in found.items()
                  if n not in exclude and n.rsplit(".", 1)[-1] not in exclude}
    else:
        unknown = [n for n in layers if n not in found]
        if unknown:
            raise ValueError(f"no nn.Linear named {unknown}; the model has {list(found)}")
        chosen = {n: found[n] for n in layers}
    if not chosen:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to prune "
                         f"(excluded: {list(exclude)})")
    return chosen


def prune_linear_layers(model: nn.Module, method: str = "wanda", *,
                        sparsity: float | None = None, nm: tuple[int, int] | None = None,
                        batches: Iterable | None = None, layers: Sequence[str] | None = None,
                        exclude: Sequence[str] = ("lm_head",), sequential: bool = True,
                        block_size: int = 128, damp: float = 0.01) -> dict[str, dict]:
    """Prune the model's Linear layers in place with ``method``; return a report per layer.

    Introduced in notebook 10. ``method`` in :data:`METHODS`; ``sparsity`` (default 0.5) or
    ``nm=(n, m)`` (n kept of every m), not both. Magnitude and Wanda compare weights
    within each output row. ``layers`` names the layers (default: every ``nn.Linear``
    whose name or last name part is not in ``exclude``, so a tied ``lm_head`` keeps the
    embedding intact). ``batches`` (required by wanda and sparsegpt) is the calibration set.

    ``sequential=True`` is the papers' way: layers are pruned one at a time in the order
    the forward calls them, and each layer's statistics are gathered with all earlier
    layers already pruned (one pass of ``batches`` per layer, each forward stopped at that
    layer). ``sequential=False`` uses one pass on the dense model for all layers (faster,
    slightly worse). Magnitude pruning ignores the data, so it always takes one pass.

    The report holds ``numel``, ``nonzeros``, ``sparsity`` and, with calibration data,
    ``rel_error`` = ||(W - W') X||^2 / ||W X||^2 on the calibration inputs.

    >>> m = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    >>> r = prune_linear_layers(m, "sparsegpt", nm=(2, 4), batches=[torch.randn(32, 8)])
    >>> [r[name]["sparsity"] for name in r]
    [0.5, 0.5]
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if sparsity is not None and nm is not None:
        raise ValueError("pass either sparsity or nm=(n, m), not both")
    if nm is not None and (not isinstance(nm, (tuple, list)) or len(nm) != 2):
        raise ValueError(f"nm must be a pair (n, m), n kept of every m, got {nm!r}")
    target: float | tuple[int, int] = tuple(nm) if nm is not None else (
        0.5 if sparsity is None else _check_sparsity(sparsity))
    if batches is None and method != "magnitude":
        raise ValueError(f"method {method!r} needs calibration batches; pass batches=...")
    chosen = _linears(model, layers, exclude)
    if isinstance(batches, Tensor):
        batches = [batches]
    if batches is not None:
        batches = list(batches)
        if not batches:
            raise ValueError("the calibration set is empty; pass at least one batch")
        order: list[str] = []  # every call of a chosen layer, in forward order
        handles = [l.register_forward_pre_hook(lambda mod, args, n=n: order.append(n))
                   for n, l in chosen.items()]
        try:
            with inference(model):
                run_batch(model, batches[0])
        finally:
            for h in handles:
                h.remove()
        once = len(order) == len(set(order))   # no layer runs twice: forwards may stop early
        chosen = {n: chosen[n] for n in dict.fromkeys(order)} | chosen  # unseen: stats raise
        sequential = sequential and method != "magnitude"
        stats = None if sequential else collect_input_stats(model, chosen, batches)

    report = {}
    for name, layer in chosen.items():
        st = None
        if batches is not None:
            st = (collect_input_stats(model, {name: layer}, batches, stop_early=once)[name]
                  if sequential else stats[name])
        w = layer.weight.detach()                                 # (out, in)
        if method == "sparsegpt":
            new, mask = sparsegpt(w, st.hessian, target, block_size=block_size, damp=damp)
        else:
            scores = w.abs() if method == "magnitude" else wanda_scores(w, st.act_norm)
            mask = (nm_mask(scores, *target) if isinstance(target, tuple)
                    else _row_mask(scores, target))
            new = w * mask
        row = {"numel": w.numel(), "nonzeros": int(mask.sum()),
               "sparsity": 1.0 - int(mask.sum()) / w.numel()}
        if st is not None:  # relative output error on the calibration inputs
            H, delta = st.hessian.double(), (w - new).double()
            den = float(((w.double() @ H) * w.double()).sum())
            row["rel_error"] = float(((delta @ H) * delta).sum()) / max(den, 1e-30)
        with torch.no_grad():
            layer.weight.copy_(new)
        report[name] = row
    return report
