"""Narrow floats for weights: FP8 (E4M3, E5M2) and the OCP microscaling formats MXFP8 / MXFP4.

Introduced in notebook 09, in notebook 01's terms. A float spends its bits on a sign s, an
exponent e (E bits) and a mantissa m (M bits)::

    normal:     x = (-1)^s * 2^(e - bias) * (1 + m / 2^M)         exponent field e >= 1
    subnormal:  x = (-1)^s * 2^(1 - bias) * (m / 2^M)             e = 0 (evenly down to 0)

The exponent bits buy *dynamic range* (max / smallest normal = 2^(number of binades)), the
mantissa bits buy *resolution*: inside one binade [2^k, 2^(k+1)) the step is 2^(k-M), a
relative error of at most 2^-(M+1) whatever the magnitude. So, unlike int8's uniform grid,
an FP8 value's error grows with the value (about 6 dB of SQNR per mantissa bit).

    format     E  M  bias  max    min normal  torch dtype
    E4M3 "fn"  4  3  7     448    2^-6        float8_e4m3fn: no inf; only S.1111.111 is NaN
    E5M2       5  2  15    57344  2^-14       float8_e5m2: IEEE-like, has inf and NaN
    E2M1       2  1  1     6      1           none; the values are ±{0, .5, 1, 1.5, 2, 3, 4, 6}

FP8 per tensor / channel: scale = amax / fmax, then x8 = cast(x / scale) (round to nearest
even, saturated at ±fmax). MX (OCP Microscaling spec v1.0): every block of 32 consecutive
values shares one E8M0 scale, a pure power of two 2^k (k in -127..127, 8 bits)::

    k = floor(log2(amax of the block)) - emax_elem       emax_elem = 8 (E4M3), 2 (E2M1)
    element = round_to_element_format(x / 2^k), saturated to ±max

so the largest element lands in the format's top binade. Bits per value: MXFP8 8 + 8/32 =
8.25, MXFP4 4 + 8/32 = 4.25 (:func:`bits_per_value`).

>>> float_round(torch.tensor([0.3, 5.0, 100.0]), "e2m1")  # 0.3 -> 0.5, 5 ties to 4, saturate
tensor([0.5000, 4.0000, 6.0000])
>>> elements, exps = mx_quantize(torch.full((32,), 3.0), "mxfp4"); exps, elements[0]
(tensor([-1], dtype=torch.int32), tensor(6.))
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["FloatFormat", "FORMATS", "float_round", "e2m1_round", "E2M1_VALUES",
           "fp8_quantize", "fp8_dequantize", "fp8_fake_quantize", "mx_quantize",
           "mx_dequantize", "mx_fake_quantize", "bits_per_value", "MX_BLOCK"]


class FloatFormat(NamedTuple):
    """A sign + ``exp_bits`` exponent + ``man_bits`` mantissa float format."""

    exp_bits: int
    man_bits: int
    bias: int
    max: float            # largest finite value (saturation point)
    dtype: torch.dtype | None  # the torch dtype that stores it, if any


FORMATS = {
    "e4m3": FloatFormat(4, 3, 7, 448.0, torch.float8_e4m3fn),
    "e5m2": FloatFormat(5, 2, 15, 57344.0, torch.float8_e5m2),
    "e2m1": FloatFormat(2, 1, 1, 6.0, None),
}
#: MX block size (values sharing one E8M0 scale) and the element format of each MX format.
MX_BLOCK = 32
_MX_ELEMENT = {"mxfp8": "e4m3", "mxfp4": "e2m1"}
#: The eight non-negative E2M1 values, in code order (code = 2*e + m).
E2M1_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def _fmt(name: str, allowed: dict) -> str:
    if name not in allowed:
        raise ValueError(f"format must be one of {sorted(allowed)}, got {name!r}")
    return name


def _finite(x: Tensor, name: str = "x") -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} holds NaN or Inf; only finite values can be quantized")
    return x.detach().float()


def float_round(x: Tensor, fmt: str) -> Tensor:
    """Round float32 values to the nearest value of ``fmt`` (half to even), saturating.

    Built from the formula above, not from a torch dtype: the step inside the binade of
    |x| is 2^(max(floor(log2|x|), 1 - bias) - M) (subnormals share the smallest normal's
    step), the even neighbour wins a tie (``torch.round``), and the result is clamped to
    ±max. Equals torch's casts for E4M3 / E5M2 inside ±max (``tests/test_quant_fp8.py``).

    >>> float_round(torch.tensor([1.0625, 1.1875, 300.0, 1000.0]), "e4m3")
    tensor([  1.0000,   1.2500, 288.0000, 448.0000])
    """
    f = FORMATS[_fmt(fmt, FORMATS)]
    x = _finite(x)
    # frexp: |x| = mant * 2^exp with mant in [0.5, 1), so floor(log2|x|) = exp - 1 exactly
    binade = torch.frexp(x)[1] - 1
    binade = torch.clamp(binade, min=1 - f.bias)                    # subnormal range
    step = _pow2(binade - f.man_bits)                               # a power of two
    return torch.clamp(torch.round(x / step) * step, -f.max, f.max)


def _pow2(k: Tensor) -> Tensor:
    """2^k exactly (float32) for an integer tensor k."""
    return torch.ldexp(torch.ones(k.shape), k.to(torch.int32))


def e2m1_round(x: Tensor) -> Tensor:
    """Round to the nearest E2M1 (FP4) value by table lookup; ties go to the even code.

    The codes 0..7 of |x| are E2M1_VALUES; a value exactly between two neighbours takes
    the one with an even code (mantissa bit 0), the IEEE rule; beyond 6 it saturates.

    >>> e2m1_round(torch.tensor([0.25, 0.75, 2.5, -3.5, 7.0]))
    tensor([ 0.,  1.,  2., -4.,  6.])
    """
    x = _finite(x)
    v = E2M1_VALUES
    mids = (v[1:] + v[:-1]) / 2                                     # (7,) decision points
    a = x.abs()
    code = torch.bucketize(a, mids)             # mids[code-1] < a <= mids[code]; ties -> low
    tie = (code < len(mids)) & (a == mids[code.clamp(max=len(mids) - 1)])
    code = torch.where(tie & (code % 2 == 1), code + 1, code)       # tie -> even code
    return torch.copysign(v[code], x)


def _amax(x: Tensor, axis: int | None) -> Tensor:
    if axis is None:
        return x.abs().amax()
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis} is out of range for a {x.ndim}-d tensor")
    return x.abs().movedim(axis, 0).reshape(x.shape[axis], -1).amax(1)


def _view(p: Tensor, x: Tensor, axis: int | None) -> Tensor:
    if axis is None:
        return p
    shape = [1] * x.ndim
    shape[axis] = -1
    return p.reshape(shape)


def fp8_quantize(x: Tensor, fmt: str = "e4m3", *, axis: int | None = None
                 ) -> tuple[Tensor, Tensor]:
    """Scale into FP8 range and cast: returns (x8 in the torch float8 dtype, scale).

    scale = amax / fmax per tensor (0-d) or per channel along ``axis`` (1-d), so the
    largest |x| maps to ±fmax (448 for E4M3, 57344 for E5M2); x8 = cast(clamp(x / scale)).
    An all-zero slice gets scale 1.

    >>> x8, s = fp8_quantize(torch.tensor([[1.0, -0.1], [2.0, 0.0]]), axis=0)
    >>> x8.float(), s
    (tensor([[448., -44.],
            [448.,   0.]]), tensor([0.0022, 0.0045]))
    """
    f = FORMATS[_fmt(fmt, {"e4m3": 0, "e5m2": 0})]
    x = _finite(x)
    amax = _amax(x, axis)
    scale = torch.where(amax > 0, amax / f.max, torch.ones_like(amax))
    y = torch.clamp(x / _view(scale, x, axis), -f.max, f.max)       # saturate, never inf
    return y.to(f.dtype), scale


def fp8_dequantize(x8: Tensor, scale: Tensor, *, axis: int | None = None) -> Tensor:
    """x_hat = float32(x8) * scale (per tensor, or per channel along ``axis``)."""
    return x8.to(torch.float32) * _view(scale, x8, axis)


def fp8_fake_quantize(x: Tensor, fmt: str = "e4m3", *, axis: int | None = None) -> Tensor:
    """Round trip through FP8: fp8_dequantize(*fp8_quantize(x)), float32, x's shape.

    E4M3 resolves 0.2 better; E5M2 has 3 more binades of range, which a scaled tensor
    rarely needs (its largest value sits at fmax).

    >>> x = torch.tensor([1.0, 0.2, 0.01])
    >>> fp8_fake_quantize(x, "e4m3"), fp8_fake_quantize(x, "e5m2")
    (tensor([1.0000, 0.1964, 0.0100]), tensor([1.0000, 0.2143, 0.0089]))
    """
    x8, scale = fp8_quantize(x, fmt, axis=axis)
    return fp8_dequantize(x8, scale, axis=axis)


def _blocks(x: Tensor, block_size: int) -> Tensor:
    """(..., K) -> (..., K // block_size, block_size)."""
    if x.ndim == 0 or x.shape[-1] % block_size:
        raise ValueError(f"the last axis ({tuple(x.shape)[-1:] or 'none'}) must be a multiple "
                         f"of the MX block size {block_size}")
    return x.reshape(*x.shape[:-1], x.shape[-1] // block_size, block_size)


def mx_quantize(x: Tensor, fmt: str = "mxfp8", *, block_size: int = MX_BLOCK
                ) -> tuple[Tensor, Tensor]:
    """Microscaling: (elements, exponents) for blocks of ``block_size`` along the last axis.

    ``exponents`` int32 (..., K // block_size): the shared E8M0 scale of each block is
    2^exponent with exponent = floor(log2 amax) - emax_elem, clamped to -127..127 (-127
    for an all-zero block). ``elements`` float32, x's shape: x / 2^exponent rounded to
    the element format (E4M3 via torch's cast, E2M1 via :func:`e2m1_round`), saturated.
    """
    elem = FORMATS[_MX_ELEMENT[_fmt(fmt, _MX_ELEMENT)]]
    emax_elem = (1 << elem.exp_bits) - 1 - elem.bias    # top binade's exponent: 8 or 2
    g = _blocks(_finite(x), block_size)                                 # (..., G, B)
    amax = g.abs().amax(-1)                                             # (..., G)
    exps = torch.frexp(amax)[1] - 1 - emax_elem                         # floor(log2) - emax
    exps = torch.where(amax > 0, exps, torch.full_like(exps, -127)).clamp(-127, 127)
    y = torch.clamp(g / _pow2(exps).unsqueeze(-1), -elem.max, elem.max)
    y = e2m1_round(y) if elem.dtype is None else y.to(elem.dtype).float()
    return y.reshape(x.shape), exps.to(torch.int32)


def mx_dequantize(elements: Tensor, exponents: Tensor, *, block_size: int = MX_BLOCK
                  ) -> Tensor:
    """x_hat = element * 2^exponent of its block, float32, elements' shape."""
    g = _blocks(elements.float(), block_size)
    return (g * _pow2(exponents).unsqueeze(-1)).reshape(elements.shape)


def mx_fake_quantize(x: Tensor, fmt: str = "mxfp8", *, block_size: int = MX_BLOCK) -> Tensor:
    """Round trip through an MX format: mx_dequantize(*mx_quantize(x)).

    >>> mx_fake_quantize(torch.linspace(-1, 1, 32), "mxfp4")[-4:]
    tensor([0.7500, 0.7500, 1.0000, 1.0000])
    """
    return mx_dequantize(*mx_quantize(x, fmt, block_size=block_size), block_size=block_size)


def bits_per_value(fmt: str) -> float:
    """Storage bits per value: 8 for FP8 (one scale per tensor/channel, negligible),
    element bits + 8 / 32 for MX (one E8M0 scale byte per block of 32).

    >>> [bits_per_value(f) for f in ("fp8_e4m3", "fp8_e5m2", "mxfp8", "mxfp4")]
    [8.0, 8.0, 8.25, 4.25]
    """
    bits = {"fp8_e4m3": 8.0, "fp8_e5m2": 8.0, "mxfp8": 8 + 8 / MX_BLOCK,
            "mxfp4": 4 + 8 / MX_BLOCK}
    return bits[_fmt(fmt, bits)]
