"""qlib.quant fake-quant modules, BN folding, packing, k-means, PTQ flow and recipes."""

from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qlib.models import course_model, mlp
from qlib.quant import (QuantConv2d, QuantLinear, assign_bits, batchnorm_layers, calibrate,
                        choose_qparams, fold_batchnorm, freeze, kmeans_codebook,
                        kmeans_quantize_model, pack_bits, packed_size_bytes, packed_state,
                        quant_layers, quantize_model, unpack_bits, unpack_state)
from qlib.quant.ptq import accuracy_on, layer_sensitivity, ptq


def _random_bn_model(seed=0):
    torch.manual_seed(seed)
    model = course_model()
    for m in model.modules():  # non-trivial BN statistics and affine parameters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.2, 3)
            m.weight.data.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)
    return model.eval()


def test_fold_batchnorm_preserves_outputs():
    model = _random_bn_model()
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    folded = fold_batchnorm(model)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5, rtol=1e-5)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # input untouched
    assert folded.features[0].bias is not None
    # a conv that already has a bias
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    seq[1].running_mean.uniform_(-1, 1)
    xs = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        assert torch.allclose(fold_batchnorm(seq)(xs), seq(xs), atol=1e-5)



def _with_running_stats(model: nn.Module, shape: tuple, seed: int = 0) -> nn.Module:
    """A few train-mode batches give every BatchNorm non-trivial running statistics."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(*shape, generator=g) * 2 + 0.5)
    return model.eval()


def _batchnorms(model: nn.Module) -> list[str]:
    return list(batchnorm_layers(model))


def test_fold_batchnorm_traces_a_torchvision_resnet18():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = _with_running_stats(tv.models.resnet18(num_classes=10), (4, 3, 32, 32))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert len(_batchnorms(model)) == 20
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every BN folds: no warning
        folded = fold_batchnorm(model)
    assert _batchnorms(folded) == [] and len(_batchnorms(model)) == 20  # a copy
    assert type(folded).__name__ == "ResNet" and isinstance(folded.layer1[0].bn1, nn.Identity)
    assert folded.layer2[0].downsample[0].bias is not None  # the 1x1 shortcut conv too
    with torch.no_grad():
        ref, out = model(x), folded(x)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4), (out - ref).abs().max()


class _Mixed(nn.Module):
    """Conv1d -> BN1d and a non-affine BN2d outside any Sequential, a BN after an add."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4, affine=False)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.bn_dw = nn.BatchNorm2d(4)
        self.after_add = nn.BatchNorm2d(4)
        self.seq = nn.Conv1d(4, 6, 3, padding=1)
        self.bn_seq = nn.BatchNorm1d(6)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = self.after_add(x + self.bn_dw(self.dw(x)))
        return self.bn_seq(self.seq(x.flatten(2)))


def test_fold_batchnorm_conv1d_non_affine_and_a_bn_after_an_add():
    torch.manual_seed(0)
    model = _with_running_stats(_Mixed(), (4, 3, 5, 5))
    for bn in (model.bn_dw, model.after_add, model.bn_seq):
        bn.weight.data.uniform_(0.5, 2)
        bn.bias.data.uniform_(-1, 1)
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    with pytest.warns(UserWarning, match=r"left 1 BatchNorm.*'after_add': its input is the "
                                         r"result of add\(\)"):
        folded = fold_batchnorm(model)
    assert _batchnorms(folded) == ["after_add"]
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5, rtol=1e-5)


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.conv, self.bn = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        x = self.features(x)
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace this
            x = -x
        return self.bn(self.conv(x))


def test_fold_batchnorm_falls_back_to_sequential_pairs_and_says_so():
    torch.manual_seed(0)
    model = _with_running_stats(_Untraceable(), (4, 3, 6, 6))
    x = torch.randn(2, 3, 6, 6)
    with pytest.warns(UserWarning, match=r"'bn': torch.fx could not trace _Untraceable"):
        folded = fold_batchnorm(model)
    assert _batchnorms(folded) == ["bn"]
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5, rtol=1e-5)
    no_stats = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.warns(UserWarning, match="'1': it has no running statistics"):
        assert _batchnorms(fold_batchnorm(no_stats)) == ["1"]
    with pytest.raises(ValueError, match=r"cannot fold '1' into '0': the BatchNorm has 5 "
                                         r"features but the conv 4 output channels"):
        fold_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(5)))


