"""Structured (channel) pruning: physically remove conv filters to get a smaller dense model.

Introduced in notebook 05. Unstructured zeros need sparse kernels to save time; removing
whole output channels does not. For a conv with weight (C_out, C_in, kh, kw), rank the
filters by their norm ||W[c]||_p (p = 1 or 2), keep the strongest C_out - round(amount *
C_out), and cut every tensor that carries those channels:

    conv      weight[keep], bias[keep]                       (C_out -> k)
    BN        weight, bias, running_mean, running_var [keep]
    next conv weight[:, keep]                                 (C_in -> k)
    or Linear weight[:, cols] after Flatten, cols = the HW inputs of each kept channel

Which filters are weak? When a BatchNorm follows the conv, the filter norm alone says little:
BN divides channel c by its own spread sigma_c = sqrt(var_c + eps), so multiplying W[c] by
any k > 0 leaves the BN output unchanged (sigma_c scales by k too) while ||W[c]|| scales by
k. ``criterion`` chooses the score (shapes (C_out,)):

    "weight"     ||W[c]||_p                               (default; ln_structured's ranking)
    "bn-folded"  ||W[c] * gamma_c / sigma_c||_p            (the weight BN folding would ship)
    "bn-gamma"   |gamma_c|                                 (network slimming, Liu et al. 2017)

Both BN criteria are unchanged by that rescaling. |gamma_c| is the standard deviation of the
BN output of channel c over the statistics BN was normalising with (the running ones in eval).

A removed channel is not quite silent: its output is the constant a_c = act(BN(bias_c))
(0 before BN, BN's shift after it). Its contribution to the next layer, sum over the
kernel of W_next[o, c] * a_c, is folded into that layer's bias (or into the running mean of
the BN after it), so the pruned model computes exactly what the masked model computes
(``torch.nn.utils.prune.ln_structured`` on the conv weights) when the next conv has no
padding; with padding the borders differ slightly.

Works on models whose forward runs their leaf modules in registration order (checked on an
example input), such as every ``SmallCNN`` in ``qlib.models``.

>>> channel_mask(torch.tensor([[[[1.0]]], [[[-3.0]]], [[[2.0]]]]), 1 / 3)
tensor([False,  True,  True])
>>> bn = nn.BatchNorm2d(3).eval()
>>> with torch.no_grad():
...     _ = bn.weight.copy_(torch.tensor([1.0, 0.1, 2.0])), bn.running_var.fill_(4.0)
>>> channel_scores(torch.tensor([[[[1.0]]], [[[-3.0]]], [[[2.0]]]]), bn, criterion="bn-folded")
tensor([0.5000, 0.1500, 2.0000])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._util import check_sparsity
from .masks import baked_copy

__all__ = ["CRITERIA", "channel_norms", "channel_scores", "channel_mask", "prune_channels"]

CRITERIA = ("weight", "bn-folded", "bn-gamma")

# Modules that may sit between a conv and the next weight layer, each per channel.
_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid)
_CONSTANT_KEEPING = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
                     nn.Dropout, nn.Identity, nn.Flatten)  # a constant map stays constant
_PASS = (nn.BatchNorm2d, *_ELEMENTWISE, *_CONSTANT_KEEPING)


def channel_norms(weight: Tensor, norm: int = 1) -> Tensor:
    """Norm of each output channel: ||W[c]||_p over all other dims, shape (C_out,).

    Introduced in notebook 05. ``norm`` is 1 (sum of |w|) or 2 (Euclidean).

    >>> channel_norms(torch.tensor([[3.0, -4.0], [1.0, 0.0]]), 2)
    tensor([5., 1.])
    """
    if norm not in (1, 2):
        raise ValueError(f"norm must be 1 (L1) or 2 (L2), got {norm!r}")
    if not isinstance(weight, Tensor) or weight.ndim < 2:
        raise ValueError("channel_norms needs a weight with at least 2 dims (C_out, ...)")
    return torch.linalg.vector_norm(weight.detach().flatten(1), ord=norm, dim=1)


def channel_mask(weight: Tensor, amount: float, norm: int = 1) -> Tensor:
    """Keep-mask over output channels (C_out,): False on the round(amount * C_out) weakest.

    Introduced in notebook 05. The channels ``torch.nn.utils.prune.ln_structured(amount,
    n=norm, dim=0)`` keeps. ``amount`` in [0, 1].
    """
    return _keep_strongest(channel_norms(weight, norm), amount)


def _keep_strongest(scores: Tensor, amount: float) -> Tensor:
    """True on the C - round(amount * C) largest scores (C,)."""
    amount = check_sparsity(amount, "amount")
    keep = scores.numel() - round(amount * scores.numel())
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask[torch.topk(scores, keep).indices] = True
    return mask


def _check_criterion(criterion: object) -> str:
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {', '.join(map(repr, CRITERIA))}, "
                         f"got {criterion!r}")
    return criterion  # type: ignore[return-value]


def channel_scores(weight: Tensor, bn: nn.BatchNorm2d | None = None, *,
                   criterion: str = "weight", norm: int = 1) -> Tensor:
    """Score of each output channel of a conv (C_out,): the larger, the more it is kept.

    Introduced in notebook 05. ``weight`` (C_out, C_in, kh, kw); ``bn`` the BatchNorm2d
    right after the conv (needed by the "bn-*" criteria). ``"weight"``: ||W[c]||_p;
    ``"bn-folded"``: ||W[c]||_p * |gamma_c| / sqrt(var_c + eps), the norm of the folded
    filter; ``"bn-gamma"``: |gamma_c|. Example in the module docstring.
    """
    criterion = _check_criterion(criterion)
    norms = channel_norms(weight, norm)
    if criterion == "weight":
        return norms
    if not isinstance(bn, nn.BatchNorm2d) or bn.num_features != norms.numel():
        raise ValueError(f"criterion {criterion!r} needs the BatchNorm2d that follows the "
                         f"conv, with {norms.numel()} features; got "
                         f"{type(bn).__name__ if bn is not None else None}; use "
                         "criterion='weight' for a conv without one")
    gamma = bn.weight.detach().abs() if bn.affine else torch.ones_like(norms)
    if criterion == "bn-gamma":
        if not bn.affine:
            raise ValueError("criterion 'bn-gamma' needs an affine BatchNorm2d (with gamma); "
                             "use 'bn-folded' or 'weight'")
        return gamma
    if bn.running_var is None:
        raise ValueError("criterion 'bn-folded' needs a BatchNorm2d with running statistics")
    return norms * gamma / torch.sqrt(bn.running_var + bn.eps)


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if not list(m.children())]


def _check_chain(model: nn.Module, leaves: list, x: Tensor) -> None:
    """The model must compute what its leaves compute one after another."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            chained = nn.Sequential(*[m for _, m in leaves])(x)
            same = torch.allclose(model(x), chained, atol=1e-6)
    except RuntimeError:  # shapes do not line up one after another
        same = False
    model.train(was_training)
    if not same:
        raise ValueError(f"{type(model).__name__} does not run its layers one after another "
                         "(it has branches or a custom forward); channel pruning supports "
                         "sequential models such as qlib.models.SmallCNN")


