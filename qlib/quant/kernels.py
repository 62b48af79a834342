"""Integer-only inference kernels: int8 x uint8 products, int32 accumulators, requantization.

Introduced in notebook 03 (walk one layer by hand); :mod:`qlib.quant.integer` builds whole
integer-only models from them. A fake-quant layer computes in float
with values that integers could hold; here the integers themselves are used, as in
Jacob et al. (2018), "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference". One layer, input x = S_x (q_x - z_x) (uint8), weight
w[c] = S_w[c] (q_w[c] - z_w[c]) (int8, per output channel c), output y = S_y (q_y - z_y)::

    acc[c] = sum_k (q_x[k] - z_x)(q_w[c,k] - z_w[c]) + b_q[c]      int32, b_q = round(b / (S_x S_w))
    q_y[c] = clamp(z_y + round(M[c] acc[c]), qmin, qmax),   M[c] = S_x S_w[c] / S_y

with M = M0 2^-n, M0 an integer in [2^30, 2^31) (:func:`quantize_multiplier`), so the
multiplication is an integer product followed by a rounding right shift
(:func:`requantize`). A ReLU after the layer is the clamp to [z_y, qmax]: z_y is real 0.

>>> acc = int_linear(torch.tensor([[3, 1]]), torch.tensor([[2, -1]]), x_zero_point=1)
>>> acc                       # (3 - 1) * 2 + (1 - 1) * (-1)
tensor([[4]], dtype=torch.int32)
>>> m0, n = quantize_multiplier(0.25)
>>> requantize(acc, m0, n, zero_point=10, qmin=0, qmax=255)   # 10 + round(4 * 0.25)
tensor([[11]], dtype=torch.uint8)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["quantize_multiplier", "requantize", "int_linear", "int_conv2d", "int_max_pool2d",
           "zero_point_offset", "im2col", "INT32_MIN", "INT32_MAX"]

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


def _check_int(t: Tensor, name: str) -> None:
    if not isinstance(t, Tensor) or t.is_floating_point() or t.is_complex() or \
            t.dtype == torch.bool:
        kind = t.dtype if isinstance(t, Tensor) else type(t).__name__
        raise TypeError(f"{name} must be an integer tensor (uint8, int8, int32, int64), got "
                        f"{kind}")


def _pair(v: int | tuple[int, int], name: str) -> tuple[int, int]:
    p = (v, v) if isinstance(v, int) else tuple(v)
    if len(p) != 2 or not all(isinstance(i, int) and i >= 0 for i in p):
        raise ValueError(f"{name} must be a non-negative int or a pair of them, got {v!r}")
    return p  # type: ignore[return-value]


def _channel_view(p: Tensor | int, ref: Tensor, name: str) -> Tensor:
    """A 0-d or per-channel (C,) parameter as int64, viewed to broadcast along ref's dim 1."""
    p = torch.as_tensor(p, dtype=torch.int64)
    if p.ndim == 0:
        return p
    if p.ndim != 1 or ref.ndim < 2 or p.numel() != ref.shape[1]:
        raise ValueError(f"{name} must be 0-d or 1-d with one entry per channel (dim 1 of "
                         f"{tuple(ref.shape)}), got shape {tuple(p.shape)}")
    return p.view(1, -1, *([1] * (ref.ndim - 2)))


def _to_int32(acc: Tensor, what: str) -> Tensor:
    lo, hi = (int(acc.min()), int(acc.max())) if acc.numel() else (0, 0)
    if lo < INT32_MIN or hi > INT32_MAX:
        raise ValueError(f"{what} overflows int32: range [{lo}, {hi}] is outside "
                         f"[{INT32_MIN}, {INT32_MAX}]; use fewer bits or a smaller layer")
    return acc.to(torch.int32)


