"""Weight-only quantization: RTN, packed size, calibration hooks and the model driver."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qlib.quant.affine import choose_qparams, fake_quantize, minmax, qrange
from qlib.quant.weightonly import (METHODS, calibration_inputs, packed_bytes,
                                   quantize_linear_weights, rtn_quantize)


class TwoLayer(nn.Module):
    """Registered b then a, called a then b: forward order differs from definition order."""

    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Linear(128, 64)
        self.a = nn.Linear(64, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = TwoLayer()
    g = torch.Generator().manual_seed(1)
    mix = torch.randn(64, 64, generator=g) / 8
    col = torch.ones(64)
    col[:3] = 10.0                                            # a few salient input channels

    def batch() -> torch.Tensor:                              # (batch, tokens, features)
        return (torch.randn(8, 32, 64, generator=g) @ mix) * col

    return model, [batch() for _ in range(4)], torch.cat([batch() for _ in range(4)])


def test_rtn_is_min_max_affine_per_channel_and_per_group():
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(0))
    for gran in ({"axis": 0}, {"group_size": 32}):
        gs = gran.get("group_size")
        r = rtn_quantize(w, 4, group_size=gs)
        scale, zp = choose_qparams(*minmax(w, **gran), 4)
        assert torch.equal(r.weight, fake_quantize(w, scale, zp, 4, **gran))
        assert torch.equal(r.scale, scale) and torch.equal(r.zero_point, zp)
        lo, hi = qrange(4)
        assert int(r.codes.min()) >= lo and int(r.codes.max()) <= hi
    err = {(b, gs): float(((w - rtn_quantize(w, b, group_size=gs).weight) ** 2).sum())
           for b in (8, 4, 3) for gs in (None, 32)}
    assert err[8, None] < err[4, None] < err[3, None]
    assert err[4, 32] < err[4, None] and err[3, 32] < err[3, None]
    sym = rtn_quantize(w, 4, group_size=32, symmetric=True)
    assert bool((sym.zero_point == 0).all())


def test_packed_bytes_formula():
    assert packed_bytes(64, 128, 4) == 64 * 128 // 2 + 64 * 2 + 64 * 4 // 8
    assert packed_bytes(64, 128, 4, 32) == 4096 + 256 * 2 + 128
    assert packed_bytes(64, 128, 4, 32, symmetric=True) == 4096 + 256 * 2
    assert packed_bytes(64, 128, 3, 128, scale_dtype=torch.float32) == 3072 + 64 * 4 + 24
    assert packed_bytes(3, 3, 3) == 4 + 3 * 2 + 2                # ceil(27 / 8), ceil(9 / 8)
    with pytest.raises(ValueError, match="group_size=48 does not divide in_features=128"):
        packed_bytes(64, 128, 4, 48)


def test_calibration_inputs_shapes_order_and_batch_kinds(setup):
    model, batches, _ = setup
    model.train()
    xs = calibration_inputs(model, None, batches)
    assert list(xs) == ["a", "b"]                             # forward order
    assert xs["a"].shape == (4 * 8 * 32, 64) and xs["b"].shape == (4 * 8 * 32, 128)
    assert torch.equal(xs["a"], torch.cat(batches).reshape(-1, 64))
    assert model.training and not model.a._forward_pre_hooks  # mode restored, hooks gone
    pairs = calibration_inputs(model, ["b"], [(b, None) for b in batches])
    assert torch.equal(pairs["b"], xs["b"])
    assert torch.equal(calibration_inputs(model, ["a"], batches[0])["a"],
                       batches[0].reshape(-1, 64))              # one tensor = one batch
    with pytest.raises(ValueError, match="calibration is empty"):
        calibration_inputs(model, None, [])
    with pytest.raises(ValueError, match="NaN or Inf"):
        calibration_inputs(model, None, [torch.full((2, 64), float("nan"))])


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_quantizes_a_copy_and_reports(setup, method):
    model, batches, _ = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bits = 4 if method in ("rtn", "gptq", "awq") else None
    kw = {"n_grid": 5} if method == "awq" else {}
    qmodel, report = quantize_linear_weights(model, method, batches[:2], bits=bits,
                                             group_size=32 if bits else None, **kw)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert [r["name"] for r in report["layers"]] == ["a", "b"]
    for r in report["layers"]:
        assert 0 < r["rel_error"] < 0.05 and 0 < r["weight_rel_error"] < 0.05
        assert r["packed_bytes"] < r["float_bytes"] / 3
        w = getattr(qmodel, r["name"]).weight
        assert not torch.equal(w, getattr(model, r["name"]).weight)
    assert report["packed_bytes"] == sum(r["packed_bytes"] for r in report["layers"])
    assert torch.equal(qmodel.a.bias, model.a.bias)           # biases stay float


def test_sequential_gathers_inputs_from_the_quantized_prefix(setup):
    model, batches, _ = setup
    for sequential in (True, False):
        qmodel, report = quantize_linear_weights(model, "gptq", batches[:2], bits=3,
                                                 group_size=32, sequential=sequential)
        source = qmodel if sequential else model              # who fed layer b
        x = calibration_inputs(source, ["b"], batches[:2])["b"]
        w, w_hat = model.b.weight.detach(), qmodel.b.weight.detach()
        rel = float(((x @ (w - w_hat).T) ** 2).sum() / ((x @ w.T) ** 2).sum())
        assert report["layers"][1]["rel_error"] == pytest.approx(rel, rel=1e-4)


def test_gptq_and_awq_beat_rtn_on_held_out_model_output(setup):
    model, batches, held_out = setup
    ref = model(held_out)
    err = {}
    for method in ("rtn", "gptq", "awq"):
        qmodel, _ = quantize_linear_weights(model, method, batches, bits=3, group_size=32)
        with torch.no_grad():
            err[method] = float(((qmodel(held_out) - ref) ** 2).mean())
    assert err["gptq"] < 0.5 * err["rtn"] and err["awq"] < err["rtn"]   # measured 0.27, 0.86


def test_refusals_name_the_argument(setup):
    model, batches, _ = setup
    q = quantize_linear_weights
    with pytest.raises(ValueError, match=r"group_size=128 does not divide in_features=64 of "
                                         r"layer 'a'; allowed: None"):
        q(model, "rtn", bits=4, group_size=128)
    with pytest.raises(ValueError, match=r"bits must be an int in 2\.\.8 .* got 9"):
        q(model, "rtn", bits=9)
    with pytest.raises(ValueError, match=r"bits must be an int in 2\.\.8 .* got None"):
        q(model, "gptq", batches)
    with pytest.raises(ValueError, match="bits must be None or 4, got 8"):
        q(model, "nf4", bits=8)
    with pytest.raises(ValueError, match="group_size must be None or 32"):
        q(model, "mxfp4", group_size=64)
    with pytest.raises(ValueError, match="calibration is empty"):
        q(model, "gptq", [], bits=4)
    with pytest.raises(ValueError, match="needs calibration batches"):
        q(model, "awq", bits=4)
    with pytest.raises(ValueError, match="NaN or Inf"):
        q(model, "gptq", [torch.full((2, 64), float("nan"))], bits=4)
    with pytest.raises(ValueError, match="has no nn.Linear layer to quantize"):
        q(nn.Sequential(nn.Conv2d(1, 1, 3)), "rtn", bits=4)
    with pytest.raises(ValueError, match="method must be one of"):
        q(model, "int4", bits=4)
    with pytest.raises(ValueError, match=r"takes no \['act_order'\]"):
        q(model, "rtn", bits=4, act_order=True)
    with pytest.raises(ValueError, match="layers must name nn.Linear layers"):
        q(model, "rtn", bits=4, layers=["c"])
