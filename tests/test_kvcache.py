"""Tests for qlib.quant.kvcache: the round trip is within half a step, the memory formula,
8 bits are far better than 4, keys with outlier channels want per-channel scales and
values per-token ones, and bad input is refused."""

from __future__ import annotations

import pytest
import torch

import qlib
from qlib.quant.kvcache import (QuantizedKV, dequantize_kv, fake_quantize_kv, kv_cache_bytes,
                                quantize_kv)


@pytest.fixture(autouse=True)
def _seed() -> None:
    qlib.set_seed(0)


def _keys(b: int = 2, h: int = 3, t: int = 32, hd: int = 16) -> torch.Tensor:
    """Keys with two fixed outlier channels (large, one sign, in every token)."""
    k = torch.randn(b, h, t, hd)
    k[..., 2] = 20 + 3 * torch.randn(b, h, t)
    k[..., 9] = -15 + 2 * torch.randn(b, h, t)
    return k


def _values(b: int = 2, h: int = 3, t: int = 32, hd: int = 16) -> torch.Tensor:
    """Values without outlier channels but with loud and quiet tokens."""
    return torch.randn(b, h, t, hd) * torch.logspace(-1, 1, t)[:, None]


def _step(q: QuantizedKV) -> torch.Tensor:
    """Each element's scale, shaped like the tensor."""
    s = q.scale.repeat_interleave(q.group_size, dim=-1)
    return s if q.granularity == "per-token" else s.transpose(-1, -2)


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean())


@pytest.mark.parametrize("granularity", ["per-token", "per-channel"])
@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group_size", [None, 4])
def test_round_trip_within_half_a_step(granularity: str, bits: int, symmetric: bool,
                                       group_size: int | None) -> None:
    t = _keys()
    q = quantize_kv(t, bits, granularity, group_size=group_size, symmetric=symmetric)
    x = dequantize_kv(q)
    assert x.shape == t.shape and x.dtype == torch.float32
    assert bool(((x - t).abs() <= _step(q) / 2 + 1e-5 * t.abs() + 1e-6).all())
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)
    codes = q.codes.int()
    assert int(codes.min()) >= lo and int(codes.max()) <= hi
    assert q.codes.dtype == (torch.int8 if symmetric else torch.uint8)
    n_groups = t.numel() // (q.group_size)
    assert q.scale.numel() == n_groups and q.offset.shape == q.scale.shape


def test_scale_shapes() -> None:
    t = torch.randn(2, 3, 8, 16)
    assert quantize_kv(t, 4, "per-token").scale.shape == (2, 3, 8, 1)
    assert quantize_kv(t, 4, "per-token", group_size=4).scale.shape == (2, 3, 8, 4)
    assert quantize_kv(t, 4, "per-channel").scale.shape == (2, 3, 16, 1)
    assert quantize_kv(t, 4, "per-channel", group_size=2).scale.shape == (2, 3, 16, 4)


def test_int8_error_is_far_below_int4() -> None:
    k, v = _keys(), _values()
    k8, v8 = fake_quantize_kv(k, v, 8)
    k4, v4 = fake_quantize_kv(k, v, 4)
    # each bit halves the step: 4 more bits, 16x smaller step, ~256x smaller squared error
    assert _mse(k8, k) < _mse(k4, k) / 100 and _mse(v8, v) < _mse(v4, v) / 100


def test_keys_per_channel_values_per_token() -> None:
    k, v = _keys(), _values()
    k_tok, v_tok = fake_quantize_kv(k, v, 4, "per-token", "per-token")
    k_ch, v_ch = fake_quantize_kv(k, v, 4, "per-channel", "per-channel")
    assert _mse(k_ch, k) < _mse(k_tok, k) / 4       # outlier channels: per channel wins
    assert _mse(v_tok, v) < _mse(v_ch, v) / 2       # loud tokens: per token wins


def test_asymmetric_beats_symmetric_on_offset_groups() -> None:
    k = _keys()
    asym, _ = fake_quantize_kv(k, k, 4, "per-channel")
    sym, _ = fake_quantize_kv(k, k, 4, "per-channel", symmetric=True)
    assert _mse(asym, k) < _mse(sym, k)


def test_fake_quantize_kv_keeps_shape_and_dtype() -> None:
    k = torch.randn(1, 2, 4, 8, dtype=torch.float64)
    kq, vq = fake_quantize_kv(k, k.clone(), 8)
    assert kq.shape == k.shape and kq.dtype == torch.float64 and vq.dtype == torch.float64


def test_memory_formula() -> None:
    # 2 (k, v) * layers * batch * tokens * heads * head_dim * bytes per value
    assert kv_cache_bytes(4, 4, 32, 256, batch=8, bits=16) == 2 * 4 * 8 * 256 * 4 * 32 * 2
    assert kv_cache_bytes(4, 4, 32, 256, batch=8, bits=32) == 2 * 4 * 8 * 256 * 4 * 32 * 4
    values = 2 * 4 * 8 * 256 * 4 * 32
    assert kv_cache_bytes(4, 4, 32, 256, 8, bits=8, group_size=32) == values + values // 32 * 4
    assert kv_cache_bytes(4, 4, 32, 256, 8, bits=4, group_size=32, symmetric=True) == \
        values // 2 + values // 32 * 2
    assert kv_cache_bytes(1, 1, 1, 1, bits=3) == 1                      # 6 bits round up


@pytest.mark.parametrize("call, match", [
    (lambda: quantize_kv(torch.randn(2, 8, 4), 8), "B, H, T"),
    (lambda: quantize_kv(torch.randn(1, 1, 4, 8), 0), "bits"),
    (lambda: quantize_kv(torch.randn(1, 1, 4, 8), 17), "bits"),
    (lambda: quantize_kv(torch.randn(1, 1, 4, 8), 8, "per-head"), "granularity"),
    (lambda: quantize_kv(torch.randn(1, 1, 4, 8), 8, group_size=3), "divide head_dim"),
    (lambda: quantize_kv(torch.randn(1, 1, 6, 8), 8, "per-channel", group_size=4),
     "divide T"),
    (lambda: quantize_kv(torch.full((1, 1, 4, 8), float("nan")), 8), "NaN"),
    (lambda: quantize_kv(torch.ones(1, 1, 4, 8, dtype=torch.int64), 8), "float"),
    (lambda: fake_quantize_kv(torch.randn(1, 1, 4, 8), torch.randn(4, 8), 4), "v must"),
    (lambda: kv_cache_bytes(0, 4, 32, 256), "n_layer"),
    (lambda: kv_cache_bytes(4, 4, 32, 256, bits=64), "bits"),
    (lambda: kv_cache_bytes(4, 4, 32, 256, group_size=0), "group_size"),
])
def test_bad_input_is_refused(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