def quantize_multiplier(m: float | Tensor) -> tuple[int, int] | tuple[Tensor, Tensor]:
    """Fixed-point form of a real multiplier: M ~= M0 * 2^-n, M0 an int in [2^30, 2^31).

    With M = f 2^e, f in [0.5, 1) (``math.frexp``): M0 = round(f 2^31), n = 31 - e; the
    relative error |M0 2^-n - M| / M is at most 2^-31. M must be finite, positive and give
    1 <= n <= 62 (2^-32 <= M < 2^30), so that requantize's shift fits int64. A float gives
    ints; a tensor (C,) gives (M0 int32 (C,), n int32 (C,)). Notebook 03.

    >>> quantize_multiplier(0.1)            # 0.1 = 1717986918 * 2^-34
    (1717986918, 34)
    """
    if isinstance(m, Tensor):
        pairs = [quantize_multiplier(float(v)) for v in m.detach().double().reshape(-1)]
        m0 = torch.tensor([p[0] for p in pairs], dtype=torch.int32).view(m.shape)
        return m0, torch.tensor([p[1] for p in pairs], dtype=torch.int32).view(m.shape)
    if not (isinstance(m, (int, float)) and math.isfinite(m) and m > 0):
        raise ValueError(f"the multiplier must be a finite positive number, got {m!r}")
    frac, exp = math.frexp(m)
    m0, n = round(frac * (1 << 31)), 31 - exp
    if m0 == 1 << 31:  # f rounded up to 1.0
        m0, n = m0 >> 1, n - 1
    if not 1 <= n <= 62:
        raise ValueError(f"the multiplier {m:.3g} is outside [2^-32, 2^30) (shift n={n}, "
                         "allowed 1..62)")
    return m0, n


def requantize(acc: Tensor, m0: int | Tensor, n: int | Tensor, zero_point: int | Tensor,
               qmin: int, qmax: int) -> Tensor:
    """int32 accumulators to the output integers: q = clamp(z + round(acc M0 2^-n), qmin, qmax).

    The product acc * M0 is exact in int64 (|acc| < 2^31, M0 < 2^31); the rounding is
    **round half up**: floor((acc M0 + 2^(n-1)) / 2^n) with an arithmetic right shift (the
    fake-quant simulation rounds half to even; they differ only on exact ties). acc
    (N, C, ...) integer; m0, n, zero_point 0-d or (C,) per channel (dim 1). A fused ReLU is
    qmin = zero_point. Returns uint8 / int8 when [qmin, qmax] fits, else int32. Notebook 03.

    >>> requantize(torch.tensor([[-6, 6, 400]]), 1 << 30, 32, 3, 0, 255)   # M = 1/4
    tensor([[  2,   5, 103]], dtype=torch.uint8)

    (-1.5 rounds up to -1, 1.5 up to 2.)
    """
    _check_int(acc, "acc")
    if not qmin <= qmax:
        raise ValueError(f"need qmin <= qmax, got [{qmin}, {qmax}]")
    m0_, n_, z = (_channel_view(v, acc, k) for k, v in (("m0", m0), ("n", n),
                                                         ("zero_point", zero_point)))
    if bool(((m0_ < 1 << 30) | (m0_ >= 1 << 31)).any()) or bool(((n_ < 1) | (n_ > 62)).any()):
        raise ValueError("m0 must lie in [2^30, 2^31) and n in 1..62 (see quantize_multiplier)")
    if bool(((z < qmin) | (z > qmax)).any()):
        raise ValueError(f"zero_point must lie in [qmin, qmax] = [{qmin}, {qmax}]")
    half = torch.ones_like(n_) << (n_ - 1)
    q = acc.to(torch.int64, copy=True).mul_(m0_)         # exact: |acc M0| < 2^62
    q = q.add_(half).bitwise_right_shift_(n_).add_(z).clamp_(qmin, qmax)   # in place: big
    dtype = torch.uint8 if 0 <= qmin and qmax <= 255 else \
        torch.int8 if -128 <= qmin and qmax <= 127 else torch.int32
    return q.to(dtype)