def _plan(leaves: list) -> dict[int, int]:
    """conv index -> index of the next Conv2d / Linear, for convs followed only by _PASS."""
    plan = {}
    for i, (_, m) in enumerate(leaves):
        if not isinstance(m, nn.Conv2d) or m.groups != 1:
            continue
        for j in range(i + 1, len(leaves)):
            nxt = leaves[j][1]
            if isinstance(nxt, (nn.Conv2d, nn.Linear)):
                ok = (isinstance(nxt, nn.Linear) and nxt.in_features % m.out_channels == 0
                      ) or (isinstance(nxt, nn.Conv2d) and nxt.groups == 1)
                if ok:
                    plan[i] = j
                break
            if not isinstance(nxt, _PASS):
                break
    return plan


@torch.no_grad()
def _constant(conv: nn.Conv2d, between: list[nn.Module]) -> Tensor:
    """a_c: what each channel outputs when its filter is zero, after BN and activations."""
    v = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(conv.out_channels)
    for m in between:
        if isinstance(m, nn.BatchNorm2d):
            v = (v - m.running_mean) / torch.sqrt(m.running_var + m.eps)
            v = v * m.weight + m.bias if m.affine else v
        elif isinstance(m, _ELEMENTWISE):
            v = m(v)
    return v


def _input_weights(nxt: nn.Module, channels: int) -> Tensor:
    """The next layer's weight grouped by input channel: (out, channels, positions)."""
    return nxt.weight.detach().reshape(nxt.weight.shape[0], channels, -1)


@torch.no_grad()
def _fold(nxt: nn.Module, after: nn.Module | None, delta: Tensor) -> None:
    """Add ``delta`` (out,) to the next layer's output: its bias, the BN after it, or a new bias."""
    if nxt.bias is not None:
        nxt.bias += delta
    elif isinstance(after, nn.BatchNorm2d):
        after.running_mean -= delta  # BN(z + d) with mean mu equals BN(z) with mean mu - d
    else:
        nxt.bias = nn.Parameter(delta.clone())


