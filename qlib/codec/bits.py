"""Bit packing: b-bit integers as a dense byte stream, the one bit packer of the course.

Introduced in notebook 02 (packed quantized weights) and used by the sparse format's
bitmask (notebook 05). ``b``-bit integers are stored 8 / b per byte.

Bit layout: the value v_i (offset to be non-negative, v_i = q_i - qmin, where qmin is
-2^(b-1) for signed and 0 for unsigned values) occupies bits [i*b, (i+1)*b) of the stream,
least significant bit first; byte j holds stream bits [8j, 8j + 8), also LSB first (the
1-bit case equals ``numpy.packbits(bitorder="little")``).

>>> p = pack_bits(torch.tensor([1, 2, 3, 0]), 2, signed=False)
>>> p, unpack_bits(p, 2, 4, signed=False)
(tensor([57], dtype=torch.uint8), tensor([1, 2, 3, 0], dtype=torch.int32))
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._util import check_bits

__all__ = ["pack_bits", "unpack_bits"]


def _range(bits: int, signed: bool) -> tuple[int, int]:
    check_bits(bits)
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def pack_bits(q: Tensor, bits: int, *, signed: bool = True) -> Tensor:
    """Pack integers in qrange(bits, signed) into a uint8 bit stream ((numel * bits + 7) // 8,).

    ValueError if a value is outside the range. 4-bit weights take half a byte each.
    """
    qmin, qmax = _range(bits, signed)
    v = q.reshape(-1).to(torch.int64)
    if v.numel() and (int(v.min()) < qmin or int(v.max()) > qmax):
        raise ValueError(f"values must lie in qrange({bits}, signed={signed}) = [{qmin}, "
                         f"{qmax}], got [{int(v.min())}, {int(v.max())}]")
    v = v - qmin
    stream = ((v.unsqueeze(1) >> torch.arange(bits)) & 1).to(torch.uint8).reshape(-1)
    stream = torch.cat([stream, stream.new_zeros(-stream.numel() % 8)]).view(-1, 8)
    return (stream.to(torch.int32) << torch.arange(8, dtype=torch.int32)).sum(1).to(torch.uint8)


def unpack_bits(packed: Tensor, bits: int, numel: int, *, signed: bool = True) -> Tensor:
    """Inverse of :func:`pack_bits`: the first ``numel`` values, int32 (numel,)."""
    qmin, _ = _range(bits, signed)
    if packed.dtype != torch.uint8 or packed.ndim != 1:
        raise ValueError(f"packed must be a 1-d uint8 tensor, got {packed.dtype} "
                         f"{tuple(packed.shape)}")
    if packed.numel() * 8 < numel * bits:
        raise ValueError(f"{packed.numel()} bytes hold fewer than {numel} values of {bits} bits")
    stream = ((packed.to(torch.int64).unsqueeze(1) >> torch.arange(8)) & 1).reshape(-1)
    stream = stream[: numel * bits].view(numel, bits)
    return ((stream << torch.arange(bits)).sum(1) + qmin).to(torch.int32)
