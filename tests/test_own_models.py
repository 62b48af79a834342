"""Models no one here wrote, through notebook 08's "apply it to your own model" calls.

torchvision's MobileNet-V2 and ResNet-18 (random init, BatchNorm statistics from a few
train-mode batches) and a hand-written model with a residual add, a depthwise conv, a
Conv1d, a bias-free Linear and a ModuleDict of Sequentials go through BN folding, PTQ,
global pruning, k-means sharing, Deep Compression and ONNX int8. Each call either works
(right shape, finite, folding exact) or refuses with a message naming the layer and why.
Inputs are 3x32x32 and calibration sets a few seeded images, to stay fast on 2 cores.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

import qlib.train
from qlib import pipeline
from qlib.data import Splits
from qlib.prune import magnitude_prune, prunable_layers, remove_masks, sparsity
from qlib.quant import (batchnorm_layers, fold_batchnorm, kmeans_quantize_model, quant_layers,
                        supported_layers)
from qlib.quant.ptq import ptq

tv = pytest.importorskip("torchvision")
# the hand-written model's Conv1d is named by a warning at every step; its own test below
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:.*handles Conv2d and Linear layers only")]

SHAPE = (3, 32, 32)


class OwnModel(nn.Module):
    """A residual add, a depthwise conv, a Conv1d, a bias-free Linear, a ModuleDict."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(8), nn.ReLU())
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)  # depthwise
        self.dw_bn = nn.BatchNorm2d(8)
        self.mix = nn.Conv1d(8, 16, 3, padding=1)  # over the flattened positions
        self.mix_bn = nn.BatchNorm1d(16)
        self.heads = nn.ModuleDict({
            "hidden": nn.Sequential(nn.Linear(16, 32), nn.ReLU()),
            "out": nn.Sequential(nn.Linear(32, num_classes, bias=False))})

    def forward(self, x: Tensor) -> Tensor:  # (N, 3, H, W) -> (N, classes)
        x = self.stem(x)
        x = x + torch.relu(self.dw_bn(self.dw(x)))  # residual add
        x = torch.relu(self.mix_bn(self.mix(x.flatten(2)))).mean(2)
        return self.heads["out"](self.heads["hidden"](x))


BUILDERS = {"mobilenet_v2": lambda: tv.models.mobilenet_v2(num_classes=10),
            "resnet18": lambda: tv.models.resnet18(num_classes=10),
            "own": OwnModel}


def _images(n: int, seed: int) -> Tensor:
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=list(BUILDERS))
def model(request) -> nn.Module:
    """Random init (seeded), BN running statistics from three train-mode batches."""
    torch.manual_seed(0)
    net = BUILDERS[request.param]()
    net.train()
    with torch.no_grad():
        for seed in range(3):
            net(_images(4, seed) * 2 + 0.5)
    return net.eval()


@pytest.fixture(scope="module")
def x() -> Tensor:
    return _images(2, 10)


def _check_logits(out: Tensor) -> None:
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_fold_batchnorm_leaves_no_batchnorm_and_the_same_outputs(model, x) -> None:
    assert batchnorm_layers(model)
    folded = fold_batchnorm(model)  # no warning: every BatchNorm follows a conv
    assert batchnorm_layers(folded) == {}
    bns = batchnorm_layers(model)
    kept = {n: type(m) for n, m in model.named_modules() if n not in bns}
    assert {n: type(m) for n, m in folded.named_modules() if n in kept} == kept
    assert all(isinstance(folded.get_submodule(n), nn.Identity) for n in bns)
    with torch.no_grad():
        ref, out = model(x), folded(x)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4), (out - ref).abs().max()


def test_ptq_w8a8(model, x) -> None:
    q = ptq(model, [_images(2, 20)], 8, 8)
    assert batchnorm_layers(q) == {}
    assert list(quant_layers(q)) == list(supported_layers(model))  # Conv1d stays float
    with torch.no_grad():
        _check_logits(q(x))


def test_global_pruning_keeps_every_layer(model, x) -> None:
    pruned = copy.deepcopy(model)
    masks = magnitude_prune(pruned, 0.9, scope="global")
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.9 * total)
    remove_masks(pruned)
    per_layer = sparsity(pruned)
    assert max(v for k, v in per_layer.items() if k != "total") <= 0.99
    with torch.no_grad():
        _check_logits(pruned(x))


def test_kmeans_weight_sharing(model, x) -> None:
    shared, books = kmeans_quantize_model(model, 4)
    assert list(books) == list(prunable_layers(model))
    assert all(m.weight.unique().numel() <= 16 for m in prunable_layers(shared).values())
    with torch.no_grad():
        _check_logits(shared(x))


def test_kmeans_names_the_layer_it_cannot_share(model) -> None:
    broken = copy.deepcopy(model)
    name, layer = next(iter(prunable_layers(broken).items()))
    with torch.no_grad():
        layer.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=f"weight of layer '{name}' holds NaN"):
        kmeans_quantize_model(broken, 4)
    with pytest.raises(ValueError, match=f"weight of layer '{name}' holds NaN"):
        magnitude_prune(broken, 0.5)


def test_deep_compression_end_to_end(model, x, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(qlib.train, "DATA_DIR", tmp_path)  # the pruning cache goes here
    images = _images(12, 30)
    with torch.no_grad():  # labels the float model gets all wrong: the bit scan is short
        labels = (model(images).argmax(1) + 1) % 10
    splits = Splits("own", TensorDataset(images[:8], labels[:8]),
                    TensorDataset(images[8:], labels[8:]), TensorDataset(images[8:], labels[8:]),
                    classes=tuple(str(i) for i in range(10)))
    # 97%: the pure-Python Huffman coder's time grows with the survivors (ResNet-18: 13 s
    # of 22 s at 90%)
    shipped, blob, info = pipeline.deep_compress(model, splits, sparsity=0.97, epochs=1,
                                                 centroid_epochs=1)
    assert set(info["bits"]) == set(prunable_layers(model))
    assert abs(info["sparsity"] - 0.97) < 0.005 and len(blob) > 0
    with torch.no_grad():
        _check_logits(shipped(x))


def test_onnx_int8(model, x, tmp_path) -> None:
    from qlib.runtime.onnx import OrtModel, export_onnx, quantize_static_ort

    fp32 = export_onnx(fold_batchnorm(model), x[:1], tmp_path / "model.onnx")
    int8 = quantize_static_ort(fp32, tmp_path / "model-int8.onnx", [_images(2, 40)])
    with torch.no_grad():
        ref = model(x)
    assert torch.allclose(OrtModel(fp32)(x), ref, rtol=1e-4, atol=1e-4)
    _check_logits(OrtModel(int8)(x))


def test_a_conv1d_left_float_is_named_at_each_step() -> None:
    """Quantization, pruning and k-means sharing handle Conv2d / Linear only; the Conv1d
    they leave float and dense is named, never skipped in silence."""
    model = OwnModel().eval()
    with pytest.warns(UserWarning, match=r"quantization handles .* mix \(Conv1d\)"):
        ptq(model, [_images(2, 20)], 8, 8)
    with pytest.warns(UserWarning, match=r"pruning handles .* mix \(Conv1d\)"):
        magnitude_prune(copy.deepcopy(model), 0.5)
    with pytest.warns(UserWarning, match=r"k-means weight sharing handles .* mix \(Conv1d\)"):
        kmeans_quantize_model(model, 4)
