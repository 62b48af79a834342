"""Batch-norm folding: a conv followed by an eval-mode BatchNorm becomes one conv.

Introduced in notebook 02. In eval mode a BatchNorm is a fixed affine map per channel c,
``y_c = gamma_c * (x_c - mean_c) / sqrt(var_c + eps) + beta_c``, so when x is a conv's
output it merges into that conv. With s = gamma / sqrt(running_var + eps) (C_out,)::

    W' = W * s[:, None, ...]          (C_out, C_in / groups, k...)
    b' = (b - running_mean) * s + beta

(gamma = 1, beta = 0 for a BatchNorm without affine parameters; b = 0 for a bias-free
conv). Depthwise and grouped convs fold the same way: axis 0 is the output channel.

Which pairs fold is read from the model's dataflow, not from where its modules are
registered: :func:`foldable_pairs` traces ``forward`` with ``torch.fx.symbolic_trace`` and
keeps every ``Conv1d -> BatchNorm1d`` / ``Conv2d -> BatchNorm2d`` edge where the conv's
output feeds only that BatchNorm (a ResNet block's ``self.bn1(self.conv1(x))`` as much as
an ``nn.Sequential``). A model that fx cannot trace (Python control flow on tensor values)
falls back to adjacent pairs inside ``nn.Sequential`` containers. Every BatchNorm left
unfolded (after an add, without running statistics, untraceable model ...) is named in
one warning, with the reason.

>>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).eval()
>>> foldable_pairs(net)
[('0', '1')]
>>> [type(m).__name__ for m in fold_batchnorm(net)]
['Conv2d', 'Identity']
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import Tensor, fx, nn

from .._util import check_module, set_submodule

__all__ = ["fold_batchnorm", "fold_conv_bn", "foldable_pairs", "batchnorm_layers",
           "FOLDABLE"]

#: Conv type -> the BatchNorm type that can fold into it (exact conv types: a subclass may
#: compute something else with its weight).
FOLDABLE: dict[type[nn.Module], type[nn.Module]] = {nn.Conv1d: nn.BatchNorm1d,
                                                    nn.Conv2d: nn.BatchNorm2d}
_ALL_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def batchnorm_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The batch-norm layers (1d / 2d / 3d / sync) of ``model`` by name.

    >>> list(batchnorm_layers(nn.Sequential(nn.Conv1d(1, 2, 3), nn.BatchNorm1d(2))))
    ['1']
    """
    return {n: m for n, m in model.named_modules() if isinstance(m, _ALL_BN)}


def _why_not(conv: nn.Module, bn: nn.Module) -> str | None:
    """None when ``bn`` can fold into ``conv``; otherwise the reason, in words."""
    want = FOLDABLE.get(type(conv))
    if want is None:
        return (f"its input comes from a {type(conv).__name__}; only "
                f"{', '.join(t.__name__ for t in FOLDABLE)} fold")
    if not isinstance(bn, want):
        return f"a {type(conv).__name__} folds only into a {want.__name__}"
    if bn.running_mean is None or bn.running_var is None:
        return ("it has no running statistics (track_running_stats=False): it always "
                "normalizes with the batch's own statistics")
    return None


@torch.no_grad()
def fold_conv_bn(conv: nn.Module, bn: nn.Module) -> None:
    """Fold ``bn`` (eval semantics: running statistics) into ``conv`` in place.

    ``conv`` gets W' and b' of the module formula (it gains a bias if it had none); the
    caller replaces ``bn`` by ``nn.Identity``. ValueError saying why when the pair cannot
    fold (types, no running statistics, channel counts that differ). Works on a pruned
    conv (its ``weight_orig`` is scaled too: zeros stay zeros).

    >>> conv, bn = nn.Conv2d(1, 1, 1, bias=False), nn.BatchNorm2d(1)
    >>> _ = nn.init.ones_(conv.weight); _ = bn.running_mean.fill_(1.0)
    >>> _ = bn.running_var.fill_(4.0)  # s = 1 / sqrt(4): W' = 0.5, b' = (0 - 1) * 0.5
    >>> fold_conv_bn(conv, bn); round(conv.weight.item(), 4), round(conv.bias.item(), 4)
    (0.5, -0.5)
    """
    reason = _why_not(conv, bn)
    if reason is None and bn.num_features != conv.out_channels:
        reason = (f"the BatchNorm has {bn.num_features} features but the conv "
                  f"{conv.out_channels} output channels")
    if reason is not None:
        raise ValueError(f"cannot fold {type(bn).__name__} into {type(conv).__name__}: "
                         f"{reason}")
    s = torch.rsqrt(bn.running_var.double() + bn.eps)  # (C_out,)
    if bn.weight is not None:
        s = s * bn.weight.double()
    b = conv.bias.double() if conv.bias is not None else torch.zeros_like(s)
    new_bias = (b - bn.running_mean.double()) * s
    if bn.bias is not None:
        new_bias = new_bias + bn.bias.double()
    shape = (-1,) + (1,) * (conv.weight.dim() - 1)
    for name in ("weight_orig", "weight"):  # weight_orig: a pruning mask is applied
        w = getattr(conv, name, None)
        if isinstance(w, Tensor):
            w.copy_((w.double() * s.view(shape)).to(w.dtype))
    dtype = conv.weight.dtype
    conv.bias = nn.Parameter(new_bias.to(dtype=dtype, device=conv.weight.device))


