"""Learned step size quantization (LSQ): fake quantization whose scale is trained.

Introduced in notebook 04. Rounding has zero gradient almost everywhere, so training a
quantized model needs the *straight-through estimator* (STE): in the backward pass,
round(u) is treated as u. LSQ (learned step size, Esser et al. 2020) makes the scale s a
trained parameter too. With u = x / s, integers in [qmin, qmax] and zero point z::

    x_hat = s * (clamp(round(u) + z, qmin, qmax) - z)
    d x_hat / d x = 1 inside the range, 0 where clipped                       (STE)
    d x_hat / d s = round(u) - u inside, qmin - z below, qmax - z above       (LSQ)

and the scale's gradient is multiplied by g = 1 / sqrt(N * Q_P) (N values share the
scale, Q_P = qmax - z), initialising s = 2 * mean(|x|) / sqrt(Q_P). Same values as
:func:`~qlib.quant.affine.fake_quantize`; same gradients as PyTorch's
``torch._fake_quantize_learnable_per_channel_affine`` (tests/test_quant_lsq.py). The QAT
flow that uses it is :mod:`qlib.quant.qat`.

>>> x = torch.tensor([0.1, 0.6, 9.0], requires_grad=True)
>>> s = torch.tensor(0.5, requires_grad=True)
>>> lsq_fake_quantize(x, s, torch.tensor(0), 4).sum().backward()
>>> x.grad, s.grad                                 # (0 - 0.2) + (1 - 1.2) + 7
(tensor([1., 1., 0.]), tensor(6.6000))
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._util import check_bits, check_finite
from .affine import EPS, broadcast_qparam, qrange

__all__ = ["round_ste", "scale_grad", "lsq_grad_scale", "lsq_init_scale", "lsq_fake_quantize",
           "LSQQuantizer"]


def round_ste(u: Tensor) -> Tensor:
    """round(u) (half to even) in the forward pass, identity in the backward pass (the STE).

    >>> u = torch.tensor([0.4, 1.6], requires_grad=True); round_ste(u).sum().backward()
    >>> u.grad
    tensor([1., 1.])
    """
    return torch.round(u.detach()) + (u - u.detach())  # value exactly round(u)


def scale_grad(x: Tensor, g: float) -> Tensor:
    """Value x (exactly), gradient g * (incoming gradient): x + (x g - x g) with the second
    x g detached from the graph."""
    y = x * g
    return x.detach() + (y - y.detach())


def lsq_grad_scale(n: int, bits: int, *, signed: bool = True, zero_point: int = 0) -> float:
    """LSQ's gradient scale g = 1 / sqrt(N * Q_P), Q_P = qmax - zero_point (notebook 04).

    N is the number of values that share one scale (weights per output channel; features
    per example for activations). ValueError if Q_P < 1 (signed 1-bit has no positive level).

    >>> round(lsq_grad_scale(800, 4), 6)           # 1 / sqrt(800 * 7)
    0.013363
    """
    qmax = qrange(bits, signed)[1] - zero_point
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (values per scale) must be a positive int, got {n!r}")
    if qmax < 1:
        raise ValueError(f"Q_P = qmax - zero_point must be >= 1 for LSQ, got {qmax} "
                         f"(bits={bits}, signed={signed}, zero_point={zero_point})")
    return 1.0 / math.sqrt(n * qmax)


def lsq_init_scale(x: Tensor, bits: int, *, signed: bool = True, zero_point: int = 0,
                   axis: int | None = None) -> Tensor:
    """LSQ's initial step size s = 2 * mean(|x|) / sqrt(Q_P): 0-d, or (x.shape[axis],).

    Introduced in notebook 04. Never below float32 eps.

    >>> lsq_init_scale(torch.tensor([[1.0, -3.0], [0.5, 0.5]]), 4, axis=0)
    tensor([1.5119, 0.3780])
    """
    qmax = qrange(bits, signed)[1] - zero_point
    check_finite(x)
    if x.numel() == 0 or qmax < 1:
        raise ValueError(f"need a non-empty x and Q_P >= 1, got {x.numel()} values, Q_P={qmax}")
    a = x.detach().float().abs()
    mean = a.mean() if axis is None else a.movedim(axis, 0).reshape(a.shape[axis], -1).mean(1)
    return torch.clamp(2 * mean / math.sqrt(qmax), min=EPS)


def lsq_fake_quantize(x: Tensor, scale: Tensor, zero_point: Tensor, bits: int, *,
                      signed: bool = True, axis: int | None = None, grad_scale: float = 1.0
                      ) -> Tensor:
    """Fake quantization with a learnable scale (LSQ): x_hat = s (clamp(round(x/s) + z) - z).

    Introduced in notebook 04. Same values as :func:`~qlib.quant.affine.fake_quantize`;
    gradients: x as the STE (1 inside the range, 0 where clipped); s per element
    round(x/s) - x/s inside, qmin - z / qmax - z where clipped, summed over the values
    sharing the scale and multiplied by ``grad_scale``. ``zero_point`` is fixed (no
    gradient). ``scale`` 0-d or (x.shape[axis],). Returns x's shape.

    >>> s = torch.tensor(0.5, requires_grad=True)
    >>> lsq_fake_quantize(torch.tensor([0.3, 9.0]), s, torch.tensor(0), 2).sum().backward()
    >>> s.grad                                     # (1 - 0.6) + Q_P = 0.4 + 1
    tensor(1.4000)
    """
    qmin, qmax = qrange(bits, signed)
    check_finite(x)
    if not isinstance(scale, Tensor) or not scale.is_floating_point():
        raise TypeError(f"scale must be a float tensor, got {type(scale).__name__}")
    check_finite(scale.detach(), "scale")
    if not bool((scale.detach() > 0).all()):
        raise ValueError(f"scale must be positive (> 0), got min {scale.min().item():.3g}")
    zp = torch.as_tensor(zero_point)
    if not bool(((zp >= qmin) & (zp <= qmax)).all()):
        raise ValueError(f"zero_point must lie in qrange = [{qmin}, {qmax}]")
    s = broadcast_qparam(scale_grad(scale, grad_scale), x, axis, name="scale")
    z = broadcast_qparam(zp, x, axis, name="zero_point").detach().to(s.dtype)
    u = x.detach() / s.detach()
    q = torch.round(u) + z
    inside = (q >= qmin) & (q <= qmax)
    q = torch.clamp(q, qmin, qmax)
    out = ((q - z) * s.detach()).to(x.dtype)  # the value: exactly fake_quantize's
    # The gradient carrier (its value is subtracted away): x + s (round(u) - u) inside, with
    # the residual held (the STE), and s (q - z) where clipped, q the constant qmin or qmax.
    carrier = torch.where(inside, x + s * (q - z - u), s * (q - z))
    return out + (carrier - carrier.detach()).to(x.dtype)


class LSQQuantizer(nn.Module):
    """A fake quantizer with a learned step size: ``forward(x) = lsq_fake_quantize(x, ...)``.

    ``kind="weight"``: signed symmetric, one scale per output channel (axis 0, ``channels``
    of them), N = weights per channel. ``kind="activation"``: unsigned, one scale, a fixed
    ``zero_point`` (0 after a ReLU), N = features per example. Set the scale with
    :meth:`initialise`; ``learn=False`` keeps it fixed (a buffer), for comparison.

    The trained parameter is ``magnitude``, the scale in units of 2 / sqrt(Q_P):
    ``scale = magnitude * 2 / sqrt(Q_P)``, so it starts at mean|x|, the size of the values it
    quantizes. Adam moves every parameter by about ``lr`` per step whatever its size: an
    8-bit weight scale (about 0.004 on the course model) would cross zero within a few
    steps, while ``magnitude`` moves, relatively, as fast as the weights. The gradient
    reaching ``scale`` is LSQ's. Notebook 04.
    """

    def __init__(self, bits: int, kind: str = "weight", channels: int | None = None, *,
                 zero_point: int = 0, learn: bool = True) -> None:
        super().__init__()
        if kind not in ("weight", "activation"):
            raise ValueError(f"kind must be 'weight' or 'activation', got {kind!r}")
        if kind == "weight" and (channels is None or channels < 1):
            raise ValueError("a weight quantizer needs channels >= 1 (one scale per channel)")
        self.bits, self.kind, self.learn = check_bits(bits), kind, learn
        self.signed = kind == "weight"
        self.axis = 0 if kind == "weight" else None
        qmin, qmax = qrange(bits, self.signed)
        if self.signed:
            zero_point = 0
        if not qmin <= zero_point < qmax:
            raise ValueError(f"zero_point must lie in [{qmin}, {qmax}), got {zero_point}")
        lsq_grad_scale(1, bits, signed=self.signed, zero_point=zero_point)  # Q_P >= 1
        self.unit = 2 / math.sqrt(qmax - zero_point)
        magnitude = torch.ones(channels) if kind == "weight" else torch.tensor(1.0)
        if learn:
            self.magnitude = nn.Parameter(magnitude)
        else:
            self.register_buffer("magnitude", magnitude)
        self.register_buffer("zero_point", torch.full_like(magnitude, zero_point,
                                                           dtype=torch.int64))

    @property
    def scale(self) -> Tensor:
        """The step size s = magnitude * 2 / sqrt(Q_P): 0-d, or (channels,) for weights."""
        return self.magnitude * self.unit

    @torch.no_grad()
    def initialise(self, x: Tensor) -> None:
        """s = 2 mean(|x|) / sqrt(Q_P) from the weight, or from calibration activations."""
        s0 = lsq_init_scale(x, self.bits, signed=self.signed, axis=self.axis,
                            zero_point=int(self.zero_point.reshape(-1)[0]))
        self.magnitude.copy_(s0 / self.unit)

    def grad_scale(self, x: Tensor) -> float:
        """g = 1 / sqrt(N * Q_P) for this input (N as in the class docstring)."""
        n = x.numel() // x.shape[0] if x.ndim else 1
        return lsq_grad_scale(max(n, 1), self.bits, signed=self.signed,
                              zero_point=int(self.zero_point.reshape(-1)[0]))

    def forward(self, x: Tensor) -> Tensor:
        scale = self.scale.clamp(min=EPS)  # a step that overshoots zero must not crash a run
        return lsq_fake_quantize(x, scale, self.zero_point, self.bits, signed=self.signed,
                                 axis=self.axis, grad_scale=self.grad_scale(x))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, kind={self.kind}, learn={self.learn}"
