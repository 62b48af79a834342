"""torchao beside qlib (qlib.runtime.ao, notebook 03): quantize_ configs and PT2E + X86 quantizer.

Checks: int8 dynamic on a small Linear model agrees with fp32; PT2E on a tiny ResNet (BN,
separate ReLUs, a residual block) calibrates, and its weight scales equal qlib's per-channel
symmetric int8 scales on the BN-folded weights (floored at torchao's 2^-12), its min-max
input scale equals qlib's choose_qparams on the calibration range; the oneDNN lowering
(X86Int8) reproduces the reference at a lowered and at another batch size; int4 weight-only
raises on a CPU-only install instead of faking a result.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qlib import set_seed
from qlib.models import BasicBlock
from qlib.quant import choose_qparams, sqnr_db
from qlib.quant.fold import fold_batchnorm

ao = pytest.importorskip("qlib.runtime.ao")


def _tiny_resnet() -> nn.Module:
    from torchvision.models.resnet import BasicBlock as TvBlock

    set_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          BasicBlock(TvBlock(8, 8)), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4))
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():  # non-trivial BN statistics, so that folding matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model.eval()


def _calibration() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    return list(torch.randn(12, 3, 16, 16, generator=gen).split(4))


def test_int8_dynamic_linear_agrees_with_fp32() -> None:
    set_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).eval()
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref, dyn, wo = model(x), ao.int8_dynamic(model)(x), ao.int8_weight_only(model)(x)
    assert type(model[0].weight) is nn.Parameter  # the original is left alone
    assert sqnr_db(ref, dyn) > 30 and sqnr_db(ref, wo) > 30   # measured about 40 and 45 dB
    assert float((dyn - ref).abs().max()) < 0.05 * float(ref.abs().max())


def test_pt2e_scales_equal_qlib_per_channel_symmetric_int8() -> None:
    model, cal = _tiny_resnet(), _calibration()
    ref = ao.pt2e_int8(model, cal, observer="minmax")
    rows = ao.pt2e_qparams(ref)
    assert [r["op"] for r in rows] == ["conv2d", "conv2d", "conv2d", "linear"]
    folded = fold_batchnorm(model)
    layers = [m for m in folded.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    for layer, row in zip(layers, rows):
        w = layer.weight.detach().flatten(1)
        m = w.abs().amax(1)
        s_qlib, _ = choose_qparams(-m, m, 8, symmetric=True)          # max|w| / 127.5
        expected = s_qlib.double().clamp(min=ao.X86_EPS)
        assert torch.allclose(row["weight_scale"], expected, rtol=1e-5, atol=0)
    x = torch.cat(cal)
    s_x, z_x = choose_qparams(x.min(), x.max(), 8, signed=False)       # the stem's input range
    assert rows[0]["act_scale"] == pytest.approx(float(s_x), rel=1e-6)
    assert rows[0]["act_zero_point"] == int(z_x)
    # the default (histogram) observer calibrates too, and never picks a wider input range
    hist = ao.pt2e_qparams(ao.pt2e_int8(model, cal))
    assert 0 < hist[0]["act_scale"] <= rows[0]["act_scale"] * (1 + 1e-6)
    with torch.no_grad():
        assert sqnr_db(model(x), ref(x)) > 20                          # int8 tracks fp32


def test_x86_lowering_matches_the_reference_at_any_batch() -> None:
    model, cal = _tiny_resnet(), _calibration()
    ref = ao.pt2e_int8(model, cal)
    fast = ao.X86Int8(ref, cal[0], batch_sizes=(4,))
    x = torch.randn(10, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = ref(x)
        for got in (fast(x[:4]), fast(x)[:4]):   # a lowered size; 10 = 4 + 4 + 2 (padded)
            assert sqnr_db(want[:4], got) > 20   # int8 rounding order differs: one-step flips
        assert fast(x).shape == want.shape and sqnr_db(want, fast(x)) > 20
    with pytest.raises(ValueError, match="observer"):
        ao.pt2e_int8(model, cal, observer="mse")
    with pytest.raises(ValueError, match="batch_sizes"):
        ao.X86Int8(ref, cal[0], batch_sizes=())


@pytest.mark.skipif(torch.cuda.is_available(), reason="int4 kernels exist with a GPU")
def test_int4_weight_only_says_it_cannot_run_on_this_cpu() -> None:
    model = nn.Sequential(nn.Linear(256, 16)).eval()
    with pytest.raises((ImportError, NotImplementedError, RuntimeError)):
        ao.int4_weight_only(model)
