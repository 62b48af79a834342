"""Affine (uniform) quantization: integer ranges, scale and zero point, and their round trip.

Introduced in notebook 01. A real value x is stored as an integer q of ``bits`` bits::

    q     = clamp(round(x / scale) + zero_point, qmin, qmax)      (quantize)
    x_hat = scale * (q - zero_point)                              (dequantize)

``scale`` and ``zero_point`` are 0-d tensors (per-tensor), 1-d tensors with one entry per
slice along ``axis`` (per-channel), or one entry per block of ``group_size`` consecutive
values along the last axis (per-group, the ``*_per_group`` helpers). Rounding is half to
even (``torch.round``), as PyTorch's own quantizers. The functions follow the contract in
the design note and match ``torch.fake_quantize_per_tensor_affine`` /
``torch.fake_quantize_per_channel_affine`` for 8 bits (``tests/test_quant_affine.py``).

>>> s, z = choose_qparams(torch.tensor(-1.0), torch.tensor(1.0), 8, symmetric=True)
>>> fake_quantize(torch.tensor([0.3, 2.0]), s, z, 8)
tensor([0.2980, 0.9961])
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["qrange", "choose_qparams", "quantize", "dequantize", "fake_quantize",
           "choose_qparams_per_group", "quantize_per_group", "dequantize_per_group",
           "fake_quantize_per_group", "EPS"]

#: Smallest scale ever chosen (float32 machine epsilon, as PyTorch's observers).
EPS = torch.finfo(torch.float32).eps


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an int in 1..16, got {bits!r}")
    return bits


def _check_finite(x: Tensor, name: str = "x") -> None:
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} holds NaN or Inf; only finite values can be quantized")


def qrange(bits: int, signed: bool = True) -> tuple[int, int]:
    """The integer range (qmin, qmax) of a ``bits``-bit integer.

    signed: [-2^(b-1), 2^(b-1) - 1]; unsigned: [0, 2^b - 1]. Introduced in notebook 01.

    >>> qrange(8), qrange(8, signed=False), qrange(4)
    ((-128, 127), (0, 255), (-8, 7))
    """
    _check_bits(bits)
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def choose_qparams(x_min: Tensor | float, x_max: Tensor | float, bits: int, *,
                   symmetric: bool = False, signed: bool = True) -> tuple[Tensor, Tensor]:
    """Scale and zero point that map the range [x_min, x_max] onto qrange(bits, signed).

    The range is first widened to include 0 (so that 0 is exactly representable), then::

        asymmetric: scale = (max - min) / (qmax - qmin)
                    zero_point = clamp(qmin - round(min / scale), qmin, qmax)
        symmetric:  scale = max(|min|, |max|) / ((qmax - qmin) / 2)
                    zero_point = 0 (signed) or (qmin + qmax + 1) // 2 (unsigned)

    and scale is never below float32 eps. ``x_min`` / ``x_max`` are 0-d (per-tensor) or
    1-d with one entry per channel; the results have the same shape (scale float32,
    zero_point int64). Same numbers as PyTorch's MinMaxObserver for 8 bits. Notebook 01.

    >>> choose_qparams(torch.tensor(-1.0), torch.tensor(3.0), 8, signed=False)
    (tensor(0.0157), tensor(64))
    """
    qmin, qmax = qrange(bits, signed)
    lo = torch.as_tensor(x_min, dtype=torch.float32)
    hi = torch.as_tensor(x_max, dtype=torch.float32)
    if lo.shape != hi.shape or lo.ndim > 1:
        raise ValueError(f"x_min and x_max must be 0-d or 1-d of the same shape, got "
                         f"{tuple(lo.shape)} and {tuple(hi.shape)}")
    _check_finite(lo, "x_min")
    _check_finite(hi, "x_max")
    if bool((lo > hi).any()):
        raise ValueError(f"x_min must not exceed x_max, got {lo.tolist()} > {hi.tolist()}")
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)  # widen to include 0
    if symmetric:
        scale = torch.maximum(-lo, hi) / ((qmax - qmin) / 2)
        scale = torch.clamp(scale, min=EPS)
        zp = torch.full_like(scale, 0 if signed else (qmin + qmax + 1) // 2, dtype=torch.int64)
    else:
        scale = torch.clamp((hi - lo) / float(qmax - qmin), min=EPS)
        zp = torch.clamp(qmin - torch.round(lo / scale).to(torch.int64), qmin, qmax)
    return scale, zp


def _broadcast(p: Tensor, x: Tensor, axis: int | None, name: str) -> Tensor:
    """View a 0-d or per-channel 1-d qparam so that it broadcasts against x along axis."""
    p = torch.as_tensor(p)
    if axis is None:
        if p.numel() != 1:
            raise ValueError(f"{name} must hold one value for per-tensor quantization "
                             f"(axis=None), got shape {tuple(p.shape)}; pass axis=...")
        return p.reshape(())
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis} is out of range for a {x.ndim}-d tensor")
    axis = axis % x.ndim
    if p.ndim != 1 or p.numel() != x.shape[axis]:
        raise ValueError(f"{name} must be 1-d with x.shape[{axis}] = {x.shape[axis]} "
                         f"entries for per-channel quantization, got shape {tuple(p.shape)}")
    shape = [1] * x.ndim
    shape[axis] = -1
    return p.reshape(shape)


def _check_qparams(scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> None:
    scale = torch.as_tensor(scale)
    _check_finite(scale, "scale")
    if not bool((scale > 0).all()):
        raise ValueError(f"scale must be positive (> 0), got min {scale.min().item():.3g}")
    zp = torch.as_tensor(zero_point)
    if zp.is_floating_point() and not bool((zp == torch.round(zp)).all()):
        raise ValueError("zero_point must hold whole numbers")
    if not bool(((zp >= qmin) & (zp <= qmax)).all()):
        raise ValueError(f"zero_point must lie in qrange = [{qmin}, {qmax}], got "
                         f"[{zp.min().item()}, {zp.max().item()}]")


def _round_clamp(x: Tensor, scale: Tensor, zp: Tensor, qmin: int, qmax: int
                 ) -> tuple[Tensor, Tensor]:
    """(clamped float q, mask of values inside the range before clamping)."""
    q = torch.round(x.float() / scale) + zp.float()  # half to even
    return torch.clamp(q, qmin, qmax), (q >= qmin) & (q <= qmax)


def quantize(x: Tensor, scale: Tensor, zero_point: Tensor, bits: int, *,
             signed: bool = True, axis: int | None = None) -> Tensor:
    """Map real values to integers: q = clamp(round(x / scale) + zero_point, qmin, qmax).

    Introduced in notebook 01. ``scale`` and ``zero_point`` are 0-d (per-tensor) or 1-d with
    x.shape[axis] entries (per-channel). Rounding is half to even, as torch.round; the
    clamp happens in float before the cast to int32. Returns int32, x's shape.

    >>> quantize(torch.tensor([0.0, 0.26, -1.0]), torch.tensor(0.25), torch.tensor(0), 4)
    tensor([ 0,  1, -4], dtype=torch.int32)
    """
    qmin, qmax = qrange(bits, signed)
    _check_finite(x)
    _check_qparams(scale, zero_point, qmin, qmax)
    s, z = _broadcast(scale, x, axis, "scale"), _broadcast(zero_point, x, axis, "zero_point")
    return _round_clamp(x, s.float(), z, qmin, qmax)[0].to(torch.int32)


def dequantize(q: Tensor, scale: Tensor, zero_point: Tensor, *, axis: int | None = None
               ) -> Tensor:
    """Map integers back to reals: x_hat = scale * (q - zero_point), float32, q's shape.

    Introduced in notebook 01. Qparams as in :func:`quantize`.

    >>> dequantize(torch.tensor([0, 1, -4]), torch.tensor(0.25), torch.tensor(0))
    tensor([ 0.0000,  0.2500, -1.0000])
    """
    s = _broadcast(scale, q, axis, "scale").float()
    z = _broadcast(zero_point, q, axis, "zero_point")
    _check_finite(s, "scale")
    if not bool((s > 0).all()):
        raise ValueError("scale must be positive (> 0)")
    return (q.float() - z.float()) * s


def fake_quantize(x: Tensor, scale: Tensor, zero_point: Tensor, bits: int, *,
                  signed: bool = True, axis: int | None = None) -> Tensor:
    """Quantize then dequantize, in float: x_hat = dequantize(quantize(x)).

    Introduced in notebook 01 (the error it adds) and used by every fake-quant module. The
    gradient is the straight-through estimator: d x_hat / d x = 1 where
    qmin <= round(x / scale) + zero_point <= qmax and 0 where the value was clipped (as
    ``torch.fake_quantize_per_tensor_affine``). Shape and dtype of x (float32 for ints).

    >>> x = torch.tensor([0.1, 0.6, 9.0], requires_grad=True)
    >>> y = fake_quantize(x, torch.tensor(0.5), torch.tensor(0), 4); y.sum().backward()
    >>> y.detach(), x.grad
    (tensor([0.0000, 0.5000, 3.5000]), tensor([1., 1., 0.]))
    """
    qmin, qmax = qrange(bits, signed)
    _check_finite(x)
    _check_qparams(scale, zero_point, qmin, qmax)
    s = _broadcast(scale, x, axis, "scale").detach().float()
    z = _broadcast(zero_point, x, axis, "zero_point").detach()
    q, inside = _round_clamp(x.detach(), s, z, qmin, qmax)
    out = ((q - z.float()) * s).to(x.dtype if x.is_floating_point() else torch.float32)
    if not x.requires_grad:
        return out
    # value of `out`, gradient `inside` (1 in range, 0 where clipped): the STE.
    return out + (x - x.detach()) * inside.to(out.dtype)


# ----- per-group: blocks of `group_size` consecutive values along the last axis ---------

def _groups(x: Tensor, group_size: int) -> Tensor:
    """(..., K) -> (..., K // group_size, group_size)."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if x.ndim == 0 or x.shape[-1] % group_size:
        raise ValueError(f"the last axis ({tuple(x.shape)[-1:] or 'none'}) must be a "
                         f"multiple of group_size={group_size}")
    return x.reshape(*x.shape[:-1], x.shape[-1] // group_size, group_size)


def choose_qparams_per_group(x: Tensor, bits: int, group_size: int, *,
                             symmetric: bool = False, signed: bool = True
                             ) -> tuple[Tensor, Tensor]:
    """Min-max qparams for each block of ``group_size`` values along the last axis.

    x (..., K) -> scale, zero_point of shape (..., K // group_size), each block's range set
    by its own min and max with :func:`choose_qparams`' formulas (as torchao's int4
    weight-only groups). Introduced in notebook 02.

    >>> s, z = choose_qparams_per_group(torch.tensor([[0., 1., 0., 4.]]), 4, 2, signed=False)
    >>> s
    tensor([[0.0667, 0.2667]])
    """
    _check_finite(x)
    g = _groups(x.detach().float(), group_size)
    lo, hi = g.amin(-1), g.amax(-1)
    scale, zp = choose_qparams(lo.reshape(-1), hi.reshape(-1), bits, symmetric=symmetric,
                               signed=signed)
    return scale.reshape(lo.shape), zp.reshape(lo.shape)


def quantize_per_group(x: Tensor, scale: Tensor, zero_point: Tensor, bits: int,
                       group_size: int, *, signed: bool = True) -> Tensor:
    """:func:`quantize` with one (scale, zero_point) per block of ``group_size`` values.

    x (..., K), qparams (..., K // group_size) -> int32 (..., K). Notebook 02.
    """
    qmin, qmax = qrange(bits, signed)
    _check_finite(x)
    _check_qparams(scale, zero_point, qmin, qmax)
    g = _groups(x, group_size)
    q, _ = _round_clamp(g, scale.float().unsqueeze(-1), zero_point.unsqueeze(-1), qmin, qmax)
    return q.to(torch.int32).reshape(x.shape)


def dequantize_per_group(q: Tensor, scale: Tensor, zero_point: Tensor, group_size: int
                         ) -> Tensor:
    """:func:`dequantize` per block: x_hat = scale_g * (q - zero_point_g), float32 (..., K)."""
    g = _groups(q, group_size).float()
    return ((g - zero_point.unsqueeze(-1).float()) * scale.float().unsqueeze(-1)).reshape(q.shape)


def fake_quantize_per_group(x: Tensor, bits: int, group_size: int, *,
                            symmetric: bool = False, signed: bool = True) -> Tensor:
    """Per-group min-max fake quantization of x (..., K) in one call (no gradient).

    >>> fake_quantize_per_group(torch.tensor([0.0, 1.0, 10.0, 11.0]), 2, 2, signed=False)
    tensor([ 0.,  1., 11., 11.])
    """
    scale, zp = choose_qparams_per_group(x, bits, group_size, symmetric=symmetric,
                                         signed=signed)
    q = quantize_per_group(x.detach(), scale, zp, bits, group_size, signed=signed)
    return dequantize_per_group(q, scale, zp, group_size)