def test_fold_batchnorm_folds_qlibs_own_resnet18():
    torch.manual_seed(0)
    from qlib.models import resnet18

    model = _with_running_stats(resnet18(num_classes=10), (2, 3, 32, 32))
    folded = fold_batchnorm(model)
    assert _batchnorms(folded) == []
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), rtol=1e-4, atol=1e-4)

def test_quantize_model_swaps_layers_and_copies():
    model = course_model().eval()
    q = quantize_model(model, 8)
    layers = quant_layers(q)
    assert list(layers) == ["features.0", "features.4", "classifier.2", "classifier.4"]
    assert isinstance(layers["features.0"], QuantConv2d)
    assert isinstance(layers["classifier.4"], QuantLinear)
    assert not quant_layers(model)  # the float model is left alone
    only = quantize_model(model, {"classifier.2": 3})
    assert list(quant_layers(only)) == ["classifier.2"]


def test_no_supported_layer_and_bad_args():
    with pytest.raises(ValueError, match="no supported layer"):
        quantize_model(nn.Sequential(nn.ReLU(), nn.Flatten()), 8)
    with pytest.raises(ValueError, match="unknown layer names"):
        quantize_model(mlp(), {"nope": 4})
    with pytest.raises(ValueError, match="1..16"):
        quantize_model(mlp(), 0)
    with pytest.raises(ValueError, match="1..16"):
        quantize_model(mlp(), 8, act_bits=17)
    with pytest.raises(ValueError, match="no fake-quant layer"):
        calibrate(mlp(), [torch.zeros(1, 784)])


def test_quant_linear_matches_torch_reference():
    torch.manual_seed(2)
    lin = nn.Linear(20, 7)
    x = torch.randn(5, 20)
    for per_channel in (True, False):
        q = QuantLinear(copy.deepcopy(lin), 8, per_channel=per_channel)
        w = lin.weight.detach()
        if per_channel:
            s, z = choose_qparams(w.amin(1), w.amax(1), 8, symmetric=True)
            w_ref = torch.fake_quantize_per_channel_affine(w, s, z.int(), 0, -128, 127)
        else:
            s, z = choose_qparams(w.min(), w.max(), 8, symmetric=True)
            w_ref = torch.fake_quantize_per_tensor_affine(w, s.item(), 0, -128, 127)
        assert torch.equal(q(x), F.linear(x, w_ref, lin.bias))


def test_calibrate_freeze_sets_activation_range():
    torch.manual_seed(3)
    model = mlp(in_features=16, hidden=8)
    q = quantize_model(model, 8, act_bits=8)
    batches = [torch.randn(4, 16) * (i + 1) for i in range(3)]
    with pytest.raises(ValueError, match="empty"):
        calibrate(q, [])
    with pytest.raises(ValueError, match="observed no data"):
        freeze(q)
    assert calibrate(q, batches) == 12
    with torch.no_grad():
        assert torch.equal(q(batches[0]), model(batches[0]))  # float while calibrating
    freeze(q)
    x_all = torch.cat(batches)
    s, z = choose_qparams(x_all.min(), x_all.max(), 8, signed=False)
    assert torch.equal(q[1].act_scale, s) and torch.equal(q[1].act_zero_point, z)
    with torch.no_grad():
        out = q(batches[0])
    assert not torch.equal(out, model(batches[0]))
    assert torch.allclose(out, model(batches[0]), atol=0.1)


def test_pack_bits_round_trip():
    g = torch.Generator().manual_seed(4)
    for bits in range(1, 17):
        for signed in (True, False):
            lo = -(1 << (bits - 1)) if signed else 0
            q = torch.randint(lo, lo + (1 << bits), (101,), generator=g)
            p = pack_bits(q, bits, signed=signed)
            assert p.dtype == torch.uint8 and p.numel() == (101 * bits + 7) // 8
            assert torch.equal(unpack_bits(p, bits, 101, signed=signed), q.int())
    with pytest.raises(ValueError, match="values must lie in"):
        pack_bits(torch.tensor([8]), 4)