def zero_point_offset(q_w: Tensor, x_zero_point: int | Tensor, w_zero_point: int | Tensor = 0,
                      bias: Tensor | None = None) -> Tensor:
    """The weight-only terms of the zero-point expansion, precomputed once per layer.

    Expanding the product (K = q_w.shape[1] terms)::

        sum_k (q_x[k] - z_x)(q_w[c,k] - z_w[c])
          = sum_k q_x[k] q_w[c,k]  -  z_w[c] sum_k q_x[k]            (depend on the input)
            - z_x sum_k q_w[c,k]   +  K z_x z_w[c]                   (weights only: here)

    Returns b_q[c] - z_x sum_k q_w[c,k] + K z_x z_w[c], int64 (C,); q_w (C, K), bias int32
    (C,) or None. With symmetric weights (z_w = 0) the input term vanishes. Notebook 03.

    >>> zero_point_offset(torch.tensor([[2, -1]]), 1, bias=torch.tensor([5]))
    tensor([4])
    """
    _check_int(q_w, "q_w")
    if q_w.ndim != 2:
        raise ValueError(f"q_w must be 2-d (C_out, K), got shape {tuple(q_w.shape)}")
    w = q_w.to(torch.int64)
    z_x, z_w = int(x_zero_point), torch.as_tensor(w_zero_point, dtype=torch.int64)
    out = -z_x * w.sum(1) + w.shape[1] * z_x * z_w
    if bias is not None:
        _check_int(bias, "bias")
        if bias.shape != (w.shape[0],):
            raise ValueError(f"bias must have shape ({w.shape[0]},), got {tuple(bias.shape)}")
        out = out + bias.to(torch.int64)
    return out


def accumulate(x: Tensor, w: Tensor, w_zero_point: int | Tensor, offset: Tensor) -> Tensor:
    """acc = x @ w^T - z_w * rowsum(x) + offset in int64, checked to fit int32. (M,K),(C,K)."""
    x64, w64 = x.to(torch.int64), w.to(torch.int64)
    acc = x64 @ w64.T                                                    # (M, C)
    z_w = torch.as_tensor(w_zero_point, dtype=torch.int64)
    if bool((z_w != 0).any()):
        acc = acc - z_w * x64.sum(1, keepdim=True)                       # input term
    return _to_int32(acc + offset, "the accumulator")


def int_linear(q_x: Tensor, q_w: Tensor, x_zero_point: int | Tensor,
               w_zero_point: int | Tensor = 0, bias: Tensor | None = None) -> Tensor:
    """Integer linear layer: acc[n, c] = sum_k (q_x[n,k] - z_x)(q_w[c,k] - z_w[c]) + b_q[c].

    q_x (N, K) uint8/any int, q_w (C, K) int8, w_zero_point 0-d or (C,), bias int32 (C,)
    quantized at scale S_x S_w. Computed with the expansion of :func:`zero_point_offset`
    in int64 and returned as int32 (N, C); ValueError if it would overflow int32. Then
    ``dequantize(acc, S_x * S_w, 0)`` equals F.linear on the dequantized values. Notebook 03.

    >>> int_linear(torch.tensor([[130, 128]], dtype=torch.uint8),
    ...            torch.tensor([[1, -2], [3, 4]], dtype=torch.int8), 128, 0, torch.tensor([1, 0]))
    tensor([[3, 6]], dtype=torch.int32)
    """
    _check_int(q_x, "q_x")
    if q_x.ndim != 2 or q_w.ndim != 2 or q_x.shape[1] != q_w.shape[1]:
        raise ValueError(f"need q_x (N, K) and q_w (C, K) with the same K, got "
                         f"{tuple(q_x.shape)} and {tuple(q_w.shape)}")
    offset = zero_point_offset(q_w, x_zero_point, w_zero_point, bias)
    return accumulate(q_x, q_w, w_zero_point, offset)


