"""Int8 activations for transformers: SmoothQuant, per-token scales and LLM.int8().

Introduced in notebook 10. A Linear computes Y = X W^T with X (tokens, in) and W (out, in).
Transformer activations have a few *outlier channels* (columns j of X, up to 100x larger
than the rest, in every token), so one int8 scale per tensor wastes most levels on them.
Three remedies, from the papers' equations:

    W8A8 per-token       one scale per row of X (per token) x one per row of W (channel)
    SmoothQuant          Y = (X diag(s)^-1) (W diag(s))^T exactly, with
    (Xiao et al. 2023)   s_j = max|X_j|^alpha / max|W_:j|^(1 - alpha)
                         moves the difficulty from activations to weights; 1/s folds into
                         the preceding LayerNorm, s into W, so it costs nothing at run time
    LLM.int8()           columns with max|X_j| >= threshold (6.0) stay in float, the rest
    (Dettmers et al. 2022)  runs int8 per-token x per-channel: Y = X_o W_o^T + Q(X_r) Q(W_r)^T

All integer rounding goes through :func:`qlib.quant.fake_quantize` (symmetric, signed).

>>> smooth_scales(torch.tensor([8.0, 1.0]), torch.tensor([[2.0, 1.0]]), alpha=0.5)
tensor([2., 1.])
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._util import inference, run_batch, set_submodule
from .affine import choose_qparams, fake_quantize

__all__ = ["ActStats", "activation_stats", "smooth_scales", "smooth_layernorm_linear",
           "smooth_model", "fake_quantize_activations", "W8A8Linear", "llm_int8_linear",
           "LLMInt8Linear", "quantize_linears_w8a8", "GRANULARITIES"]

#: Activation granularities: dynamic per tensor, dynamic per token, static per tensor.
GRANULARITIES = ("per-tensor", "per-token", "static")


class ActStats(NamedTuple):
    """A Linear's inputs over all calibration tokens."""

    absmax: Tensor   # (in,) max over tokens of |x_j|, per input channel
    max: float       # max |x| over everything
    kurtosis: float  # Pearson's E[(x - mu)^4] / sigma^4 of all values pooled (Gaussian: 3)
    count: int       # number of tokens


def activation_stats(model: nn.Module, layers: dict[str, nn.Linear], batches: Iterable
                     ) -> dict[str, ActStats]:
    """Per-channel max |x|, overall max and kurtosis of each layer's input (forward hooks).

    Introduced in notebook 10. Inputs are flattened to (tokens, in); eval mode, no grad.
    Kurtosis is Pearson's (not excess): 3 for a Gaussian, far above 3 with outliers.
    ``ValueError`` on an empty calibration set, NaN/Inf, or a layer never called.

    >>> lin = nn.Linear(2, 1); x = torch.tensor([[1.0, -4.0]])
    >>> st = activation_stats(lin, {"": lin}, [x]); st[""].absmax, st[""].max
    (tensor([1., 4.]), 4.0)
    """
    if not layers or not all(isinstance(l, nn.Linear) for l in layers.values()):
        raise ValueError("layers must be a non-empty {name: nn.Linear} dict")
    if isinstance(batches, Tensor):
        batches = [batches]
    acc = {n: {"absmax": torch.zeros(l.in_features, dtype=torch.float64), "count": 0,
               "moments": torch.zeros(4, dtype=torch.float64), "n": 0}
           for n, l in layers.items()}

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].detach().reshape(-1, module.in_features).to(torch.float64)  # (N, in)
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"layer {name!r} received NaN or Inf activations")
            a = acc[name]
            a["absmax"] = torch.maximum(a["absmax"], x.abs().amax(0))
            a["moments"] += torch.stack([(x ** p).sum() for p in (1, 2, 3, 4)])
            a["count"] += x.shape[0]
            a["n"] += x.numel()
        return hook

    handles = [l.register_forward_pre_hook(hook_for(n)) for n, l in layers.items()]
    seen = 0
    try:
        with inference(model):
            for batch in batches:
                run_batch(model, batch)
                seen += 1
    finally:
        for h in handles:
            h.remove()
    if seen == 0:
        raise ValueError("the calibration set is empty; pass at least one batch")
    out = {}
    for name, a in acc.items():
        if a["count"] == 0:
            raise ValueError(f"layer {name!r} was never called by the model's forward")
        s1, s2, s3, s4 = (a["moments"] / a["n"]).tolist()  # raw moments E[x^p]
        var = s2 - s1 ** 2
        m4 = s4 - 4 * s1 * s3 + 6 * s1 ** 2 * s2 - 3 * s1 ** 4  # central 4th moment
        kurt = m4 / var ** 2 if var > 0 else math.nan
        out[name] = ActStats(a["absmax"].float(), float(a["absmax"].max()), kurt, a["count"])
    return out