def test_packed_state_round_trip_and_size():
    model = fold_batchnorm(_random_bn_model())
    x = torch.randn(4, 1, 28, 28)
    fp32 = io.BytesIO()
    torch.save(model.state_dict(), fp32)
    sizes = {}
    for bits in (8, 4, 2):
        q = quantize_model(model, bits)
        packed = packed_state(q)
        restored = copy.deepcopy(q)
        for layer in quant_layers(restored).values():
            layer.layer.weight.data.zero_()
        restored.load_state_dict(unpack_state(packed))
        with torch.no_grad():
            assert torch.equal(restored(x), q(x))
        sizes[bits] = packed_size_bytes(q)
    assert sizes[2] < sizes[4] < sizes[8] < fp32.getbuffer().nbytes / 3.5
    weights = sum(m.weight.numel() for m in quant_layers(q).values())
    assert sizes[4] < weights / 2 + 8000  # 4-bit payload plus small overhead


def test_kmeans_codebook_matches_sklearn():
    from sklearn.cluster import KMeans

    w = torch.randn(1000, generator=torch.Generator().manual_seed(5)).double()
    for bits in (2, 4):
        codebook, idx = kmeans_codebook(w, bits)
        assert codebook.shape == (2 ** bits,) and idx.shape == w.shape
        assert int(idx.max()) < 2 ** bits
        init = np.linspace(float(w.min()), float(w.max()), 2 ** bits).reshape(-1, 1)
        km = KMeans(2 ** bits, init=init, n_init=1, max_iter=300, tol=0.0,
                    algorithm="lloyd").fit(w.numpy().reshape(-1, 1))
        ref = np.sort(km.cluster_centers_.ravel())
        assert np.allclose(codebook.numpy(), ref, atol=1e-5)


def test_kmeans_beats_linear_at_same_bits():
    w = torch.randn(64, 100, generator=torch.Generator().manual_seed(6))
    codebook, idx = kmeans_codebook(w, 3)
    km_err = ((codebook[idx] - w) ** 2).mean()
    lin = quantize_model(nn.Sequential(nn.Linear(100, 64)), 3, per_channel=False)
    lin[0].layer.weight.data.copy_(w)
    lin[0].freeze()
    lin_err = ((lin[0].fake_weight() - w) ** 2).mean()
    assert km_err < lin_err
    m, books = kmeans_quantize_model(mlp(in_features=64, hidden=32), 3)
    assert all(cb.numel() == 8 for cb, _ in books.values())
    assert m[1].weight.unique().numel() <= 8
    with pytest.raises(ValueError, match="no Conv2d or Linear"):
        kmeans_quantize_model(nn.Sequential(nn.ReLU()), 4)


def test_assign_bits_fits_budget():
    sens = {"a": {2: 0.3, 4: 0.01, 8: 0.0}, "b": {2: 0.02, 4: 0.0, 8: 0.0}}
    counts = {"a": 100, "b": 1000}
    plan = assign_bits(sens, counts, 500)
    assert sum(counts[n] * b / 8 for n, b in plan.items()) <= 500
    assert plan == {"a": 8, "b": 2}
    assert assign_bits(sens, counts, 1e9) == {"a": 8, "b": 8}
    with pytest.raises(ValueError, match="budget"):
        assign_bits(sens, counts, 100)


@pytest.fixture(scope="module")
def baseline():
    from qlib.train import get_baseline

    return get_baseline(progress=False)


def test_recipes_on_baseline(baseline):
    from qlib.recipes import RECIPES

    model, data = baseline
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref = accuracy_on(model, data, "test")
    w8a8 = RECIPES["ptq-w8a8"].fn(model, data)
    w4 = RECIPES["ptq-w4"].fn(model, data)
    assert ref - accuracy_on(w8a8.model, data, "test") <= 0.003
    assert ref - accuracy_on(w4.model, data, "test") <= 0.02
    assert w4.size_bytes < w8a8.size_bytes < 474_000 / 3.5
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    again = RECIPES["ptq-w8a8"].fn(model, data)  # deterministic
    assert again.size_bytes == w8a8.size_bytes
    x = data.test.tensors[0][:64]
    with torch.no_grad():
        assert torch.equal(again.model(x), w8a8.model(x))


def test_ptq_flow_and_sensitivity(baseline):
    model, data = baseline
    with pytest.raises(ValueError, match="empty"):
        ptq(model, [], 8, 8)
    sens = layer_sensitivity(model, data, (2, 8))
    assert list(sens) == ["features.0", "features.4", "classifier.2", "classifier.4"]
    assert all(abs(d[8]) <= 0.01 for d in sens.values())
    per_tensor = ptq(model, data, 2, None, per_channel=False)
    per_channel = ptq(model, data, 2, None, per_channel=True)
    assert accuracy_on(per_channel, data) > accuracy_on(per_tensor, data) + 0.1
