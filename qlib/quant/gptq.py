"""GPTQ (Frantar et al. 2022): quantize a Linear's weight one column at a time, fixing errors.

Introduced in notebook 09. A Linear computes y = W x with W (out, in). On calibration
inputs X (in, N tokens) the layer-wise objective is ||W X - W_hat X||^2, whose Hessian with
respect to each row of W is the same matrix::

    H = 2 X X^T            (in, in)   here averaged over tokens: 2 X X^T / N (scale-free)

Quantizing column j of W moves the output by (w_j - q_j) x_j; the Optimal Brain Surgeon
step spreads that error over the columns not yet quantized so that the loss stays minimal::

    err_j      = (w_j - q_j) / [H^-1]_jj                         (out,)
    W[:, j+1:] -= err_j  [H^-1]_{j, j+1:}                        (out, in - j - 1)

where [H^-1] is read from the *upper Cholesky factor* U of H^-1 (H^-1 = U^T U): row j of U
is row j of the inverse Hessian of the still-free columns, so one factorization serves
every step. Practical parts of the paper, all here:

* dampening: H += percdamp * mean(diag H) * I (percdamp = 0.01) keeps the inverse stable;
  a dead input (diag H = 0: that input is always 0) gets H_jj = 1 and weight 0;
* lazy batches: the updates inside a block of B = 128 columns are applied at once to the
  columns after it, W[:, i2:] -= Err (out, B) @ U[i1:i2, i2:] (same result, fewer passes);
* groups: per-group qparams (min-max, :func:`~qlib.quant.affine.choose_qparams`) are
  computed when a group's first column is reached, from the current, error-updated weights;
* act-order: columns are processed by decreasing diag H (the most active inputs first,
  while many columns remain to absorb their error); the order is undone at the end. Groups
  stay the contiguous groups of the original column order (qparams computed when the
  group's first column in the new order comes up), so the result is stored like RTN.

With H = I every update is 0 and GPTQ is exactly round-to-nearest.

>>> _ = torch.manual_seed(0); w, x = torch.randn(4, 8), torch.randn(64, 8)
>>> r = gptq_quantize(w, x, bits=4, group_size=4)
>>> r.codes.shape, r.scale.shape, bool(((w - r.weight).abs() < 1).all())
(torch.Size([4, 8]), torch.Size([4, 2]), True)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .affine import choose_qparams, fake_quantize, minmax, quantize

__all__ = ["GPTQResult", "gptq_hessian", "gptq_column_update", "gptq_quantize"]


class GPTQResult(NamedTuple):
    """The quantized layer, in the original column order."""

    weight: Tensor       # (out, in) float32 = dequantize(codes, scale, zero_point)
    codes: Tensor        # (out, in) int32 in qrange(bits)
    scale: Tensor        # (out,) per channel, or (out, in // group_size) per group
    zero_point: Tensor   # int64, scale's shape
    perm: Tensor | None  # (in,) the act-order processing order, None without act_order


def _check_int(v: object, name: str, lo: int, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        allowed = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be an int in {allowed}, got {v!r}")
    return v


def gptq_hessian(x: Tensor) -> Tensor:
    """H = 2 X X^T / N (float64, (in, in)) from calibration inputs x of shape (N, in).

    >>> gptq_hessian(torch.tensor([[1.0, 0.0], [1.0, 2.0]]))
    tensor([[2., 2.],
            [2., 4.]], dtype=torch.float64)
    """
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[0] == 0:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a non-empty (tokens, in) tensor, got {got}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x (calibration inputs) holds NaN or Inf")
    xd = x.detach().double()
    return 2.0 * (xd.T @ xd) / x.shape[0]


def gptq_column_update(w: Tensor, q: Tensor, u_row: Tensor) -> tuple[Tensor, Tensor]:
    """One GPTQ step: quantize the first of the columns ``w`` and push its error onto the rest.

    ``w`` (out, m) holds columns j, j+1, ... of the current weight, ``q`` (out,) is column j
    quantized, ``u_row`` (m,) is ``U[j, j:]``, row j of the upper Cholesky factor of H^-1 from
    the diagonal on. Returns ``(w_new, err)``::

        err   = (w[:, 0] - q) / u_row[0]                     (out,)
        w_new = w - err[:, None] * u_row[None, :]            (out, m); w_new[:, 0] == q

    :func:`gptq_quantize` calls it once per column, inside a lazy block.

    >>> w = torch.tensor([[1.0, 2.0]]); q = torch.tensor([0.5])
    >>> gptq_column_update(w, q, torch.tensor([2.0, 1.0]))
    (tensor([[0.5000, 1.7500]]), tensor([0.2500]))
    """
    if w.ndim != 2 or q.shape != w.shape[:1] or u_row.shape != w.shape[1:]:
        raise ValueError(f"need w (out, m), q (out,) and u_row (m,); got {tuple(w.shape)}, "
                         f"{tuple(q.shape)} and {tuple(u_row.shape)}")
    err = (w[:, 0] - q.to(w.dtype)) / u_row[0]                           # (out,)
    return w - err[:, None] * u_row[None, :].to(w.dtype), err


@torch.no_grad()
def gptq_quantize(w: Tensor, x: Tensor | None = None, *, bits: int,
                  group_size: int | None = None, symmetric: bool = False,
                  hessian: Tensor | None = None, percdamp: float = 0.01,
                  block_size: int = 128, act_order: bool = False) -> GPTQResult:
    """Quantize ``w`` (out, in) with GPTQ on calibration inputs ``x`` (N, in) or a ``hessian``.

    ``group_size=None`` gives per-output-channel qparams (computed once, up front, as the
    paper); otherwise per group of ``group_size`` input columns. Min-max asymmetric by
    default (``symmetric=True`` for zero point 0). Deterministic (float64, no sampling).
    """
    if not isinstance(w, Tensor) or w.ndim != 2:
        raise ValueError(f"w must be a 2-d (out, in) weight, got "
                         f"{tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__}")
    if not bool(torch.isfinite(w).all()):
        raise ValueError("w holds NaN or Inf; only finite weights can be quantized")
    bits = _check_int(bits, "bits", 2, 8)
    block_size = _check_int(block_size, "block_size", 1)
    n_out, n_in = w.shape
    g = n_in if group_size is None else _check_int(group_size, "group_size", 1)
    if n_in % g:
        raise ValueError(f"group_size={group_size} must divide in_features={n_in}; allowed: "
                         f"None (per channel) or a divisor of {n_in}")
    if not percdamp >= 0:
        raise ValueError(f"percdamp must be >= 0 (0.01 is the paper's), got {percdamp!r}")
    if hessian is None:
        if x is None:
            raise ValueError("pass calibration inputs x (tokens, in) or a hessian (in, in)")
        if x.ndim != 2 or x.shape[1] != n_in:
            raise ValueError(f"x must have shape (tokens, {n_in}), got {tuple(x.shape)}")
        H = gptq_hessian(x)
    else:
        if tuple(hessian.shape) != (n_in, n_in):
            raise ValueError(f"hessian must be ({n_in}, {n_in}), got {tuple(hessian.shape)}")
        H = hessian.detach().double().clone()

    W = w.detach().double().clone()                              # (out, in), updated in place
    dead = torch.diag(H) == 0                                    # inputs always 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    perm = (torch.argsort(torch.diag(H), descending=True, stable=True) if act_order
            else torch.arange(n_in))
    pos = torch.empty_like(perm)
    pos[perm] = torch.arange(n_in)                               # column -> processing step
    W, H = W[:, perm], H[perm][:, perm]                          # processing order
    H += percdamp * torch.diag(H).mean() * torch.eye(n_in, dtype=H.dtype)
    try:
        Hinv = torch.cholesky_inverse(torch.linalg.cholesky(H))  # (in, in)
        U = torch.linalg.cholesky(Hinv, upper=True)              # H^-1 = U^T U
    except torch.linalg.LinAlgError as e:
        raise ValueError(f"the Hessian is not positive definite; raise percdamp (got "
                         f"{percdamp})") from e

    n_groups = n_in // g
    scale = torch.zeros(n_out, n_groups)
    zero = torch.zeros(n_out, n_groups, dtype=torch.int64)
    ready = [False] * n_groups
    group_of = (perm // g).tolist()                              # group of each step
    Q = torch.zeros(n_out, n_in)                                 # dequantized, float32

    for i1 in range(0, n_in, block_size):
        i2 = min(i1 + block_size, n_in)
        W1 = W[:, i1:i2].clone()                                 # (out, B) current block
        Err = torch.zeros(n_out, i2 - i1, dtype=W.dtype)         # (out, B) scaled errors
        for i in range(i2 - i1):
            j = i1 + i                                           # processing step
            k = group_of[j]
            if not ready[k]:
                # this group's columns, all at steps >= j: read their current values
                # (inside the block from W1; after it, W minus the pending lazy update)
                cols = pos[k * g:(k + 1) * g]
                cur = W[:, cols].clone()                         # (out, g)
                inside = cols < i2
                cur[:, inside] = W1[:, cols[inside] - i1]
                cur[:, ~inside] -= Err[:, :i] @ U[i1:j, cols[~inside]]
                scale[:, k], zero[:, k] = choose_qparams(*minmax(cur.float(), axis=0), bits,
                                                         symmetric=symmetric)
                ready[k] = True
            q = fake_quantize(W1[:, i].float(), scale[:, k], zero[:, k], bits, axis=0)
            Q[:, j] = q                                          # (out,) float32
            W1[:, i:], Err[:, i] = gptq_column_update(W1[:, i:], q, U[j, j:i2])
        W[:, i2:] -= Err @ U[i1:i2, i2:]                         # lazy batch update

    Q = Q[:, pos]                                                # original column order
    gran = {"axis": 0} if group_size is None else {"group_size": g}
    if group_size is None:
        scale, zero = scale[:, 0], zero[:, 0]
    codes = quantize(Q, scale, zero, bits, **gran)   # exact: Q already lies on the grid
    return GPTQResult(Q, codes, scale, zero, perm if act_order else None)
