"""Affine (uniform) quantization: integer ranges, scale and zero point, and their round trip.

Introduced in notebook 01. A real value x is stored as an integer q of ``bits`` bits::

    q     = clamp(round(x / scale) + zero_point, qmin, qmax)      (quantize)
    x_hat = scale * (q - zero_point)                              (dequantize)

Granularity, as torchao names it, is one keyword on every function: ``scale`` and
``zero_point`` are 0-d tensors (per-tensor, the default), 1-d with one entry per slice
along ``axis`` (per-channel), or of shape (..., K // group_size) for x of shape (..., K):
one entry per block of ``group_size`` consecutive values along the last axis (per-group,
as int4 weight-only LLM quantization). :func:`minmax` gives the range at any of the three.
Rounding is half to even (``torch.round``), as PyTorch's own quantizers. The functions are
the course's fixed contract and match ``torch.fake_quantize_per_tensor_affine`` /
``torch.fake_quantize_per_channel_affine`` for 8 bits (``tests/test_quant_affine.py``).

>>> s, z = choose_qparams(torch.tensor(-1.0), torch.tensor(1.0), 8, symmetric=True)
>>> fake_quantize(torch.tensor([0.3, 2.0]), s, z, 8)
tensor([0.2980, 0.9961])
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._util import as_real_tensor, check_bits, check_finite, check_tensor

__all__ = ["qrange", "choose_qparams", "quantize", "dequantize", "fake_quantize", "minmax",
           "broadcast_qparam", "EPS"]

#: Smallest scale ever chosen (float32 machine epsilon, as PyTorch's observers).
EPS = torch.finfo(torch.float32).eps


def qrange(bits: int, signed: bool = True) -> tuple[int, int]:
    """The integer range (qmin, qmax) of a ``bits``-bit integer.

    signed: [-2^(b-1), 2^(b-1) - 1]; unsigned: [0, 2^b - 1]. Introduced in notebook 01.

    >>> qrange(8), qrange(8, signed=False), qrange(4)
    ((-128, 127), (0, 255), (-8, 7))
    """
    check_bits(bits)
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def choose_qparams(x_min: Tensor | float, x_max: Tensor | float, bits: int, *,
                   symmetric: bool = False, signed: bool = True) -> tuple[Tensor, Tensor]:
    """Scale and zero point that map the range [x_min, x_max] onto qrange(bits, signed).

    The range is first widened to include 0 (so that 0 is exactly representable), then::

        asymmetric: scale = (max - min) / (qmax - qmin)
                    zero_point = clamp(qmin - round(min / scale), qmin, qmax)
        symmetric:  scale = max(|min|, |max|) / ((qmax - qmin) / 2)
                    zero_point = 0 (signed) or (qmin + qmax + 1) // 2 (unsigned)

    and scale is never below float32 eps. ``x_min`` / ``x_max`` are 0-d (per-tensor), 1-d
    with one entry per channel, or one entry per group (any shape, from :func:`minmax`);
    the results have the same shape (scale float32, zero_point int64). Same numbers as PyTorch's MinMaxObserver for 8 bits. Notebook 01.

    >>> choose_qparams(torch.tensor(-1.0), torch.tensor(3.0), 8, signed=False)
    (tensor(0.0157), tensor(64))
    """
    qmin, qmax = qrange(bits, signed)
    lo = as_real_tensor(x_min, "x_min").to(torch.float32)
    hi = as_real_tensor(x_max, "x_max").to(torch.float32)
    if lo.shape != hi.shape:
        raise ValueError(f"x_min and x_max must have the same shape, got "
                         f"{tuple(lo.shape)} and {tuple(hi.shape)}")
    check_finite(lo, "x_min")
    check_finite(hi, "x_max")
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


def broadcast_qparam(p: Tensor, x: Tensor, axis: int | None = None,
                     group_size: int | None = None, name: str = "qparam") -> Tensor:
    """View a qparam so that it broadcasts against x: 0-d (per-tensor), 1-d along ``axis``
    (per-channel) or (..., K // group_size, 1) against x viewed as groups (per-group).

    A helper of :func:`quantize`, :func:`dequantize` and :func:`fake_quantize` (and of the
    LSQ module); no notebook calls it directly.

    >>> broadcast_qparam(torch.tensor([1.0, 2.0]), torch.zeros(2, 3), axis=0).shape
    torch.Size([2, 1])
    """
    p = torch.as_tensor(p)
    if group_size is not None:
        if axis is not None:
            raise ValueError("pass axis (per-channel) or group_size (per-group), not both")
        want = tuple(x.shape[:-1]) + (x.shape[-1] // group_size,)
        if tuple(p.shape) != want:
            raise ValueError(f"{name} must have shape {want} for per-group quantization of a "
                             f"{tuple(x.shape)} tensor with group_size={group_size}, got "
                             f"{tuple(p.shape)}")
        return p.unsqueeze(-1)
    if axis is None:
        if p.numel() != 1:
            raise ValueError(f"{name} must hold one value for per-tensor quantization "
                             f"(axis=None), got shape {tuple(p.shape)}; pass axis=... "
                             f"(per-channel) or group_size=... (per-group)")
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


def _groups(x: Tensor, group_size: int | None) -> Tensor:
    """x (..., K) -> (..., K // group_size, group_size); x itself when group_size is None."""
    if group_size is None:
        return x
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if x.ndim == 0 or x.shape[-1] % group_size:
        raise ValueError(f"the last axis ({tuple(x.shape)[-1:] or 'none'}) must be a "
                         f"multiple of group_size={group_size}")
    return x.reshape(*x.shape[:-1], x.shape[-1] // group_size, group_size)


def minmax(x: Tensor, *, axis: int | None = None, group_size: int | None = None
           ) -> tuple[Tensor, Tensor]:
    """(x_min, x_max) at a granularity: the whole tensor (0-d), per channel along ``axis``
    (1-d, x.shape[axis] entries) or per group of ``group_size`` values along the last axis
    ((..., K // group_size)). Feed them to :func:`choose_qparams`. No notebook calls it
    directly: notebook 09 uses it through :func:`qlib.quant.weightonly.rtn_quantize`
    (per-channel and per-group round-to-nearest), and GPTQ and the n-bit ONNX export
    (:mod:`qlib.runtime.nbits`) build their qparams with it.

    >>> minmax(torch.tensor([[0., 1., 0., 4.]]), group_size=2)
    (tensor([[0., 0.]]), tensor([[1., 4.]]))
    """
    x = check_finite(as_real_tensor(x, "x"))
    x = x.detach().float()
    if group_size is not None:
        if axis is not None:
            raise ValueError("pass axis (per-channel) or group_size (per-group), not both")
        g = _groups(x, group_size)
        return g.amin(-1), g.amax(-1)
    if x.numel() == 0:
        raise ValueError("x is empty: there is no range to measure")
    if axis is None:
        return x.min(), x.max()
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis} is out of range for a {x.ndim}-d tensor")
    flat = x.movedim(axis, 0).reshape(x.shape[axis], -1)
    return flat.amin(1), flat.amax(1)


def _qparams(scale: Tensor | float, zero_point: Tensor | int,
             limits: tuple[int, int] | None) -> tuple[Tensor, Tensor]:
    """scale and zero_point as real tensors, checked with one host sync on the good path:
    scale finite and > 0, zero_point whole numbers (inside ``limits`` = (qmin, qmax) when
    given). A bad value would shift or collapse the grid without a visible error (scale 0
    turns every value into 0), so this check stays even in training loops; it costs
    O(number of qparams), not O(x)."""
    scale = as_real_tensor(scale, "scale")
    zero_point = as_real_tensor(zero_point, "zero_point")
    s, z = scale.detach(), zero_point.detach()  # checked without gradients, returned as given
    ok = torch.isfinite(s).all() & (s > 0).all()
    if z.is_floating_point():
        ok &= (z == torch.round(z)).all()  # False for NaN too
    if limits is not None:
        ok &= ((z >= limits[0]) & (z <= limits[1])).all()
    if bool(ok):
        return scale, zero_point
    check_finite(s, "scale")
    if not bool((s > 0).all()):
        raise ValueError(f"scale must be positive (> 0), got min {s.min().item():.3g}")
    if z.is_floating_point() and not bool((z == torch.round(z)).all()):
        bad = z[z != torch.round(z)].flatten()[0].item()
        raise ValueError(f"zero_point must hold whole numbers (an integer offset on the grid), "
                         f"got {bad}")
    assert limits is not None  # the only check left that can have failed
    raise ValueError(f"zero_point must lie in qrange = [{limits[0]}, {limits[1]}], got "
                     f"[{z.min().item()}, {z.max().item()}]")


def _round_clamp(x: Tensor, scale: Tensor, zp: Tensor, qmin: int, qmax: int, *,
                 mask: bool = True) -> tuple[Tensor, Tensor | None]:
    """(clamped float q, mask of values inside the range before clamping, or None when
    ``mask`` is False: only the straight-through gradient needs it)."""
    q = torch.round(x.float() / scale) + zp.float()  # half to even
    return torch.clamp(q, qmin, qmax), ((q >= qmin) & (q <= qmax)) if mask else None


def quantize(x: Tensor, scale: Tensor, zero_point: Tensor, bits: int, *,
             signed: bool = True, axis: int | None = None, group_size: int | None = None
             ) -> Tensor:
    """Map real values to integers: q = clamp(round(x / scale) + zero_point, qmin, qmax).

    Introduced in notebook 01. ``scale`` and ``zero_point`` are 0-d (per-tensor), 1-d with
    x.shape[axis] entries (per-channel) or (..., K // group_size) (per-group: notebook 09
    uses it through :func:`qlib.quant.weightonly.rtn_quantize`).
    Rounding is half to even, as torch.round; the clamp happens in float before the cast
    to int32. Returns int32, x's shape.

    >>> quantize(torch.tensor([0.0, 0.26, -1.0]), torch.tensor(0.25), torch.tensor(0), 4)
    tensor([ 0,  1, -4], dtype=torch.int32)
    """
    qmin, qmax = qrange(bits, signed)
    x = check_finite(check_tensor(x, "x"))  # NaN would cast to an arbitrary int32
    scale, zero_point = _qparams(scale, zero_point, (qmin, qmax))
    g = _groups(x, group_size)
    s = broadcast_qparam(scale, x, axis, group_size, "scale")
    z = broadcast_qparam(zero_point, x, axis, group_size, "zero_point")
    q = _round_clamp(g, s.float(), z, qmin, qmax, mask=False)[0]
    return q.to(torch.int32).reshape(x.shape)


def dequantize(q: Tensor, scale: Tensor, zero_point: Tensor, *, axis: int | None = None,
               group_size: int | None = None) -> Tensor:
    """Map integers back to reals: x_hat = scale * (q - zero_point), float32, q's shape.

    Introduced in notebook 01. Qparams as in :func:`quantize`.

    >>> dequantize(torch.tensor([0, 1, -4]), torch.tensor(0.25), torch.tensor(0))
    tensor([ 0.0000,  0.2500, -1.0000])
    """
    q = check_tensor(q, "q")
    if q.is_floating_point() and not bool((torch.isfinite(q) & (q == torch.round(q))).all()):
        check_finite(q, "q")
        bad = q[q != torch.round(q)].flatten()[0].item()
        raise ValueError(f"q must hold whole numbers (integer codes), got {bad}")
    scale, zero_point = _qparams(scale, zero_point, None)
    s = broadcast_qparam(scale, q, axis, group_size, "scale").float()
    z = broadcast_qparam(zero_point, q, axis, group_size, "zero_point")
    return ((_groups(q, group_size).float() - z.float()) * s).reshape(q.shape)


def fake_quantize(x: Tensor, scale: Tensor, zero_point: Tensor, bits: int, *,
                  signed: bool = True, axis: int | None = None,
                  group_size: int | None = None) -> Tensor:
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
    # O(1) type check; one pass for NaN / Inf (Inf would silently clamp to qmax)
    x = check_finite(check_tensor(x, "x"))
    scale, zero_point = _qparams(scale, zero_point, (qmin, qmax))
    s = broadcast_qparam(scale, x, axis, group_size, "scale").detach().float()
    z = broadcast_qparam(zero_point, x, axis, group_size, "zero_point").detach()
    q, inside = _round_clamp(_groups(x.detach(), group_size), s, z, qmin, qmax,
                             mask=x.requires_grad)
    out = (((q - z.float()) * s).reshape(x.shape)
           .to(x.dtype if x.is_floating_point() else torch.float32))
    if inside is None:
        return out
    # value of `out`, gradient `inside` (1 in range, 0 where clipped): the STE.
    return out + (x - x.detach()) * inside.reshape(x.shape).to(out.dtype)