def im2col(q_x: Tensor, kernel: tuple[int, int], stride: tuple[int, int] = (1, 1),
           padding: tuple[int, int] = (0, 0), pad_value: int = 0) -> Tensor:
    """Patches of (N, C, H, W) as rows: (N * H' * W', C * kh * kw), any dtype.

    H' = (H + 2 p_h - kh) // s_h + 1 (W' likewise). Padding uses ``pad_value``: for a
    quantized input that is z_x, the integer that means real 0. Rows are in (n, h', w')
    order and columns in (c, i, j) order, as ``weight.reshape(C_out, -1)``. Notebook 03.
    """
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    x = torch.nn.functional.pad(q_x, (pw, pw, ph, ph), value=pad_value) if ph or pw else q_x
    if x.shape[2] < kh or x.shape[3] < kw:
        raise ValueError(f"kernel {kernel} is larger than the padded input {tuple(x.shape[2:])}")
    cols = x.unfold(2, kh, sh).unfold(3, kw, sw)                 # (N, C, H', W', kh, kw)
    n, c, h2, w2 = cols.shape[:4]
    return cols.permute(0, 2, 3, 1, 4, 5).reshape(n * h2 * w2, c * kh * kw)


def int_conv2d(q_x: Tensor, q_w: Tensor, x_zero_point: int | Tensor,
               w_zero_point: int | Tensor = 0, bias: Tensor | None = None, *,
               stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0) -> Tensor:
    """Integer conv2d as im2col + :func:`int_linear`: int32 (N, C_out, H', W').

    acc[n, c, h, w] = sum_{c', i, j} (q_x[n, c', h s + i - p, w s + j - p] - z_x)
    (q_w[c, c', i, j] - z_w[c]) + b_q[c]; q_x (N, C_in, H, W), q_w (C_out, C_in, kh, kw),
    padding filled with z_x (real zero). No groups or dilation. Equals F.conv2d on the
    dequantized values divided by S_x S_w. Notebook 03.

    >>> int_conv2d(torch.full((1, 1, 2, 2), 5), torch.ones(1, 1, 2, 2, dtype=torch.int8), 3)
    tensor([[[[8]]]], dtype=torch.int32)
    """
    _check_int(q_x, "q_x")
    _check_int(q_w, "q_w")
    if q_x.ndim != 4 or q_w.ndim != 4 or q_x.shape[1] != q_w.shape[1]:
        raise ValueError(f"need q_x (N, C_in, H, W) and q_w (C_out, C_in, kh, kw) with the same "
                         f"C_in, got {tuple(q_x.shape)} and {tuple(q_w.shape)}")
    s, p = _pair(stride, "stride"), _pair(padding, "padding")
    if min(s) < 1:
        raise ValueError(f"stride must be >= 1, got {stride!r}")
    cols = im2col(q_x, tuple(q_w.shape[2:]), s, p, int(x_zero_point))   # (N H' W', K)
    acc = int_linear(cols, q_w.reshape(q_w.shape[0], -1), x_zero_point, w_zero_point, bias)
    h2 = (q_x.shape[2] + 2 * p[0] - q_w.shape[2]) // s[0] + 1
    return acc.view(q_x.shape[0], h2, -1, q_w.shape[0]).permute(0, 3, 1, 2).contiguous()


def int_max_pool2d(q: Tensor, kernel_size: int | tuple[int, int],
                   stride: int | tuple[int, int] | None = None) -> Tensor:
    """Max pooling on integers: out[n, c, h, w] = max_{i,j} q[n, c, h s + i, w s + j].

    Exact on quantized values: q = round(x / S) + z is monotone, so max and quantize
    commute. (N, C, H, W) -> (N, C, H', W'), same dtype; no padding. Notebook 03.

    >>> int_max_pool2d(torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4), 2).flatten()
    tensor([ 5,  7, 13, 15], dtype=torch.uint8)
    """
    _check_int(q, "q")
    k = _pair(kernel_size, "kernel_size")
    s = k if stride is None else _pair(stride, "stride")
    if q.ndim != 4 or min(k) < 1 or min(s) < 1:
        raise ValueError(f"need q (N, C, H, W) and kernel / stride >= 1, got {tuple(q.shape)}, "
                         f"{k}, {s}")
    return q.unfold(2, k[0], s[0]).unfold(3, k[1], s[1]).amax((-2, -1))