def _aliases(model: nn.Module) -> dict[int, int]:
    """id(module) -> how many names it is registered under."""
    counts: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        counts[id(m)] = counts.get(id(m), 0) + 1
    return counts


def _describe(node: object) -> str:
    """What an fx node computes, in words ("the result of add()")."""
    if not isinstance(node, fx.Node):
        return f"the constant {node!r}"
    if node.op == "placeholder":
        return f"the model's input {node.target!r}"
    if node.op == "call_module":
        return f"the output of {node.target!r}"
    name = getattr(node.target, "__name__", str(node.target))
    dot = "." if node.op == "call_method" else ""
    return f"the result of {dot}{name}()"


def foldable_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(conv name, batch-norm name)`` of every pair :func:`fold_batchnorm` folds, found
    by tracing ``model`` with ``torch.fx.symbolic_trace`` (its errors propagate).

    A pair is an fx edge conv -> BN where the conv's output has no other user, the BN
    has no other input, each module is called once and registered under one name, and
    :data:`FOLDABLE` matches their types (see the module docstring for the shapes).
    """
    check_module(model, "foldable_pairs")
    return _traced_pairs(model)[0]


def _traced_pairs(model: nn.Module) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """:func:`foldable_pairs` and, for every other BatchNorm it met, why it does not fold."""
    graph = fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    aliases = _aliases(model)
    pairs, reasons = [], {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], _ALL_BN):
            continue
        bn_name, bn = node.target, modules[node.target]
        src = node.args[0] if node.args else None
        if calls[bn_name] > 1 or aliases[id(bn)] > 1:
            reasons[bn_name] = "it is shared (called or registered more than once)"
        elif (len(node.args) != 1 or node.kwargs or not isinstance(src, fx.Node)
              or src.op != "call_module"):
            reasons[bn_name] = f"its input is {_describe(src)}, not a conv's output"
        elif len(src.users) > 1 or calls[src.target] > 1:
            reasons[bn_name] = (f"the output of {src.target!r} is also used elsewhere, "
                                "which must see it unnormalized")
        elif (why := _why_not(modules[src.target], bn)) is not None:
            reasons[bn_name] = why
        else:
            pairs.append((src.target, bn_name))
    return pairs, reasons


def _sequential_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Adjacent (conv, BN) pairs inside each ``nn.Sequential``: the fallback walk."""
    pairs = []
    for prefix, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if (type(conv) in FOLDABLE and isinstance(bn, _ALL_BN)
                    and _why_not(conv, bn) is None):
                pairs.append((f"{prefix}.{a}" if prefix else a,
                              f"{prefix}.{b}" if prefix else b))
    return pairs


def fold_batchnorm(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Fold every BatchNorm that directly follows a conv into it; a copy unless ``inplace``.

    Introduced in notebook 02. Pairs come from :func:`foldable_pairs` (fx dataflow), or,
    when fx cannot trace ``model``, from adjacent pairs in ``nn.Sequential`` containers.
    Each folded BatchNorm becomes ``nn.Identity`` at the same name in the original module
    tree (names, types and state-dict keys of everything else stay). Same outputs as
    ``model`` in eval mode (BN uses running statistics there). A ``UserWarning`` names
    every BatchNorm left unfolded and why; ValueError when a conv and its BatchNorm
    disagree on the number of channels.

    >>> from qlib.models import course_model
    >>> sum(isinstance(m, nn.BatchNorm2d) for m in fold_batchnorm(course_model()).modules())
    0
    """
    check_module(model, "fold_batchnorm")
    model = model if inplace else copy.deepcopy(model)
    reasons: dict[str, str] = {}
    try:
        pairs, reasons = _traced_pairs(model)
    except Exception as err:  # noqa: BLE001 - any trace failure: fall back, and say so
        pairs = _sequential_pairs(model)
        fallback = (f"torch.fx could not trace {type(model).__name__} ({type(err).__name__}: "
                    f"{str(err).splitlines()[0] if str(err) else ''}), so only conv -> "
                    "BatchNorm pairs adjacent in an nn.Sequential were folded")
    else:
        fallback = None
    modules = dict(model.named_modules())
    for conv_name, bn_name in pairs:
        try:
            fold_conv_bn(modules[conv_name], modules[bn_name])
        except ValueError as err:
            raise ValueError(f"cannot fold {bn_name!r} into {conv_name!r}: "
                             f"{str(err).partition(': ')[2]}") from None
        set_submodule(model, bn_name, nn.Identity())
    left = batchnorm_layers(model)
    if left:
        default = fallback or "the traced forward never calls it"
        named = "; ".join(f"{n!r}: {reasons.get(n, default)}" for n in left)
        warnings.warn(f"fold_batchnorm left {len(left)} BatchNorm layer(s) unfolded ({named})."
                      " They still normalize at run time: fake quantization then sees "
                      "unfolded weights, and integer export refuses them.", stacklevel=2)
    return model
