"""AWQ, activation-aware weight quantization (Lin et al. 2024): protect the salient inputs.

Introduced in notebook 09. A few input channels j of a Linear carry much larger activations
than the rest; the weights that meet them (column j of W) matter most for the output. AWQ
scales those columns *up* before quantizing, which shrinks their relative rounding error,
and scales the input down by the same factor, so the layer is mathematically unchanged::

    y = W x = (W diag(s)) (diag(s)^-1 x)
    y_hat   = Q(W diag(s)) (diag(s)^-1 x)       W_hat = Q(W diag(s)) diag(s)^-1   (out, in)

The 1/s is folded into the op that produces x (the previous LayerNorm or Linear), so it
costs nothing at run time; here the effective weight W_hat is returned instead. The scale
comes from activation magnitudes only, with one exponent found by grid search::

    s_x   = mean over tokens of |x_j|                                  (in,)
    s     = s_x^alpha, normalised by sqrt(max s * min s)               alpha in [0, 1)
    alpha = argmin over {0, 1/n, ..., (n-1)/n} of mean ||W x - W_hat(alpha) x||^2

on the calibration tokens (n = 20), computed without a pass over them as
tr(D G D^T) / out with D = W - W_hat and G = X^T X / N (in, in). alpha = 0 gives s = 1,
plain round-to-nearest, and is on the grid, so the chosen alpha never does worse on the
calibration set. Optional (off by default) the paper's weight-clipping search: per output
row and input group, clamp the scaled weights to ratio * max|w| for ratio in 1, 0.95, ...,
0.55 and keep the ratio with the smallest error of that group's partial output.

Differences from the paper's code: the error is measured per Linear (the paper measures the
output of the block that shares the input, e.g. q, k and v together: pass their weights
concatenated along dim 0 to share one s), and ``quantizer`` is any row-wise weight
quantizer (the course passes round-to-nearest per group).

>>> x = torch.tensor([[4.0, 1.0], [-4.0, 1.0]])
>>> awq_scales(x, 0.5)
tensor([1.4142, 0.7071])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["AWQResult", "awq_scales", "awq_apply", "awq_quantize"]

#: A weight quantizer: (out, in) float weight -> its quantized-dequantized version.
Quantizer = Callable[[Tensor], Tensor]


class AWQResult(NamedTuple):
    """The chosen scaling and the layer it gives."""

    weight: Tensor        # (out, in) effective weight Q(W diag(s)) diag(s)^-1, float32
    scales: Tensor        # (in,) s: multiply W's columns by s, divide the input by s
    alpha: float          # the chosen exponent
    errors: Tensor        # (n_grid,) calibration output MSE for alpha = k / n_grid
    clip: Tensor | None   # (out, in // clip_group_size) max |w| kept after clipping, or None


def _check_layer(w: Tensor, x: Tensor) -> None:
    if not isinstance(w, Tensor) or w.ndim != 2:
        raise ValueError("w must be a 2-d (out, in) weight")
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != w.shape[1] or not len(x):
        raise ValueError(f"x must be a non-empty (tokens, {w.shape[1]}) tensor of calibration "
                         f"inputs, got {tuple(x.shape) if isinstance(x, Tensor) else x!r}")
    for name, t in (("w", w), ("x", x)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} holds NaN or Inf")


def awq_scales(x: Tensor, alpha: float) -> Tensor:
    """s = s_x^alpha / sqrt(max * min) with s_x = mean |x_j| over the tokens of x (N, in).

    s_x is clamped at 1e-4 first (a dead input would get s = 0). alpha = 0 gives all ones.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
    s = x.detach().float().abs().mean(0).clamp(min=1e-4).pow(alpha)     # (in,)
    return s / (s.max() * s.min()).sqrt()


def awq_apply(w: Tensor, scales: Tensor, quantizer: Quantizer) -> Tensor:
    """W_hat = Q(W diag(s)) diag(s)^-1: quantize the scaled weight, undo the scale.

    >>> awq_apply(torch.tensor([[1.0, 2.0]]), torch.ones(2), torch.round)
    tensor([[1., 2.]])
    """
    s = scales.float()[None, :]                                          # (1, in)
    return quantizer(w.detach().float() * s) / s


def _output_mse(w: Tensor, w_hat: Tensor, gram: Tensor) -> float:
    """mean over tokens and outputs of (x (W - W_hat)^T)^2 = sum((D G) * D) / out, with
    D = W - W_hat (out, in) and G = x^T x / N (in, in): no pass over the tokens."""
    d = (w - w_hat).double()
    return float(((d @ gram) * d).sum()) / w.shape[0]


