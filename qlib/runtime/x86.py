"""What x86 int8 dot-product instructions compute, emulated exactly in PyTorch integers.

Introduced in notebook 03 (section 8c), to show why u8 activations x s8 weights is the
fast pairing on most x86 CPUs and why ``reduce_range`` exists. Inputs are the bytes of one
vector register viewed as a row of length 4k (leading batch dimensions allowed).

``maddubs`` is ``VPMADDUBSW`` (SSSE3 / AVX2 / AVX-512BW): u8 x s8 products, adjacent pairs
added into int16 with **signed saturation**::

    out[j] = clamp(a[2j] b[2j] + a[2j+1] b[2j+1], -32768, 32767)      (k*2 int16 lanes)

Two products reach 2 * 255 * 127 > 32767, so full-range u8 inputs can saturate; with 7-bit
activations (a <= 127, PyTorch's ``reduce_range``) or 7-bit weights (|b| <= 64, ONNX
Runtime's ``reduce_range``) the pair sum always fits. Before VNNI the int16 sums go on
through ``VPMADDWD`` (x 1, pairs into int32).

``dpbusd`` is ``VPDPBUSD`` (AVX512-VNNI / AVX-VNNI): four u8 x s8 products added straight
into an int32 accumulator lane, with no int16 step (wrapping on int32 overflow; the ``S``
form ``VPDPBUSDS`` saturates)::

    out[j] = acc[j] + sum_{i<4} a[4j+i] b[4j+i]                         (mod 2^32)

AVX-VNNI-INT8 (``VPDPBSSD`` ...) and AMX-INT8 (``TDPBSSD`` ...) also take s8 x s8.

>>> a = torch.tensor([255, 255], dtype=torch.uint8); b = torch.tensor([127, 127], dtype=torch.int8)
>>> int(maddubs(a, b)[0]), 2 * 255 * 127
(32767, 64770)
>>> int(dpbusd(torch.zeros(1, dtype=torch.int32), a.repeat(2), b.repeat(2))[0])
129540
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["maddubs", "dpbusd", "INT16_MIN", "INT16_MAX"]

INT16_MIN, INT16_MAX = -(2 ** 15), 2 ** 15 - 1


def _check(a: Tensor, b: Tensor, group: int) -> None:
    if a.dtype != torch.uint8 or b.dtype != torch.int8:
        raise TypeError(f"need a uint8 (activations) and b int8 (weights), got {a.dtype} and "
                        f"{b.dtype}: the instruction multiplies unsigned by signed bytes")
    if a.shape != b.shape or a.ndim == 0 or a.shape[-1] % group:
        raise ValueError(f"a and b need the same shape with a last dimension divisible by "
                         f"{group}, got {tuple(a.shape)} and {tuple(b.shape)}")


def maddubs(a: Tensor, b: Tensor) -> Tensor:
    """``VPMADDUBSW``: int16 (..., L/2) = saturate16(a[2j] b[2j] + a[2j+1] b[2j+1]).

    ``a`` uint8 (..., L), ``b`` int8 (..., L), L even."""
    _check(a, b, 2)
    prod = (a.to(torch.int32) * b.to(torch.int32)).unflatten(-1, (-1, 2)).sum(-1)
    return prod.clamp(INT16_MIN, INT16_MAX).to(torch.int16)


def dpbusd(acc: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``VPDPBUSD``: int32 (..., L/4) = acc + sum of each group of four u8 x s8 products,
    wrapping modulo 2^32 like the instruction. ``acc`` int32 (..., L/4)."""
    _check(a, b, 4)
    if acc.dtype != torch.int32 or acc.shape != (*a.shape[:-1], a.shape[-1] // 4):
        raise ValueError(f"acc must be int32 of shape {(*a.shape[:-1], a.shape[-1] // 4)}, "
                         f"got {acc.dtype} {tuple(acc.shape)}")
    quad = (a.to(torch.int64) * b.to(torch.int64)).unflatten(-1, (-1, 4)).sum(-1)
    total = acc.to(torch.int64) + quad
    return ((total + 2 ** 31) % 2 ** 32 - 2 ** 31).to(torch.int32)  # two's-complement wrap