def prune_channels(model: nn.Module, amount: float | dict[str, float], *, norm: int = 1,
                   criterion: str = "weight", example_input: Tensor | None = None) -> nn.Module:
    """A new, smaller dense model with the weakest output channels of each conv removed.

    Introduced in notebook 05. ``amount`` is the fraction of channels to remove from every
    conv that feeds another conv or a Linear (the last weight layer is never cut), or a
    dict ``{conv name: amount}``. Filters are ranked on the original weights by
    :func:`channel_scores` with ``criterion`` (``"weight"``: their L1 (``norm=1``) or L2
    norm; ``"bn-folded"``, ``"bn-gamma"``: see the module docstring; these need a
    BatchNorm2d right after every conv that is cut). ``model`` is not changed.
    ``example_input`` (N, C, H, W) checks that the model is sequential; a ``SmallCNN``
    supplies its own from its config.

    >>> from qlib.models import course_model
    >>> small = prune_channels(course_model(), 0.5)
    >>> small.features[0].out_channels, small.features[4].out_channels
    (8, 16)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    criterion = _check_criterion(criterion)
    new = baked_copy(model)
    leaves = _leaves(new)
    plan = _plan(leaves)
    if not plan:
        raise ValueError(f"{type(model).__name__} has no Conv2d followed by another Conv2d or "
                         "Linear (through BN / activations / pooling / flatten only); nothing "
                         "to channel-prune")
    if example_input is None:
        cfg = getattr(model, "config", None)
        if not (isinstance(cfg, dict) and {"in_channels", "image_size"} <= set(cfg)):
            raise ValueError("pass example_input (N, C, H, W) so the model can be checked")
        example_input = torch.randn(2, cfg["in_channels"], cfg["image_size"],
                                    cfg["image_size"], generator=torch.Generator().manual_seed(0))
    _check_chain(new, leaves, example_input)

    names = {leaves[i][0]: i for i in plan}
    if isinstance(amount, dict):
        unknown = set(amount) - set(names)
        if unknown:
            raise ValueError(f"cannot channel-prune {sorted(unknown)}; allowed: {list(names)}")
        amounts = {names[n]: a for n, a in amount.items()}
    else:
        amounts = dict.fromkeys(plan, amount)
    # Decide everything on the original weights first, then cut.
    keeps, consts = {}, {}
    for i, a in amounts.items():
        bn = leaves[i + 1][1] if i + 1 < plan[i] else None
        if criterion != "weight" and not isinstance(bn, nn.BatchNorm2d):
            raise ValueError(f"criterion {criterion!r} needs a BatchNorm2d right after "
                             f"{leaves[i][0]!r}, found {type(bn).__name__}; use "
                             "criterion='weight'")
        keeps[i] = _keep_strongest(channel_scores(leaves[i][1].weight, bn,
                                                  criterion=criterion, norm=norm), a)
        if not keeps[i].any():
            raise ValueError(f"amount {a} would remove every channel of {leaves[i][0]!r}; "
                             "use amount < 1")
        consts[i] = _constant(leaves[i][1], [m for _, m in leaves[i + 1:plan[i]]])

    with torch.no_grad():
        for i in sorted(amounts):
            conv, j = leaves[i][1], plan[i]
            keep, nxt = keeps[i], leaves[j][1]
            after = leaves[j + 1][1] if j + 1 < len(leaves) else None
            grouped = _input_weights(nxt, conv.out_channels)  # (out, C, positions)
            _fold(nxt, after, grouped[:, ~keep].sum(-1) @ consts[i][~keep])
            nxt.weight = nn.Parameter(grouped[:, keep].reshape(nxt.weight.shape[0], -1, *(
                nxt.weight.shape[2:] if isinstance(nxt, nn.Conv2d) else ())).contiguous())
            if isinstance(nxt, nn.Conv2d):
                nxt.in_channels = int(keep.sum())
            else:
                nxt.in_features = nxt.weight.shape[1]
            conv.weight = nn.Parameter(conv.weight[keep].contiguous())
            if conv.bias is not None:
                conv.bias = nn.Parameter(conv.bias[keep].contiguous())
            conv.out_channels = int(keep.sum())
            for _, m in leaves[i + 1:j]:
                if isinstance(m, nn.BatchNorm2d):
                    if m.affine:
                        m.weight, m.bias = (nn.Parameter(m.weight[keep].contiguous()),
                                            nn.Parameter(m.bias[keep].contiguous()))
                    m.running_mean = m.running_mean[keep].contiguous()
                    m.running_var = m.running_var[keep].contiguous()
                    m.num_features = int(keep.sum())
    if isinstance(getattr(new, "config", None), dict) and "channels" in new.config:
        # A SmallCNN cut this way is again a SmallCNN: record its new widths.
        new.config["channels"] = tuple(m.out_channels for _, m in leaves
                                       if isinstance(m, nn.Conv2d))
    return new
