"""qlib.quant.qat: preparing a model for QAT (BN folded, LSQ wrappers, scales initialised),
training through it, converting to the shipped model, the flow and the recipes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from qlib.data import Splits
from qlib.models import course_model
from qlib.quant import packed_size_bytes, quant_layers
from qlib.quant.qat import QATLayer, convert_qat, prepare_qat, qat, qat_layers
from qlib.recipes.quant import QAT_RECIPES


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _small_splits(n_train=128, seed=0):
    g = _gen(seed)
    x = torch.randn(n_train + 128, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (n_train + 128,), generator=g)
    return Splits("tiny", TensorDataset(x[:n_train], y[:n_train]),
                  TensorDataset(x[n_train:n_train + 64], y[n_train:n_train + 64]),
                  TensorDataset(x[n_train + 64:], y[n_train + 64:]),
                  tuple(str(i) for i in range(10)))


def test_bad_input_qat():
    with pytest.raises(TypeError, match="wraps"):
        QATLayer(nn.ReLU(), 4)
    with pytest.raises(ValueError, match="no Conv2d / Linear"):
        prepare_qat(nn.Sequential(nn.ReLU()), None, 4, None)
    with pytest.raises(TypeError, match="nn.Module"):
        prepare_qat("model", None, 4, None)
    with pytest.raises(ValueError, match="calibration"):
        prepare_qat(course_model(), None, 4, 4)
    with pytest.raises(ValueError, match="empty"):
        prepare_qat(course_model(), [], 4, 4)
    with pytest.raises(ValueError, match="prepare_qat"):
        convert_qat(course_model())


# ----- the QAT model ------------------------------------------------------------------------

def test_prepare_folds_bn_and_initialises_scales(baseline, data):
    q = prepare_qat(baseline, data, 4, 4)
    layers = qat_layers(q)
    assert sorted(layers) == ["classifier.2", "classifier.4", "features.0", "features.4"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in q.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in baseline.modules())  # untouched
    w = layers["features.4"].layer.weight
    assert torch.allclose(layers["features.4"].weight_quant.scale,
                          2 * w.abs().mean((1, 2, 3)) / math.sqrt(7))
    # normalised images go below 0 (zero point > 0); inputs after a ReLU do not
    assert int(layers["features.0"].act_quant.zero_point) > 0
    assert int(layers["classifier.4"].act_quant.zero_point) == 0


def test_convert_gives_the_same_outputs_and_packs(baseline, data):
    q = prepare_qat(baseline, data, 3, 4)
    with torch.no_grad():  # perturb the scales as training would
        for layer in qat_layers(q).values():
            layer.weight_quant.magnitude.mul_(1.1)
    frozen = convert_qat(q)
    x = data.test.tensors[0][:64]
    q.eval()
    with torch.no_grad():
        assert torch.equal(frozen(x), q(x))
    assert len(quant_layers(frozen)) == 4 and not qat_layers(frozen)
    fp32 = sum(p.numel() for p in baseline.parameters()) * 4
    assert packed_size_bytes(frozen) < fp32 / 6   # 3-bit weights, packed


def test_training_moves_weights_and_scales_and_lowers_loss(baseline, data):
    q = prepare_qat(baseline, data, 2, 8)
    layer = qat_layers(q)["classifier.2"]
    s0, w0 = layer.weight_quant.scale.detach().clone(), layer.layer.weight.detach().clone()
    opt = torch.optim.Adam(q.parameters(), lr=1e-3)
    x, y = data.train.tensors[0][:64], data.train.tensors[1][:64]
    losses = []
    for _ in range(5):
        loss = nn.functional.cross_entropy(q(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert not torch.equal(layer.weight_quant.scale, s0)      # learned step size
    assert not torch.equal(layer.layer.weight, w0)            # STE reaches the weights
    fixed = prepare_qat(baseline, data, 2, 8, learn_scales=False)
    assert all(not n.endswith("magnitude") for n, _ in fixed.named_parameters())


def test_qat_flow_on_a_tiny_split():
    torch.manual_seed(0)
    frozen, hist = qat(course_model(), _small_splits(), 4, 4, epochs=1, progress=False)
    assert len(hist["loss"]) == 1 and len(hist["val_accuracy"]) == 1
    assert all(layer.frozen for layer in quant_layers(frozen).values())


def test_recipes_registered_and_deterministic(monkeypatch, tmp_path):
    import qlib.train
    from qlib.recipes import RECIPES

    assert {"qat-w4a4", "qat-w2a8"} <= set(RECIPES)
    assert QAT_RECIPES["qat-w4a4"]["weight_bits"] == 4 and QAT_RECIPES["qat-w4a4"]["act_bits"] == 4
    assert QAT_RECIPES["qat-w2a8"]["weight_bits"] == 2 and QAT_RECIPES["qat-w2a8"]["act_bits"] == 8
    monkeypatch.setattr(qlib.train, "DATA_DIR", tmp_path)          # a private cache
    monkeypatch.setitem(QAT_RECIPES, "qat-w2a8", dict(QAT_RECIPES["qat-w2a8"], epochs=1))
    torch.manual_seed(0)
    base, data = course_model().eval(), _small_splits()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    a = RECIPES["qat-w2a8"].fn(base, data)                          # trains, caches
    (tmp_path / "models").rename(tmp_path / "first")
    b = RECIPES["qat-w2a8"].fn(base, data)                          # trains again
    c = RECIPES["qat-w2a8"].fn(base, data)                          # loads the cache
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())
    assert a.size_bytes == b.size_bytes == c.size_bytes
    x = data.test.tensors[0]
    with torch.no_grad():
        assert torch.equal(a.model(x), b.model(x)) and torch.equal(a.model(x), c.model(x))
    assert a.extra["weight_bits"] == 2 and a.size_bytes < packed_size_bytes(
        convert_qat(prepare_qat(base, data, 8, 8)))