def smooth_scales(act_absmax: Tensor, weight: Tensor | Sequence[Tensor], alpha: float = 0.5,
                  *, eps: float = 1e-5) -> Tensor:
    """SmoothQuant's s_j = max|X_j|^alpha / max|W_:j|^(1 - alpha), per input channel (in,).

    Introduced in notebook 10. ``weight`` is (out, in) or a list of weights that read the
    same input (q, k, v): max|W_:j| is over all their rows. Both maxima are clamped to at
    least ``eps`` (a dead channel gets a finite s). alpha = 1 gives s = max|X_j| (every
    activation channel scaled to max 1); alpha = 0 gives s = 1 / max|W_:j|. After
    smoothing, max|X_j / s_j| = max|W_:j| * s_j = (max|X_j| * max|W_:j|)^(1/2) at alpha 1/2.
    Example: see the module docstring.
    """
    weights = [weight] if isinstance(weight, Tensor) else list(weight)
    if not weights:
        raise ValueError("weight must be a tensor (out, in) or a non-empty list of them")
    if act_absmax.ndim != 1:
        raise ValueError(f"act_absmax must be 1-d (in,), got shape {tuple(act_absmax.shape)}")
    for w in weights:
        if w.ndim != 2 or w.shape[1] != act_absmax.numel():
            raise ValueError(f"each weight must be (out, in={act_absmax.numel()}), got "
                             f"{tuple(w.shape)}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha (the migration strength) must be in [0, 1], got {alpha!r}")
    if not bool(torch.isfinite(act_absmax).all()) or bool((act_absmax < 0).any()):
        raise ValueError("act_absmax must hold finite values >= 0 (maxima of |x|)")
    w_absmax = torch.cat([w.detach().abs() for w in weights]).amax(0)  # (in,)
    a = act_absmax.detach().float().clamp(min=eps)
    w_max = w_absmax.float().clamp(min=eps)
    return (a ** alpha / w_max ** (1 - alpha)).clamp(min=eps)


@torch.no_grad()
def smooth_layernorm_linear(ln: nn.LayerNorm, linears: Sequence[nn.Linear], act_absmax: Tensor,
                            alpha: float = 0.5) -> Tensor:
    """Fold SmoothQuant's scales into a LayerNorm and the Linears it feeds, in place.

    Introduced in notebook 10. LayerNorm weight and bias are divided by s, the Linears'
    input columns multiplied by s: Linear(LN(x)) is unchanged (up to float rounding), but
    the Linears' inputs now have max |x_j| / s_j per channel. ``act_absmax`` (in,) is the
    calibrated max |input| of the Linears (:func:`activation_stats`). Returns s.

    >>> ln, fc = nn.LayerNorm(4), nn.Linear(4, 2); x = torch.randn(3, 4)
    >>> y = fc(ln(x)); s = smooth_layernorm_linear(ln, [fc], torch.tensor([9., 1, 1, 1]))
    >>> torch.allclose(fc(ln(x)), y, atol=1e-6)
    True
    """
    if not isinstance(ln, nn.LayerNorm) or not ln.elementwise_affine or ln.bias is None:
        raise ValueError("ln must be an nn.LayerNorm with elementwise_affine=True and a bias "
                         "(the scales are folded into its weight and bias)")
    linears = list(linears)
    if not linears or not all(isinstance(l, nn.Linear) for l in linears):
        raise ValueError("linears must be a non-empty list of nn.Linear")
    if tuple(ln.normalized_shape) != (linears[0].in_features,):
        raise ValueError(f"LayerNorm normalizes {tuple(ln.normalized_shape)} but the Linears "
                         f"read {linears[0].in_features} features")
    s = smooth_scales(act_absmax, [l.weight for l in linears], alpha)  # (in,)
    ln.weight.div_(s.to(ln.weight.dtype))
    ln.bias.div_(s.to(ln.bias.dtype))
    for l in linears:
        l.weight.mul_(s.to(l.weight.dtype)[None, :])
    return s


