"""NF4, the 4-bit NormalFloat of QLoRA (Dettmers et al. 2023): a codebook for Gaussian weights.

Introduced in notebook 09. Trained weights are roughly N(0, sigma^2); after dividing a
block by its absmax they lie in [-1, 1]. NF4's 16 levels are *quantiles* of a standard
normal, so each level is used about equally often (an information-theoretically optimal
code for normal data), where int4's 16 evenly spaced levels waste codes on the tails::

    delta = (1/30 + 1/32) / 2        (keeps the outermost quantile finite: Q(1) = inf)
    p_i   = linspace(1 - delta, 1/2, 9)[:-1]   -> 8 positive levels  Q(p_i)
    r_i   = linspace(1 - delta, 1/2, 8)[:-1]   -> 7 negative levels -Q(r_i)
    code  = sort({-Q(r_i)} + {0} + {Q(p_i)}) / Q(1 - delta)       16 values in [-1, 1]

with Q the standard normal quantile function. It is asymmetric (8 positive, 7 negative
levels) so that 0 is exact. Blockwise absmax quantization (block = 64 values along the
last axis, as bitsandbytes)::

    absmax_b = max |w| over block b          (stored as float32: 32 bits / 64 = 0.5 bit/value)
    code_j   = argmin_c |w_j / absmax_b - NF4[c]|          w_hat_j = NF4[code_j] * absmax_b

Double quantization (the paper quantizes the absmax constants again, to 8-bit floats in
blocks of 256, 4.5 -> 4.127 bits per value) is *accounted* in :func:`nf4_packed_bytes`
but not performed: the absmax values here stay float32.

>>> w = torch.tensor([[0.5, -1.0, 0.1, 0.0]])
>>> nf4_fake_quantize(w, block_size=4)
tensor([[ 0.4407, -1.0000,  0.0796,  0.0000]])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["NF4_TABLE", "nf4_codebook", "nf4_quantize", "nf4_dequantize", "nf4_fake_quantize",
           "nf4_packed_bytes"]

#: The published NF4 table (QLoRA appendix; bitsandbytes ``functional.py`` / ``kernels.cu``).
#: :func:`nf4_codebook` rebuilds it from the normal quantiles to within 2e-7 (the table used
#: the rounded offset 0.9677083 and float32 probabilities).
NF4_TABLE = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0])


def nf4_codebook() -> Tensor:
    """The 16 NF4 levels computed from normal quantiles (formula above), float32 ascending.

    >>> torch.allclose(nf4_codebook(), NF4_TABLE, atol=1e-6)
    True
    """
    f64 = torch.float64
    zero, one = torch.tensor(0.0, dtype=f64), torch.tensor(1.0, dtype=f64)
    normal = torch.distributions.Normal(zero, one)                       # N(0, 1)
    offset = 1 - 0.5 * (1 / 30 + 1 / 32)
    pos = normal.icdf(torch.linspace(offset, 0.5, 9, dtype=f64)[:-1])    # 8 levels > 0
    neg = -normal.icdf(torch.linspace(offset, 0.5, 8, dtype=f64)[:-1])   # 7 levels < 0
    levels = torch.cat([neg, torch.zeros(1, dtype=f64), pos]).sort().values
    return (levels / levels.max()).float()


def _blocks(w: Tensor, block_size: int) -> Tensor:
    """(..., K) -> (..., K // block_size, block_size), after checking the arguments."""
    if not isinstance(w, Tensor):
        raise TypeError(f"w must be a torch.Tensor, got {type(w).__name__}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    if w.ndim == 0 or w.shape[-1] % block_size:
        raise ValueError(f"block_size={block_size} must divide the last axis of w (shape "
                         f"{tuple(w.shape)}); allowed: a divisor such as 32, 64 or 128")
    if not bool(torch.isfinite(w).all()):
        raise ValueError("w holds NaN or Inf; only finite values can be quantized")
    return w.detach().float().reshape(*w.shape[:-1], w.shape[-1] // block_size, block_size)


def nf4_quantize(w: Tensor, *, block_size: int = 64) -> tuple[Tensor, Tensor]:
    """Blockwise absmax NF4: (codes uint8 in 0..15 with w's shape, absmax (..., K // block)).

    Each value goes to the nearest level of :data:`NF4_TABLE` (an exact tie between two
    levels goes to the lower one). An all-zero block has absmax 0 and codes of 0.0.

    >>> codes, absmax = nf4_quantize(torch.tensor([[0.5, -1.0, 0.1, 0.0]]), block_size=4)
    >>> codes, absmax
    (tensor([[12,  0,  8,  7]], dtype=torch.uint8), tensor([[1.]]))
    """
    g = _blocks(w, block_size)                                  # (..., G, B)
    absmax = g.abs().amax(-1)                                   # (..., G)
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    x = g / safe.unsqueeze(-1)                                  # in [-1, 1]
    mids = (NF4_TABLE[1:] + NF4_TABLE[:-1]) / 2                 # (15,) decision points
    codes = torch.bucketize(x, mids)                            # nearest level's index
    return codes.reshape(w.shape).to(torch.uint8), absmax


def nf4_dequantize(codes: Tensor, absmax: Tensor, *, block_size: int = 64) -> Tensor:
    """w_hat = NF4_TABLE[code] * absmax of its block, float32, codes' shape."""
    levels = NF4_TABLE[codes.long()]
    g = _blocks(levels, block_size)
    if tuple(absmax.shape) != tuple(g.shape[:-1]):
        raise ValueError(f"absmax must have shape {tuple(g.shape[:-1])} for codes of shape "
                         f"{tuple(codes.shape)} and block_size={block_size}, got "
                         f"{tuple(absmax.shape)}")
    return (g * absmax.float().unsqueeze(-1)).reshape(codes.shape)


def nf4_fake_quantize(w: Tensor, *, block_size: int = 64) -> Tensor:
    """Round trip through NF4: nf4_dequantize(*nf4_quantize(w)), float32, w's shape."""
    codes, absmax = nf4_quantize(w, block_size=block_size)
    return nf4_dequantize(codes, absmax, block_size=block_size)


def nf4_packed_bytes(numel: int, block_size: int = 64, *, double_quant: bool = False) -> int:
    """Bytes of an NF4 tensor: 4-bit codes plus one absmax per block.

    Without double quantization each absmax is float32::

        ceil(numel / 2) + 4 * n_blocks                   (4 + 32/64 = 4.5 bits per value)

    with it (the paper's numbers, size only: not implemented here) each absmax is an 8-bit
    float and every 256 of them share one float32 constant::

        ceil(numel / 2) + n_blocks + 4 * ceil(n_blocks / 256)    (about 4.127 bits)

    >>> nf4_packed_bytes(4096 * 4096), nf4_packed_bytes(4096 * 4096, double_quant=True)
    (9437184, 8654848)
    """
    for name, v in (("numel", numel), ("block_size", block_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    n_blocks = math.ceil(numel / block_size)
    codes = math.ceil(numel / 2)
    if double_quant:
        return codes + n_blocks + 4 * math.ceil(n_blocks / 256)
    return codes + 4 * n_blocks
