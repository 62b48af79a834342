"""qlib.quant.analysis: per-layer weight and activation SQNR, checked against PyTorch's
fake-quant ops and a NumPy SQNR."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from qlib.models import mlp
from qlib.quant import calibrate, freeze, kmeans_quantize_model, quantize_model
from qlib.quant.analysis import activation_sqnr, weight_sqnr


def _sqnr_np(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    x, x_hat = x.detach().double().numpy(), x_hat.detach().double().numpy()
    return 10 * np.log10((x ** 2).sum() / ((x - x_hat) ** 2).sum())


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return mlp(in_features=20, hidden=16).eval()   # Flatten, Linear '1', ReLU, Linear '3'


def _calibrated(bits: int, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    q = quantize_model(_model(), 8, act_bits=bits)
    g = torch.Generator().manual_seed(seed)
    calibrate(q, [torch.randn(32, 20, generator=g) for _ in range(3)])
    return freeze(q), torch.randn(50, 20, generator=g)


def test_weight_sqnr_matches_torch_per_channel_fake_quant():
    q = quantize_model(_model(), 8)
    got = weight_sqnr(q)
    assert list(got) == ["1", "3"]
    for name in got:
        layer = q.get_submodule(name)
        ref = torch.fake_quantize_per_channel_affine(
            layer.weight.detach(), layer.weight_scale, layer.weight_zero_point.int(), 0,
            -128, 127)
        assert got[name] == pytest.approx(_sqnr_np(layer.weight, ref), abs=1e-6)


def test_weight_sqnr_grows_about_6_db_per_bit_and_per_channel_helps():
    model = _model()
    s4, s8 = weight_sqnr(quantize_model(model, 4)), weight_sqnr(quantize_model(model, 8))
    assert all(20 < s8[n] - s4[n] < 28 for n in s4)          # 4 bits x ~6 dB
    with torch.no_grad():                        # output channels of very different ranges
        for m in (model[1], model[3]):
            m.weight.mul_(torch.logspace(-1, 0, m.out_features).view(-1, 1))
    pc = weight_sqnr(quantize_model(model, 4))
    pt = weight_sqnr(quantize_model(model, 4, per_channel=False))
    assert all(pc[n] > pt[n] + 3 for n in pc)


def test_weight_sqnr_against_a_reference_model():
    model = _model()
    shared, books = kmeans_quantize_model(model, 3)
    got = weight_sqnr(shared, model)
    for name in ("1", "3"):
        assert got[name] == pytest.approx(
            _sqnr_np(model.get_submodule(name).weight, shared.get_submodule(name).weight))
    assert weight_sqnr(model, model) == {"1": math.inf, "3": math.inf}
    q = quantize_model(model, 4)                 # fake-quant layers compare fq(W) with W
    assert weight_sqnr(q, model) == pytest.approx(weight_sqnr(q))


def test_weight_sqnr_bad_input():
    with pytest.raises(ValueError, match="no fake-quant layer"):
        weight_sqnr(_model())
    with pytest.raises(ValueError, match="same Conv2d / Linear layers"):
        weight_sqnr(nn.Sequential(nn.Linear(20, 16)), _model())
    other = mlp(in_features=20, hidden=8)
    with pytest.raises(ValueError, match="shapes differ"):
        weight_sqnr(other, _model())


def test_activation_sqnr_matches_torch_fake_quant_on_each_layers_input():
    q, x = _calibrated(4)
    got = activation_sqnr(q, x)
    l1, l3 = q.get_submodule("1"), q.get_submodule("3")
    with torch.no_grad():
        inputs = {"1": q[0](x), "3": q[2](l1(q[0](x)))}   # what each layer receives
    for name, layer in (("1", l1), ("3", l3)):
        ref = torch.fake_quantize_per_tensor_affine(
            inputs[name], float(layer.act_scale), int(layer.act_zero_point), 0, 15)
        assert got[name] == pytest.approx(_sqnr_np(inputs[name], ref), abs=1e-6)
    assert not l1._forward_pre_hooks and not l3._forward_pre_hooks   # hooks removed


def test_activation_sqnr_pools_batches_and_grows_with_bits():
    q, x = _calibrated(4)
    whole = activation_sqnr(q, x)
    parts = activation_sqnr(q, list(x.split(7)))
    assert parts == pytest.approx(whole, rel=1e-5)   # float sums of other batch shapes
    q8, x8 = _calibrated(8)
    assert all(activation_sqnr(q8, x8)[n] > whole[n] + 10 for n in whole)


def test_activation_sqnr_bad_input():
    with pytest.raises(ValueError, match="no layer with quantized activations"):
        activation_sqnr(quantize_model(_model(), 8), torch.randn(4, 20))
    with pytest.raises(ValueError, match="not frozen"):
        activation_sqnr(quantize_model(_model(), 8, act_bits=8), torch.randn(4, 20))
    q, _ = _calibrated(8)
    with pytest.raises(ValueError, match="no images"):
        activation_sqnr(q, [])