def _clip_search(ws: Tensor, xs: Tensor, quantizer: Quantizer, group: int, n_grid: int,
                 max_shrink: float) -> Tensor:
    """Per (row, group) clipping threshold of the scaled weight ws (out, in), inputs xs."""
    n_out, n_in = ws.shape
    wg = ws.reshape(n_out, n_in // group, group)                         # (out, G, g)
    xg = xs.reshape(len(xs), n_in // group, group)                       # (N, G, g)
    ref = torch.einsum("ngk,ogk->nog", xg, wg)                           # (N, out, G)
    amax = wg.abs().amax(-1)                                             # (out, G)
    best_err = torch.full_like(amax, float("inf"))
    best = amax.clone()
    for step in range(int(max_shrink * n_grid)):
        limit = amax * (1 - step / n_grid)                               # (out, G)
        clipped = torch.maximum(torch.minimum(wg, limit[..., None]), -limit[..., None])
        q = quantizer(clipped.reshape(n_out, n_in)).reshape(n_out, -1, group)
        err = ((torch.einsum("ngk,ogk->nog", xg, q) - ref) ** 2).mean(0)  # (out, G)
        better = err < best_err
        best_err, best = torch.where(better, err, best_err), torch.where(better, limit, best)
    return best


@torch.no_grad()
def awq_quantize(w: Tensor, x: Tensor, quantizer: Quantizer, *, n_grid: int = 20,
                 clip: bool = False, clip_group_size: int | None = None,
                 max_shrink: float = 0.5, clip_tokens: int = 512) -> AWQResult:
    """Search alpha on calibration inputs x (N, in), quantize w (out, in) with AWQ scales.

    ``quantizer`` maps an (out, in) weight to its quantized-dequantized version, e.g.
    ``lambda v: rtn_quantize(v, 4, group_size=64).weight``. The clipping search
    (``clip=True``) needs ``clip_group_size``, the quantizer's group size along ``in``
    (``in`` for per channel), and uses ``clip_tokens`` evenly spaced tokens. Deterministic.
    Below, input 0 is 100x larger: AWQ keeps its weight accurate and lets the other go.

    >>> x = torch.tensor([[10.0, 0.1], [-10.0, 0.1]]); w = torch.tensor([[0.3, 0.3]])
    >>> r = awq_quantize(w, x, lambda v: torch.round(v * 4) / 4, n_grid=4)
    >>> r.alpha, r.weight
    (0.75, tensor([[0.3112, 0.0000]]))
    """
    _check_layer(w, x)
    if isinstance(n_grid, bool) or not isinstance(n_grid, int) or n_grid < 1:
        raise ValueError(f"n_grid must be a positive int (20 in the paper), got {n_grid!r}")
    w, x = w.detach().float(), x.detach().float()
    gram = x.double().T @ x.double() / len(x)                           # (in, in)
    errors = torch.zeros(n_grid, dtype=torch.float64)
    for k in range(n_grid):                      # alpha = 0, 1/n, ..., (n-1)/n
        errors[k] = _output_mse(w, awq_apply(w, awq_scales(x, k / n_grid), quantizer), gram)
    best = int(torch.argmin(errors))             # first minimum: ties keep the smaller alpha
    alpha = best / n_grid
    s = awq_scales(x, alpha)
    if not clip:
        return AWQResult(awq_apply(w, s, quantizer), s, alpha, errors, None)
    group = w.shape[1] if clip_group_size is None else clip_group_size
    if clip_group_size is None or w.shape[1] % group:
        raise ValueError(f"clip=True needs clip_group_size, a divisor of in_features="
                         f"{w.shape[1]} (the quantizer's group size), got {clip_group_size!r}")
    ws, xs = w * s[None, :], x / s[None, :]                             # scaled layer
    xs = xs[torch.linspace(0, len(xs) - 1, min(clip_tokens, len(xs))).long()]
    limit = _clip_search(ws, xs, quantizer, group, n_grid, max_shrink)  # (out, G)
    wg = ws.reshape(w.shape[0], -1, group)
    clipped = torch.maximum(torch.minimum(wg, limit[..., None]), -limit[..., None])
    w_hat = quantizer(clipped.reshape(w.shape)) / s[None, :]
    return AWQResult(w_hat, s, alpha, errors, limit)
