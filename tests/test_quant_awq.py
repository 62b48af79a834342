"""AWQ: alpha = 0 is RTN, the search never loses on calibration, and salient inputs win."""

from __future__ import annotations

import pytest
import torch

from qlib.quant.awq import awq_apply, awq_quantize, awq_scales
from qlib.quant.weightonly import rtn_quantize

OUT, IN = 64, 256


@pytest.fixture(scope="module")
def layer():
    """Random W; Gaussian inputs where 4 of 256 channels are 30x larger (salient)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(OUT, IN, generator=g)
    col = torch.ones(IN)
    col[torch.randperm(IN, generator=g)[:4]] = 30.0

    def inputs(n: int) -> torch.Tensor:
        return torch.randn(n, IN, generator=g) * col

    return w, inputs(1024), inputs(1024)                      # W, calibration, held out


def _rtn(bits: int, group_size: int | None):
    return lambda v: rtn_quantize(v, bits, group_size=group_size).weight


def _mse(w, w_hat, x) -> float:
    return float(((x @ (w - w_hat).T) ** 2).mean())


def test_scales_of_alpha_zero_are_one_and_awq_then_equals_rtn(layer):
    w, x, _ = layer
    s = awq_scales(x, 0.0)
    assert torch.equal(s, torch.ones(IN))
    quant = _rtn(4, 64)
    assert torch.equal(awq_apply(w, s, quant), quant(w))
    r = awq_quantize(w, x, quant, n_grid=1)                   # the grid is {0}
    assert r.alpha == 0.0 and torch.equal(r.weight, quant(w)) and r.clip is None


def test_scales_follow_mean_abs_activation(layer):
    _, x, _ = layer
    s = awq_scales(x, 0.5)
    raw = x.abs().mean(0).sqrt()
    assert torch.allclose(s, raw / (raw.max() * raw.min()).sqrt(), rtol=1e-6, atol=0)
    assert float(s.max() * s.min()) == pytest.approx(1.0)      # normalised around 1


@pytest.mark.parametrize("bits,group_size", [(4, 64), (3, None)])
def test_search_never_loses_on_calibration_and_wins_held_out(layer, bits, group_size):
    w, x_cal, x_test = layer
    quant = _rtn(bits, group_size)
    r = awq_quantize(w, x_cal, quant)
    assert r.errors.shape == (20,) and r.alpha in [k / 20 for k in range(20)]
    assert r.alpha > 0
    assert _mse(w, r.weight, x_cal) == pytest.approx(float(r.errors.min()), rel=1e-5)
    assert float(r.errors.min()) <= float(r.errors[0])        # alpha = 0 is on the grid
    rtn_test, awq_test = _mse(w, quant(w), x_test), _mse(w, r.weight, x_test)
    assert awq_test < 0.6 * rtn_test                          # measured: 0.27-0.33 of RTN


def test_optional_clip_search(layer):
    w, x_cal, x_test = layer
    quant = _rtn(3, 64)
    plain = awq_quantize(w, x_cal, quant)
    clipped = awq_quantize(w, x_cal, quant, clip=True, clip_group_size=64)
    assert clipped.alpha == plain.alpha and clipped.clip.shape == (OUT, IN // 64)
    ws = w * clipped.scales
    amax = ws.reshape(OUT, -1, 64).abs().amax(-1)
    assert bool((clipped.clip <= amax).all()) and bool((clipped.clip >= 0.5 * amax).all())
    assert _mse(w, clipped.weight, x_test) < _mse(w, plain.weight, x_test) * 1.05


def test_deterministic_and_bad_arguments(layer):
    w, x, _ = layer
    quant = _rtn(4, 64)
    a, b = awq_quantize(w, x[:256], quant, n_grid=5), awq_quantize(w, x[:256], quant, n_grid=5)
    assert torch.equal(a.weight, b.weight) and a.alpha == b.alpha
    with pytest.raises(ValueError, match="clip=True needs clip_group_size"):
        awq_quantize(w, x, quant, clip=True)
    with pytest.raises(ValueError, match=r"x must be a non-empty \(tokens, 256\)"):
        awq_quantize(w, x[:, :8], quant)
    with pytest.raises(ValueError, match="n_grid must be a positive int"):
        awq_quantize(w, x, quant, n_grid=0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        awq_quantize(w, torch.full_like(x, float("nan")), quant)
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        awq_scales(x, 1.5)
