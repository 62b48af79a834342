"""Low-rank factorization: a weight matrix replaced by two thin ones (truncated SVD).

Introduced in notebook 11. A Linear layer y = W x + b with W of shape (out, in) and
singular value decomposition W = U S Vᵀ keeps only the r largest singular values::

    W ≈ W_r = U_r S_r V_rᵀ = (U_r S_r^½) (S_r^½ V_rᵀ) = B A,   A: (r, in), B: (out, r)

and becomes two Linear layers, x -> A x (no bias) -> B (A x) + b. Parameters drop from
out·in to r·(out + in) (plus the bias), so it pays when r < out·in / (out + in).
Eckart–Young: W_r is the best rank-r approximation in the Frobenius norm, with error
||W - W_r||_F² = sum of the discarded σ_i² (:func:`truncation_error`). The square roots
of S are split evenly between the two factors, so neither is much larger than the other.

Convolutions (weight (C_out, C_in, k_h, k_w)) factor two ways (:func:`factor_conv`):

- ``"channel"``: W as a (C_out, C_in·k_h·k_w) matrix: a k_h×k_w conv to r channels, then
  a 1×1 conv to C_out (Denton et al., 2014; Zhang et al., 2015);
- ``"spatial"``: W as a (C_in·k_h, C_out·k_w) matrix: a k_h×1 conv to r channels, then a
  1×k_w conv to C_out (Jaderberg et al., 2014, scheme 2, with the closed-form SVD of
  Tai et al., 2016).

At full rank both reproduce the original exactly (up to float rounding).

>>> lin = nn.Linear(6, 4)
>>> two = factor_linear(lin, 4)          # full rank: the same function
>>> x = torch.randn(3, 6)
>>> torch.allclose(two(x), lin(x), atol=1e-5), [tuple(m.weight.shape) for m in two]
(True, [(4, 6), (4, 4)])
>>> lowrank_params(128, 800, 16)         # 16 * (800 + 128) + 128 bias
14976
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from .._util import check_int, check_module, check_tensor, set_seed, set_submodule
from ..data import Splits
from ..measure.roofline import pinned_threads
from ..train import TRAIN_THREADS, cached_training, fingerprint, fit

__all__ = ["svd_factors", "truncation_error", "energy_rank", "lowrank_params",
           "rank_for_params", "factor_linear", "factor_conv", "factor_layers", "CONV_MODES",
           "LOWRANK_RECIPE", "finetune_lowrank"]

#: How a convolution is factored (see the module docstring).
CONV_MODES = ("spatial", "channel")


def _check_rank(rank: int, full: int, what: str) -> int:
    rank = check_int(rank, "rank", 1)
    if rank > full:
        raise ValueError(f"rank must be between 1 and {full} (the full rank of {what}), "
                         f"got {rank}")
    return rank


def svd_factors(weight: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """The rank-r factors ``(A, B)`` of a matrix ``weight`` (out, in): ``B @ A`` = W_r.

    ``A = S_r^½ V_rᵀ`` is (r, in) and ``B = U_r S_r^½`` is (out, r). Computed in float64
    and returned as float32. ``rank`` in 1 .. min(out, in).

    >>> a, b = svd_factors(torch.eye(3), 2); tuple(a.shape), tuple(b.shape)
    ((2, 3), (3, 2))
    """
    w = check_tensor(weight, "weight")
    if w.dim() != 2:
        raise ValueError(f"weight must be a matrix (out, in), got shape {tuple(w.shape)}")
    rank = _check_rank(rank, min(w.shape), f"a {tuple(w.shape)} matrix")
    u, s, vh = torch.linalg.svd(w.detach().double(), full_matrices=False)
    root = s[:rank].sqrt()
    return (root[:, None] * vh[:rank]).float(), (u[:, :rank] * root[None, :]).float()


def truncation_error(singular_values: Tensor, rank: int) -> float:
    """Frobenius error of the best rank-r approximation: sqrt(sum_{i>r} σ_i²) (Eckart–Young).

    ``singular_values`` in any order of a 1-d tensor; sorted largest first here.

    >>> truncation_error(torch.tensor([3.0, 2.0, 1.0]), 1)   # sqrt(4 + 1)
    2.23606...
    """
    s = check_tensor(singular_values, "singular_values")
    if s.dim() != 1 or (s < 0).any():
        raise ValueError("singular_values must be a 1-d tensor of values >= 0")
    rank = check_int(rank, "rank", 0)
    s = s.double().sort(descending=True).values
    return float(s[rank:].pow(2).sum().sqrt())


def energy_rank(singular_values: Tensor, fraction: float) -> int:
    """The smallest r whose σ_1..σ_r hold at least ``fraction`` of sum σ_i² ("energy").

    ``fraction`` in (0, 1]. Equivalently: the smallest r whose relative squared truncation
    error ||W - W_r||_F² / ||W||_F² is at most 1 - fraction.

    >>> energy_rank(torch.tensor([3.0, 2.0, 1.0]), 0.9)      # 9/14 < 0.9 <= 13/14
    2
    """
    s = check_tensor(singular_values, "singular_values")
    if s.dim() != 1 or len(s) == 0 or (s < 0).any() or float(s.max()) == 0:
        raise ValueError("singular_values must be a non-empty 1-d tensor of values >= 0, "
                         "not all zero")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    e = s.double().sort(descending=True).values.pow(2)
    kept = e.cumsum(0) / e.sum()
    return int((kept < fraction - 1e-12).sum()) + 1


def lowrank_params(out_features: int, in_features: int, rank: int, bias: bool = True) -> int:
    """Parameters of a factored Linear: ``rank * (out + in)`` plus ``out`` for the bias."""
    for v, n in ((out_features, "out_features"), (in_features, "in_features"), (rank, "rank")):
        check_int(v, n, 1)
    return rank * (out_features + in_features) + (out_features if bias else 0)


def rank_for_params(out_features: int, in_features: int, budget: int, bias: bool = True) -> int:
    """The largest rank whose factored Linear holds at most ``budget`` parameters.

    >>> rank_for_params(128, 800, 14976)
    16
    """
    rank = (budget - (out_features if bias else 0)) // (out_features + in_features)
    if rank < 1:
        raise ValueError(f"a budget of {budget} parameters does not fit even rank 1 "
                         f"({lowrank_params(out_features, in_features, 1, bias)} parameters)")
    return int(min(rank, min(out_features, in_features)))


def factor_linear(linear: nn.Linear, rank: int) -> nn.Sequential:
    """``nn.Sequential(Linear(in, r, bias=False), Linear(r, out))`` computing B A x + b."""
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"factor_linear takes an nn.Linear, got {type(linear).__name__}")
    a, b = svd_factors(linear.weight, rank)
    first = nn.Linear(linear.in_features, a.shape[0], bias=False)
    second = nn.Linear(a.shape[0], linear.out_features, bias=linear.bias is not None)
    with torch.no_grad():
        first.weight.copy_(a)
        second.weight.copy_(b)
        if linear.bias is not None:
            second.bias.copy_(linear.bias)
    return nn.Sequential(first, second)


def _check_conv(conv: nn.Module) -> nn.Conv2d:
    if type(conv) is not nn.Conv2d:
        raise TypeError(f"factor_conv takes an nn.Conv2d, got {type(conv).__name__}")
    if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros" or \
            isinstance(conv.padding, str):
        raise ValueError("factor_conv supports groups=1, dilation 1 and numeric zero padding; "
                         f"got groups={conv.groups}, dilation={conv.dilation}, "
                         f"padding={conv.padding!r}, padding_mode={conv.padding_mode!r}")
    return conv


def factor_conv(conv: nn.Conv2d, rank: int, mode: str = "spatial") -> nn.Sequential:
    """Two convolutions computing (about) what ``conv`` computes: see the module docstring.

    ``mode="spatial"``: Conv2d(C_in, r, (k_h, 1)) then Conv2d(r, C_out, (1, k_w)); the full
    rank is min(C_in·k_h, C_out·k_w). ``mode="channel"``: Conv2d(C_in, r, (k_h, k_w)) then
    Conv2d(r, C_out, 1); the full rank is min(C_out, C_in·k_h·k_w). Stride and padding are
    split between the two (height in the first, width in the second, for "spatial").

    >>> conv = nn.Conv2d(2, 3, 3, padding=1)
    >>> x = torch.randn(1, 2, 5, 5)
    >>> torch.allclose(factor_conv(conv, 6)(x), conv(x), atol=1e-5)
    True
    """
    conv = _check_conv(conv)
    if mode not in CONV_MODES:
        raise ValueError(f"mode must be one of {CONV_MODES}, got {mode!r}")
    w = conv.weight.detach()
    c_out, c_in, kh, kw = w.shape
    (sh, sw), (ph, pw) = conv.stride, conv.padding
    has_bias = conv.bias is not None
    if mode == "spatial":
        mat = w.permute(1, 2, 0, 3).reshape(c_in * kh, c_out * kw)   # rows (i, h), cols (o, w)
        a, b = svd_factors(mat.T, rank)          # mat.T = B A: A (r, in*kh), B (out*kw, r)
        r = a.shape[0]
        first = nn.Conv2d(c_in, r, (kh, 1), stride=(sh, 1), padding=(ph, 0), bias=False)
        second = nn.Conv2d(r, c_out, (1, kw), stride=(1, sw), padding=(0, pw), bias=has_bias)
        wa = a.reshape(r, c_in, kh, 1)
        wb = b.reshape(c_out, kw, r).permute(0, 2, 1).reshape(c_out, r, 1, kw)
    else:
        a, b = svd_factors(w.reshape(c_out, -1), rank)                # A (r, in*k*k), B (out, r)
        r = a.shape[0]
        first = nn.Conv2d(c_in, r, (kh, kw), stride=conv.stride, padding=conv.padding,
                          bias=False)
        second = nn.Conv2d(r, c_out, 1, bias=has_bias)
        wa, wb = a.reshape(r, c_in, kh, kw), b.reshape(c_out, r, 1, 1)
    with torch.no_grad():
        first.weight.copy_(wa)
        second.weight.copy_(wb.contiguous())
        if has_bias:
            second.bias.copy_(conv.bias)
    return nn.Sequential(first, second)


def factor_layers(model: nn.Module, ranks: dict[str, int], *, conv_mode: str = "spatial"
                  ) -> nn.Module:
    """A copy of ``model`` with each named Linear / Conv2d replaced by its rank-r factors.

    ``ranks`` maps a layer name (as in ``model.named_modules()``) to its rank; convolutions
    use ``conv_mode``. ``model`` is not modified. ValueError names the layers that can be
    factored when a name is unknown.
    """
    check_module(model, "factor_layers")
    layers = {n: m for n, m in model.named_modules() if type(m) in (nn.Linear, nn.Conv2d)}
    unknown = sorted(set(ranks) - set(layers))
    if unknown or not ranks:
        raise ValueError(f"ranks must name layers to factor, got {sorted(ranks) or 'none'}; "
                         f"Linear / Conv2d layers: {sorted(layers)}")
    out = copy.deepcopy(model)
    for name, rank in ranks.items():
        layer = out.get_submodule(name)
        new = (factor_linear(layer, rank) if isinstance(layer, nn.Linear)
               else factor_conv(layer, rank, conv_mode))
        set_submodule(out, name, new.train(layer.training))
    return out


#: The fine-tuning after factoring (part of the cache key): short, gentle, the baseline's loop.
LOWRANK_RECIPE = dict(epochs=2, lr=1e-3, batch_size=64, weight_decay=1e-4, max_shift=2)


def finetune_lowrank(baseline: nn.Module, data: Splits, ranks: dict[str, int], *,
                     seed: int = 0, progress: bool = True, **overrides) -> nn.Module:
    """:func:`factor_layers` of ``baseline``, fine-tuned with :func:`qlib.train.fit`, cached.

    :data:`LOWRANK_RECIPE` settings (``overrides`` change any); the cache key holds the
    ranks, the settings, the seed and the baseline's weights. ``baseline`` is not modified.

    >>> fc1 = finetune_lowrank(*qlib.get_baseline(), {"classifier.2": 16})   # doctest: +SKIP
    """
    unknown = set(overrides) - set(LOWRANK_RECIPE)
    if unknown:
        raise ValueError(f"unknown fine-tuning settings {sorted(unknown)}; allowed: "
                         f"{sorted(LOWRANK_RECIPE)}")
    s = {**LOWRANK_RECIPE, **overrides}
    factor_layers(baseline, ranks)  # bad names or ranks fail here, before any training
    recipe = dict(s, ranks=dict(sorted(ranks.items())), dataset=data.name, seed=seed,
                  baseline=fingerprint(baseline))

    def build() -> nn.Module:
        set_seed(seed)
        return factor_layers(baseline, ranks)

    def train(net: nn.Module) -> None:
        with pinned_threads(TRAIN_THREADS):
            fit(net, data.loader("train", s["batch_size"], seed=seed), epochs=s["epochs"],
                lr=s["lr"], weight_decay=s["weight_decay"], max_shift=s["max_shift"],
                seed=seed, progress=progress, desc="fine-tune low rank")

    name = "lowrank-" + "-".join(f"{k.replace('.', '_')}_{v}" for k, v in sorted(ranks.items()))
    return cached_training(f"{name}-{data.name}", recipe, build, train)