def smooth_model(model: nn.Module, pairs: dict[str, Sequence[str]], batches: Iterable,
                 alpha: float = 0.5) -> dict[str, Tensor]:
    """Calibrate and smooth every {LayerNorm name: [names of the Linears it feeds]} in place.

    Introduced in notebook 10. For the course LM: ``{"blocks.0.ln1": ["blocks.0.attn.qkv"],
    "blocks.0.ln2": ["blocks.0.mlp.fc"], ...}``. Returns {LayerNorm name: s}. One
    calibration pass serves all pairs: smoothing leaves every layer's output unchanged.

    >>> m = nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 2)); x = torch.randn(5, 4); y = m(x)
    >>> s = smooth_model(m, {"0": ["1"]}, [x]); torch.allclose(m(x), y, atol=1e-6)
    True
    """
    modules = dict(model.named_modules())
    if not pairs or not all(pairs.values()):
        raise ValueError("pairs must map each LayerNorm name to a non-empty list of the "
                         "names of the Linears it feeds")
    missing = [n for ln, ls in pairs.items() for n in (ln, *ls) if n not in modules]
    if missing:
        raise ValueError(f"pairs name modules the model does not have: {missing}")
    stats = activation_stats(model, {ls[0]: modules[ls[0]] for ls in pairs.values()}, batches)
    return {ln: smooth_layernorm_linear(modules[ln], [modules[n] for n in ls],
                                        stats[ls[0]].absmax, alpha)
            for ln, ls in pairs.items()}


def _symmetric_fq(x: Tensor, absmax: Tensor, bits: int, axis: int | None) -> Tensor:
    scale, zp = choose_qparams(-absmax, absmax, bits, symmetric=True)
    return fake_quantize(x, scale, zp, bits, axis=axis)


