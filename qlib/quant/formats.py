"""Number formats next to affine quantization: fixed point, fp16 / bf16, and SQNR.

Introduced in notebook 01. Fixed point is affine quantization with scale = 2^-b and zero
point 0; the narrow float formats are reached through torch dtypes; the signal-to-
quantization-noise ratio (SQNR) measures what either costs, about 6 dB per bit.

>>> x = torch.tensor([0.1, 0.2, 0.3])
>>> [round(sqnr_db(x, float_roundtrip(x, f))) for f in ("fp16", "bf16")]
[74, 53]
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .affine import quantize  # noqa: F401  (used in the docstrings' examples)

__all__ = ["fixed_point_qparams", "float_roundtrip", "sqnr_db"]


def fixed_point_qparams(frac_bits: int) -> tuple[Tensor, Tensor]:
    """Fixed point as affine quantization: scale = 2^-frac_bits, zero_point = 0.

    The textbook form W_q = round(W * 2^b) is ``quantize(W, *fixed_point_qparams(b), bits)``
    (a binary point ``b`` bits from the right). Introduced in notebook 01.

    >>> quantize(torch.tensor([0.3, -1.26]), *fixed_point_qparams(3), 8)
    tensor([  2, -10], dtype=torch.int32)
    """
    if isinstance(frac_bits, bool) or not isinstance(frac_bits, int) or abs(frac_bits) > 64:
        raise ValueError(f"frac_bits must be an int in -64..64, got {frac_bits!r}")
    return torch.tensor(math.ldexp(1.0, -frac_bits), dtype=torch.float32), torch.tensor(0)


def float_roundtrip(x: Tensor, dtype: torch.dtype | str) -> Tensor:
    """Round x to a narrower float format and back: x.to(dtype).to(float32).

    ``dtype`` is a torch float dtype or one of "fp16", "bf16", "fp32" (also
    "float8_e4m3fn" / "float8_e5m2"). fp16 keeps 10 mantissa bits (max 65504, overflow
    gives inf); bf16 keeps fp32's 8 exponent bits but only 7 mantissa bits. Notebook 01.

    >>> float_roundtrip(torch.tensor([1/3, 70000.0]), "fp16")
    tensor([0.3333,    inf])
    >>> float_roundtrip(torch.tensor([1/3, 70000.0]), "bf16")
    tensor([3.3398e-01, 7.0144e+04])
    """
    names = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    if isinstance(dtype, str):
        dt = names.get(dtype) or getattr(torch, dtype, None)
        if not isinstance(dt, torch.dtype):
            raise ValueError(f"unknown float format {dtype!r}; allowed: {sorted(names)} or "
                             "a torch float dtype name")
        dtype = dt
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a torch floating-point dtype, got {dtype!r}")
    return x.to(dtype).to(torch.float32)


def sqnr_db(x: Tensor, x_hat: Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 log10(sum x^2 / sum (x - x_hat)^2).

    About 6.02 dB per bit for a uniform quantizer over the signal's range; +inf when
    x_hat == x. Notebook 01.

    >>> round(sqnr_db(torch.tensor([1.0, -1.0]), torch.tensor([0.9, -1.1])), 2)
    20.0
    """
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {tuple(x.shape)} and "
                         f"{tuple(x_hat.shape)}")
    x, x_hat = x.detach().double(), x_hat.detach().double()
    noise, signal = float(((x - x_hat) ** 2).sum()), float((x ** 2).sum())
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf
