"""Tests for qlib.quant.smoothquant: smoothing is exact in float and follows the formula at
both ends of alpha, it makes per-tensor int8 activations work on outlier channels,
per-token scales beat per-tensor ones, LLM.int8() with no outliers is W8A8 per-token, and
bad input is refused."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import qlib
from qlib.quant.smoothquant import (LLMInt8Linear, W8A8Linear, activation_stats,
                                    fake_quantize_activations, llm_int8_linear,
                                    quantize_linears_w8a8, smooth_layernorm_linear,
                                    smooth_model, smooth_scales)

D = 32
OUTLIERS = (3, 17)  # input channels that are ~50x louder, as after a transformer LayerNorm


@pytest.fixture(autouse=True)
def _seed() -> None:
    qlib.set_seed(0)


class Block(nn.Module):
    """LayerNorm feeding two Linears (q and k style), then a head that stays float."""

    def __init__(self) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(D)
        self.q, self.k, self.lm_head = nn.Linear(D, 16), nn.Linear(D, 16), nn.Linear(32, 4)
        with torch.no_grad():  # LayerNorm gains make the outlier channels, as in real LLMs
            self.ln.weight.uniform_(0.5, 1.5)
            self.ln.bias.uniform_(-0.1, 0.1)
            for c, g in zip(OUTLIERS, (60.0, -40.0)):
                self.ln.weight[c] = g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(x)
        return self.lm_head(torch.cat([self.q(h), self.k(h)], dim=-1))


def _batches(n: int = 2) -> list[torch.Tensor]:
    return [torch.randn(4, 16, D) for _ in range(n)]


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


# ----- smoothing ----------------------------------------------------------------------

def test_smoothing_is_exact_before_quantization() -> None:
    model, x = Block(), torch.randn(3, 16, D)
    before = model(x)
    stats = activation_stats(model, {"q": model.q}, _batches())
    s = smooth_layernorm_linear(model.ln, [model.q, model.k], stats["q"].absmax, 0.5)
    assert torch.allclose(model(x), before, rtol=1e-5, atol=1e-5)
    assert s[list(OUTLIERS)].min() > 3 * s.median()     # the outliers are divided down most


def test_smooth_model_takes_names() -> None:
    model, x = Block(), torch.randn(3, 16, D)
    before = model(x)
    scales = smooth_model(model, {"ln": ["q", "k"]}, _batches(), alpha=0.5)
    assert list(scales) == ["ln"] and scales["ln"].shape == (D,)
    assert torch.allclose(model(x), before, rtol=1e-5, atol=1e-5)


def test_smoothing_meets_in_the_middle_at_half_alpha() -> None:
    model, batches = Block(), _batches()
    a = activation_stats(model, {"q": model.q}, batches)["q"].absmax
    w = torch.cat([model.q.weight, model.k.weight]).detach().abs().amax(0)
    smooth_layernorm_linear(model.ln, [model.q, model.k], a, 0.5)
    a_new = activation_stats(model, {"q": model.q}, batches)["q"].absmax
    w_new = torch.cat([model.q.weight, model.k.weight]).detach().abs().amax(0)
    # max|X_j / s_j| = max|W_j| s_j = sqrt(max|X_j| max|W_j|)
    assert torch.allclose(a_new, (a * w).sqrt(), rtol=1e-4)
    assert torch.allclose(w_new, (a * w).sqrt(), rtol=1e-4)


def test_alpha_endpoints_follow_the_formula() -> None:
    a, w = torch.tensor([4.0, 0.5, 0.0]), torch.tensor([[2.0, -0.25, 1.0], [-1.0, 0.1, 0.0]])
    w_max = torch.tensor([2.0, 0.25, 1.0])
    assert torch.allclose(smooth_scales(a, w, alpha=1.0), a.clamp(min=1e-5))  # X fully moved
    assert torch.allclose(smooth_scales(a, w, alpha=0.0), 1 / w_max)          # W fully moved
    assert torch.allclose(smooth_scales(a, [w[:1], w[1:]], 0.3), smooth_scales(a, w, 0.3))
    dead = smooth_scales(torch.zeros(3), torch.zeros(2, 3), 0.5)             # clamps: finite
    assert bool(torch.isfinite(dead).all()) and bool((dead > 0).all())


def test_smoothing_rescues_per_tensor_w8a8() -> None:
    model, x = Block(), torch.randn(4, 16, D)
    ref = model(x)
    plain = _rel_err(quantize_linears_w8a8(model, "per-tensor")(x), ref)
    smooth_model(model, {"ln": ["q", "k"]}, _batches(), alpha=0.5)
    smoothed = _rel_err(quantize_linears_w8a8(model, "per-tensor")(x), ref)
    assert smoothed < plain / 3


# ----- activation quantization --------------------------------------------------------

def test_per_token_error_at_most_per_tensor_with_an_outlier_channel() -> None:
    x = torch.randn(64, D) * torch.logspace(-1, 0.5, 64)[:, None]  # loud and quiet tokens
    x[:, 5] *= 30                                                   # one outlier channel
    err = {g: float((fake_quantize_activations(x, g) - x).pow(2).sum())
           for g in ("per-tensor", "per-token")}
    assert err["per-token"] <= err["per-tensor"]
    lin = nn.Linear(D, 8)
    ref = lin(x)
    assert _rel_err(W8A8Linear(lin, "per-token")(x), ref) <= \
        _rel_err(W8A8Linear(lin, "per-tensor")(x), ref)


def test_llm_int8_without_outliers_is_w8a8_per_token() -> None:
    lin, x = nn.Linear(D, 8), torch.randn(2, 10, D)
    x[..., 7] *= 40
    same = LLMInt8Linear(lin, threshold=math.inf)(x)
    assert torch.equal(same, W8A8Linear(lin, "per-token")(x))
    mixed = LLMInt8Linear(lin, threshold=6.0)
    ref = lin(x)
    assert _rel_err(mixed(x), ref) < _rel_err(same, ref) / 3   # the outlier stays float
    assert mixed.outlier_columns >= 1
    assert torch.allclose(llm_int8_linear(x, lin.weight, lin.bias), mixed(x))


def test_static_granularity_uses_the_calibrated_max() -> None:
    model, batches = Block(), _batches()
    q = quantize_linears_w8a8(model, "static", batches=batches)
    stats = activation_stats(model, {"q": model.q}, batches)
    assert q.q.act_absmax == pytest.approx(stats["q"].max)
    x = torch.randn(2, 16, D)
    assert _rel_err(q(x), model(x)) < 0.1


def test_quantize_linears_w8a8_returns_a_copy() -> None:
    model = Block()
    q = quantize_linears_w8a8(model, "per-token")
    assert type(q.q) is W8A8Linear and type(q.k) is W8A8Linear
    assert type(q.lm_head) is nn.Linear and type(model.q) is nn.Linear  # excluded; untouched
    assert type(quantize_linears_w8a8(model, llm_int8_threshold=6.0).k) is LLMInt8Linear
    # weights are int8 per output channel: at most 256 distinct multiples of each row's step
    w, step = q.q.weight, model.q.weight.detach().abs().amax(1, keepdim=True) / 127.5
    assert torch.allclose(w / step, (w / step).round(), atol=1e-3)


def test_activation_stats() -> None:
    lin = nn.Linear(D, 4)
    x = torch.randn(200, 50, D)
    st = activation_stats(lin, {"": lin}, [x])[""]
    assert torch.allclose(st.absmax, x.reshape(-1, D).abs().amax(0))
    assert st.max == pytest.approx(float(x.abs().max())) and st.count == 10_000
    assert st.kurtosis == pytest.approx(3.0, abs=0.1)                 # Gaussian
    x[..., 0] *= 50
    assert activation_stats(lin, {"": lin}, [x])[""].kurtosis > 20  # an outlier channel


# ----- bad input ----------------------------------------------------------------------

def test_bad_input_is_refused() -> None:
    lin, a = nn.Linear(D, 4), torch.ones(D)
    with pytest.raises(ValueError, match="alpha"):
        smooth_scales(a, lin.weight, alpha=1.5)
    with pytest.raises(ValueError, match="in=32"):
        smooth_scales(a, torch.ones(4, 7))
    with pytest.raises(ValueError, match=">= 0"):
        smooth_scales(-a, lin.weight)
    with pytest.raises(ValueError, match="granularity"):
        fake_quantize_activations(torch.randn(3, D), "per-row")
    with pytest.raises(ValueError, match="granularity"):
        W8A8Linear(lin, "per-channel")
    with pytest.raises(ValueError, match="act_absmax"):
        W8A8Linear(lin, "static")
    with pytest.raises(ValueError, match="NaN"):
        W8A8Linear(lin)(torch.full((2, D), float("nan")))
    with pytest.raises(ValueError, match="elementwise_affine"):
        smooth_layernorm_linear(nn.LayerNorm(D, elementwise_affine=False), [lin], a)
    with pytest.raises(ValueError, match="normalizes"):
        smooth_layernorm_linear(nn.LayerNorm(8), [lin], a)
    with pytest.raises(ValueError, match="disagree"):
        llm_int8_linear(torch.randn(2, 5), lin.weight)
    with pytest.raises(ValueError, match="empty"):
        activation_stats(lin, {"": lin}, [])
    with pytest.raises(ValueError, match="NaN"):
        activation_stats(lin, {"": lin}, [torch.full((2, D), float("nan"))])
    with pytest.raises(ValueError, match="calibration"):
        quantize_linears_w8a8(Block(), "static")
    with pytest.raises(ValueError, match="per-token"):
        quantize_linears_w8a8(Block(), "per-tensor", llm_int8_threshold=6.0)
    with pytest.raises(ValueError, match="not have"):
        smooth_model(Block(), {"ln": ["v"]}, _batches())