def fake_quantize_activations(x: Tensor, granularity: str = "per-token", bits: int = 8, *,
                              absmax: float | Tensor | None = None) -> Tensor:
    """Symmetric fake quantization of activations x (tokens, in), scale from max |x|.

    Introduced in notebook 10. "per-tensor": one dynamic scale; "per-token": one per row;
    "static": one scale from the calibrated ``absmax`` (values beyond it are clipped).
    Scales follow :func:`qlib.quant.choose_qparams`: max |x| / ((qmax - qmin) / 2).

    >>> x = torch.tensor([[0.01, 0.02], [1.0, -2.0]])      # a quiet token and a loud one
    >>> fake_quantize_activations(x, "per-token", 4)[0]      # its own scale
    tensor([0.0107, 0.0187])
    >>> fake_quantize_activations(x, "per-tensor", 4)[0]     # the loud token's scale
    tensor([0., 0.])
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if x.ndim != 2:
        raise ValueError(f"x must be 2-d (tokens, in), got shape {tuple(x.shape)}")
    if granularity == "per-token":
        return _symmetric_fq(x, x.detach().abs().amax(1).float(), bits, axis=0)
    if granularity == "static":
        if absmax is None:
            raise ValueError("static activation quantization needs the calibrated absmax")
        return _symmetric_fq(x, torch.as_tensor(absmax, dtype=torch.float32), bits, None)
    return _symmetric_fq(x, x.detach().abs().max().float(), bits, axis=None)


def _weight_fq(weight: Tensor, bits: int) -> Tensor:
    """Per-output-channel symmetric fake quantization of W (out, in)."""
    w = weight.detach().float()
    return _symmetric_fq(w, w.abs().amax(1), bits, axis=0)


class W8A8Linear(nn.Module):
    """A Linear with per-channel int8 weights and int8 activations (fake-quantized).

    Introduced in notebook 10. ``act_granularity`` in :data:`GRANULARITIES`; "static" needs
    ``act_absmax`` (the calibrated max |x|). Weights are quantized once, per output row.

    >>> q = W8A8Linear(nn.Linear(4, 2), "per-token"); q(torch.randn(3, 5, 4)).shape
    torch.Size([3, 5, 2])
    """

    def __init__(self, linear: nn.Linear, act_granularity: str = "per-token", *,
                 act_absmax: float | None = None, bits: int = 8) -> None:
        super().__init__()
        if act_granularity not in GRANULARITIES:
            raise ValueError(f"act_granularity must be one of {GRANULARITIES}, "
                             f"got {act_granularity!r}")
        if act_granularity == "static" and act_absmax is None:
            raise ValueError("act_granularity='static' needs act_absmax from calibration")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.act_granularity, self.bits = act_granularity, bits
        self.register_buffer("weight", _weight_fq(linear.weight, bits))        # (out, in)
        self.register_buffer("bias", None if linear.bias is None
                             else linear.bias.detach().clone())
        self.act_absmax = None if act_absmax is None else float(act_absmax)

    def forward(self, x: Tensor) -> Tensor:
        x2 = x.reshape(-1, self.in_features)                                   # (tokens, in)
        xq = fake_quantize_activations(x2, self.act_granularity, self.bits,
                                       absmax=self.act_absmax)
        return F.linear(xq, self.weight, self.bias).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, w{self.bits}a{self.bits}, "
                f"{self.act_granularity}")


def llm_int8_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, *,
                    threshold: float = 6.0, bits: int = 8) -> Tensor:
    """LLM.int8(): Y = X_o W_o^T (float) + Q_token(X_r) Q_channel(W)_r^T + b, x (..., in).

    Introduced in notebook 10. Outlier columns o are those with max |x_j| >= ``threshold``
    in this input; their products use the float weights. The int8 weight scales are per
    output row of the whole W (fixed at load time, as in bitsandbytes). threshold=inf
    is plain W8A8 per-token.

    >>> x = torch.tensor([[0.5, 0.3, 20.0]]); w = torch.ones(1, 3)   # exact: 20.8
    >>> llm_int8_linear(x, w), llm_int8_linear(x, w, threshold=float("inf"))
    (tensor([[20.7930]]), tensor([[20.6247]]))
    """
    if weight.ndim != 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x (..., in) and weight (out, in) disagree: {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0 (inf: no outliers), got {threshold}")
    x2 = x.reshape(-1, weight.shape[1])                                        # (tokens, in)
    outlier = x2.detach().abs().amax(0) >= threshold                           # (in,)
    wq = _weight_fq(weight, bits)
    xr = fake_quantize_activations(x2.masked_fill(outlier, 0.0), "per-token", bits)
    y = F.linear(xr, wq, bias)
    if bool(outlier.any()):
        y = y + F.linear(x2 * outlier, weight)                                 # the float part
    return y.reshape(*x.shape[:-1], weight.shape[0])


class LLMInt8Linear(nn.Module):
    """Module form of :func:`llm_int8_linear`; ``outlier_columns`` counts the last call's.

    Introduced in notebook 10.

    >>> q = LLMInt8Linear(nn.Linear(4, 2)); q(torch.randn(5, 4)).shape
    torch.Size([5, 2])
    """

    def __init__(self, linear: nn.Linear, threshold: float = 6.0, bits: int = 8) -> None:
        super().__init__()
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0 (inf: no outliers), got {threshold}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.threshold, self.bits, self.outlier_columns = threshold, bits, 0
        self.register_buffer("weight", linear.weight.detach().clone())
        self.register_buffer("bias", None if linear.bias is None
                             else linear.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        cols = x.detach().reshape(-1, self.in_features).abs().amax(0) >= self.threshold
        self.outlier_columns = int(cols.sum())
        return llm_int8_linear(x, self.weight, self.bias, threshold=self.threshold,
                               bits=self.bits)


def quantize_linears_w8a8(model: nn.Module, act_granularity: str = "per-token", *,
                          layers: Sequence[str] | None = None,
                          exclude: Sequence[str] = ("lm_head",),
                          batches: Iterable | None = None,
                          llm_int8_threshold: float | None = None, bits: int = 8) -> nn.Module:
    """A copy of ``model`` whose Linears are :class:`W8A8Linear` (or :class:`LLMInt8Linear`).

    Introduced in notebook 10. ``layers`` names them (default: every ``nn.Linear`` whose
    name or last name part is not in ``exclude``). "static" calibrates a per-tensor
    max |x| on ``batches``. With ``llm_int8_threshold`` the layers do LLM.int8() instead
    (activations per token). ``model`` itself is not changed.

    >>> q = quantize_linears_w8a8(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))
    >>> [type(m).__name__ for m in q]
    ['W8A8Linear', 'ReLU', 'W8A8Linear']
    """
    if act_granularity not in GRANULARITIES:
        raise ValueError(f"act_granularity must be one of {GRANULARITIES}, "
                         f"got {act_granularity!r}")
    if llm_int8_threshold is not None and act_granularity != "per-token":
        raise ValueError("LLM.int8() quantizes activations per token; use act_granularity="
                         "'per-token' with llm_int8_threshold")
    model = copy.deepcopy(model)
    found = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    names = [n for n in found if n not in exclude and n.rsplit(".", 1)[-1] not in exclude] \
        if layers is None else list(layers)
    unknown = [n for n in names if n not in found]
    if unknown or not names:
        raise ValueError(f"no nn.Linear to quantize (unknown: {unknown}); the model has "
                         f"{list(found)}")
    absmax = {}
    if act_granularity == "static":
        if batches is None:
            raise ValueError("act_granularity='static' needs calibration batches")
        absmax = {n: st.max for n, st in
                  activation_stats(model, {n: found[n] for n in names}, batches).items()}
    for name in names:
        new = (LLMInt8Linear(found[name], llm_int8_threshold, bits) if llm_int8_threshold
               is not None else W8A8Linear(found[name], act_granularity,
                                           act_absmax=absmax.get(name), bits=bits))
        if name == "":  # the model is itself a Linear
            return new
        set_submodule(model, name, new)
    return model
