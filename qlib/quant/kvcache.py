"""Quantizing the KV cache: keys per channel, values per token.

Introduced in notebook 10. While decoding, every layer keeps the keys and values of all
past tokens, k and v of shape (B, H, T, hd). Their memory, in bytes::

    2 (k and v) * n_layer * batch * seq_len * n_head * head_dim * bits / 8   (+ scales)

grows with the context and the batch and, for long contexts, outgrows the weights.
Storing them in b bits divides it by 16 / b. Each group of G values gets a scale and a
float offset (asymmetric min-max, as KIVI, Liu et al. 2024)::

    scale = (max - min) / (2^b - 1),  q = round((x - min) / scale) in [0, 2^b - 1]
    x_hat = q * scale + min,          so |x - x_hat| <= scale / 2

    per-token    one group per (b, h, t): the hd channels of one token (or G of them)
    per-channel  one group per (b, h, channel): that channel over the T tokens (or G of them)

**Keys are the harder half.** In large pretrained LLMs a few fixed channels of K are large
in every token (outlier channels, reported by KIVI and KVQuant), so a per-token scale is
set by the outlier and rounds the other channels of the token to a few levels; a
per-channel scale gives the outlier its own range. Values have no fixed outlier channels,
and attention mixes whole value vectors of tokens, so values go per token. Hence keys per
channel, values per token. (A small model may show little of this: measure it, and
compare granularities at equal group sizes.)
**Why asymmetric:** a group is rarely centred at 0 (an outlier channel keeps one sign), and
a symmetric grid spends half its levels on values that never occur: at 4 bits the step
doubles. The offset is a float (torchao's zero point "in the float domain"), so the range
is exactly [min, max], not widened to include 0. ``symmetric=True`` gives the signed
zero-point-0 grid of :func:`qlib.quant.choose_qparams` for comparison.

>>> t = torch.arange(4.0)[:, None]                      # 4 tokens, channel 1 an outlier
>>> k = torch.cat([t, 30 + t, 3 - t], dim=1)[None, None]   # (B=1, H=1, T=4, hd=3)
>>> fake_quantize_kv(k, k, 2, "per-channel")[0][0, 0]      # 2 bits: 4 levels per channel
tensor([[ 0., 30.,  3.],
        [ 1., 31.,  2.],
        [ 2., 32.,  1.],
        [ 3., 33.,  0.]])
>>> fake_quantize_kv(k, k, 2, "per-token")[0][0, 0, :, 2]  # the outlier sets the step: 10
tensor([0., 1., 1., 0.])
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .._util import check_bits, check_finite, check_int, check_tensor
from .affine import EPS, choose_qparams, dequantize, quantize

__all__ = ["KV_GRANULARITIES", "QuantizedKV", "quantize_kv", "dequantize_kv",
           "fake_quantize_kv", "kv_cache_bytes"]

#: The granularities of :func:`quantize_kv`.
KV_GRANULARITIES = ("per-token", "per-channel")


class QuantizedKV(NamedTuple):
    """Keys or values (B, H, T, hd) as integer codes plus one scale and offset per group."""

    codes: Tensor      # (B, H, T, hd) integers: uint8 / int8 for bits <= 8, else int32
    scale: Tensor      # per-token (B, H, T, hd // G); per-channel (B, H, hd, T // G)
    offset: Tensor     # like scale: the group minimum (asymmetric), zeros (symmetric)
    bits: int
    granularity: str
    group_size: int    # G
    symmetric: bool


def _check_kv(t: Tensor, name: str, granularity: str) -> None:
    check_tensor(t, name)
    if t.ndim != 4 or not t.is_floating_point() or t.numel() == 0:
        raise ValueError(f"{name} must be a non-empty float tensor (B, H, T, head_dim), got "
                         f"shape {tuple(t.shape)}, {t.dtype}")
    check_finite(t, name)
    if granularity not in KV_GRANULARITIES:
        raise ValueError(f"granularity must be one of {KV_GRANULARITIES}, got {granularity!r}")


def _rows(t: Tensor, granularity: str, group_size: int | None) -> tuple[Tensor, int]:
    """The groups as rows: (R, G), each row one group; G defaults to the whole hd (or T)."""
    base = t if granularity == "per-token" else t.transpose(-1, -2)   # (B,H,T,hd) / (B,H,hd,T)
    length = base.shape[-1]
    g = length if group_size is None else check_int(group_size, "group_size", 1)
    if length % g:
        axis = "head_dim" if granularity == "per-token" else "T (tokens)"
        raise ValueError(f"group_size={g} must divide {axis} = {length} for {granularity} "
                         "quantization")
    return base.reshape(-1, g), g


def quantize_kv(t: Tensor, bits: int = 8, granularity: str = "per-token", *,
                group_size: int | None = None, symmetric: bool = False) -> QuantizedKV:
    """Quantize keys or values ``t`` (B, H, T, hd) with one scale (and offset) per group.

    Introduced in notebook 10. ``granularity`` "per-token" groups the hd channels of each
    token, "per-channel" each channel's T tokens; ``group_size`` splits those into groups
    of G (it must divide hd or T). Asymmetric by default (see the module docstring).

    >>> q = quantize_kv(torch.tensor([[[[0.0, 1.0, 2.0, 3.0]]]]), bits=2)
    >>> q.codes, q.scale, q.offset
    (tensor([[[[0, 1, 2, 3]]]], dtype=torch.uint8), tensor([[[[1.]]]]), tensor([[[[0.]]]]))
    """
    _check_kv(t, "t", granularity)
    check_bits(bits)
    rows, g = _rows(t.detach().float(), granularity, group_size)          # (R, G)
    lo, hi = rows.amin(1), rows.amax(1)                                   # (R,)
    if symmetric:  # signed grid around 0: scale = max|x| / ((qmax - qmin) / 2)
        absmax = torch.maximum(-lo, hi)
        scale, zp = choose_qparams(-absmax, absmax, bits, symmetric=True)
        offset = torch.zeros_like(lo)
        codes = quantize(rows, scale, zp, bits, axis=0)
    else:          # unsigned grid on [min, max]: x - min in [0, (2^b - 1) * scale]
        scale = ((hi - lo) / (2 ** bits - 1)).clamp(min=EPS)
        offset = lo
        codes = quantize(rows - lo[:, None], scale, torch.zeros_like(lo, dtype=torch.int64),
                         bits, signed=False, axis=0)
    b, h, n_tok, hd = t.shape
    if granularity == "per-token":
        codes, meta = codes.reshape(b, h, n_tok, hd), (b, h, n_tok, hd // g)
    else:
        codes, meta = codes.reshape(b, h, hd, n_tok).transpose(-1, -2), (b, h, hd, n_tok // g)
    small = torch.int8 if symmetric else torch.uint8
    codes = codes.to(small if bits <= 8 else torch.int32)
    return QuantizedKV(codes, scale.reshape(meta), offset.reshape(meta), bits, granularity, g,
                       symmetric)


def dequantize_kv(q: QuantizedKV) -> Tensor:
    """The float32 tensor (B, H, T, hd) back from :func:`quantize_kv`: q * scale + offset.

    Introduced in notebook 10.

    >>> t = torch.randn(2, 3, 8, 4); q = quantize_kv(t, 8, "per-channel")
    >>> bool(((dequantize_kv(q) - t).abs() <= q.scale.amax() / 2 + 1e-6).all())
    True
    """
    if q.granularity not in KV_GRANULARITIES:
        raise ValueError(f"granularity must be one of {KV_GRANULARITIES}, "
                         f"got {q.granularity!r}")
    codes = q.codes if q.granularity == "per-token" else q.codes.transpose(-1, -2)
    rows = codes.reshape(-1, q.group_size).to(torch.int32)                # (R, G)
    scale, offset = q.scale.reshape(-1), q.offset.reshape(-1)             # (R,)
    x = dequantize(rows, scale, torch.zeros_like(scale, dtype=torch.int64), axis=0)
    x = (x + offset[:, None]).reshape(codes.shape)
    return x if q.granularity == "per-token" else x.transpose(-1, -2)


def fake_quantize_kv(k: Tensor, v: Tensor, bits: int = 4, key_granularity: str = "per-channel",
                     value_granularity: str = "per-token", *,
                     key_group_size: int | None = None, value_group_size: int | None = None,
                     symmetric: bool = False) -> tuple[Tensor, Tensor]:
    """Keys and values (B, H, T, hd) after a quantization round trip, as float (dtype kept).

    Introduced in notebook 10. Defaults: KIVI's keys per channel, values per token; the
    group sizes split the groups as ``group_size`` of :func:`quantize_kv`. A quantized
    cache calls this in its ``load`` (or :func:`quantize_kv` in ``store`` to really keep
    the codes). Per-channel groups span tokens, so a cache that adds one token at a time
    quantizes a key group once G tokens have arrived (KIVI keeps the newest ones in
    float). Example: the module docstring.
    """
    _check_kv(k, "k", key_granularity)
    _check_kv(v, "v", value_granularity)
    kq = dequantize_kv(quantize_kv(k, bits, key_granularity, group_size=key_group_size,
                                   symmetric=symmetric))
    vq = dequantize_kv(quantize_kv(v, bits, value_granularity, group_size=value_group_size,
                                   symmetric=symmetric))
    return kq.to(k.dtype), vq.to(v.dtype)


def kv_cache_bytes(n_layer: int, n_head: int, head_dim: int, seq_len: int, batch: int = 1,
                   bits: int = 16, *, group_size: int | None = None, scale_bytes: int = 2,
                   symmetric: bool = False) -> int:
    """Bytes of a KV cache: 2 * n_layer * batch * seq_len * n_head * head_dim * bits / 8.

    Introduced in notebook 10. With ``group_size`` G, each group of G values also stores a
    scale (and, asymmetric, an offset) of ``scale_bytes`` each; ``None``: no scales (a
    float cache). The grouping direction does not change the count.

    >>> kv_cache_bytes(n_layer=12, n_head=12, head_dim=64, seq_len=1024)   # GPT-2 small, fp16
    37748736
    >>> kv_cache_bytes(12, 12, 64, 1024, bits=4, group_size=64)  # int4 + fp16 scale, offset
    10616832
    """
    for name, value in (("n_layer", n_layer), ("n_head", n_head), ("head_dim", head_dim),
                        ("seq_len", seq_len), ("batch", batch), ("scale_bytes", scale_bytes)):
        check_int(value, name, 1)
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 32:
        raise ValueError(f"bits must be an int in 1..32 (16: fp16, 32: fp32), got {bits!r}")
    values = 2 * n_layer * batch * seq_len * n_head * head_dim
    total = math.ceil(values * bits / 8)
    if group_size is not None:
        groups = math.ceil(values / check_int(group_size, "group_size", 1))
        total += groups * scale_bytes * (1 if symmetric else 2)
    return total
