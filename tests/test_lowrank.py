"""qlib.arch.lowrank: truncated SVD factors checked against torch.linalg (Eckart–Young) and
against the layers they replace (full rank reproduces them exactly)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qlib.arch import (energy_rank, factor_conv, factor_layers, factor_linear, finetune_lowrank,
                       lowrank_params, rank_for_params, svd_factors, truncation_error)
from qlib.models import course_model


def _w(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("rank", [1, 3, 7, 12])
def test_truncation_is_eckart_young(rank):
    w = _w(12, 20)
    a, b = svd_factors(w, rank)
    s = torch.linalg.svdvals(w.double())
    err2 = float(torch.linalg.matrix_norm(w.double() - (b @ a).double()) ** 2)
    assert err2 == pytest.approx(float((s[rank:] ** 2).sum()), rel=1e-4, abs=1e-6)
    assert truncation_error(s, rank) ** 2 == pytest.approx(float((s[rank:] ** 2).sum()))
    # no other rank-r matrix is closer: a random rank-r product is worse
    other = _w(12, rank, seed=1) @ _w(rank, 20, seed=2)
    assert torch.linalg.matrix_norm(w - other) ** 2 >= err2 - 1e-6


def test_factors_are_balanced_and_shaped():
    a, b = svd_factors(_w(5, 9), 3)
    assert a.shape == (3, 9) and b.shape == (5, 3) and a.dtype == torch.float32
    # each factor carries sqrt(S): row norms of A equal column norms of B
    torch.testing.assert_close(a.norm(dim=1), b.norm(dim=0), rtol=1e-4, atol=1e-5)


def test_full_rank_course_model_reproduces_the_logits():
    torch.manual_seed(0)
    model = course_model().eval()
    x = torch.randn(8, 1, 28, 28)
    full = factor_layers(model, {"classifier.2": 128, "features.4": 80})
    torch.testing.assert_close(full(x), model(x), atol=1e-4, rtol=1e-4)
    assert isinstance(model.classifier[2], nn.Linear)          # the original is untouched
    first, second = full.classifier[2]
    assert first.bias is None and second.bias is not None
    assert first.weight.shape == (128, 800) and second.weight.shape == (128, 128)


@pytest.mark.parametrize("mode", ["spatial", "channel"])
@pytest.mark.parametrize("conv", [nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(4, 6, 5, bias=False),
                                  nn.Conv2d(2, 5, 3, stride=2, padding=1)])
def test_full_rank_conv_is_exact(mode, conv):
    c_out, c_in, kh, kw = conv.weight.shape
    full = min(c_in * kh, c_out * kw) if mode == "spatial" else min(c_out, c_in * kh * kw)
    x = torch.randn(2, c_in, 11, 9)
    f = factor_conv(conv, full, mode)
    torch.testing.assert_close(f(x), conv(x), atol=1e-5, rtol=1e-4)
    kinds = [tuple(m.kernel_size) for m in f]
    assert kinds == ([(kh, 1), (1, kw)] if mode == "spatial" else [(kh, kw), (1, 1)])


def test_spatial_truncation_error_matches_the_reshaped_matrix():
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    w = conv.weight.detach()
    mat = w.permute(1, 2, 0, 3).reshape(4 * 3, 6 * 3)
    s = torch.linalg.svdvals(mat.double())
    f = factor_conv(conv, 2, "spatial")
    # rebuild the effective 3x3 weight: push a delta basis through the two convs
    v, h = f[0].weight.detach(), f[1].weight.detach()                 # (r,4,3,1), (6,r,1,3)
    eff = torch.einsum("rih,orw->oihw", v[..., 0], h[:, :, 0, :])
    err2 = float(((eff - w) ** 2).sum())
    assert err2 == pytest.approx(float((s[2:] ** 2).sum()), rel=1e-4)


def test_energy_rank_in_any_order_and_edges():
    s = torch.tensor([1.0, 3.0, 2.0])
    assert energy_rank(s, 0.9) == 2 and energy_rank(s, 9 / 14) == 1 and energy_rank(s, 1.0) == 3
    assert energy_rank(torch.tensor([5.0, 0.0, 0.0]), 1.0) == 1
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            energy_rank(s, bad)
    for bad in (torch.tensor([]), torch.tensor([1.0, -1.0]), torch.zeros(3)):
        with pytest.raises(ValueError, match="singular_values"):
            energy_rank(bad, 0.5)


def test_param_counts_and_budget():
    assert lowrank_params(128, 800, 16) == 16 * 928 + 128
    assert lowrank_params(128, 800, 16, bias=False) == 16 * 928
    assert rank_for_params(128, 800, lowrank_params(128, 800, 16)) == 16
    assert rank_for_params(128, 800, lowrank_params(128, 800, 16) - 1) == 15
    assert rank_for_params(4, 5, 10 ** 6) == 4                     # capped at full rank
    with pytest.raises(ValueError, match="rank 1"):
        rank_for_params(128, 800, 500)


def test_bad_ranks_layers_and_types():
    lin = nn.Linear(6, 4)
    for bad in (0, 5, 2.0, True):
        with pytest.raises(ValueError, match="rank"):
            factor_linear(lin, bad)
    with pytest.raises(TypeError, match="nn.Linear"):
        factor_linear(nn.Conv2d(1, 1, 3), 1)
    with pytest.raises(TypeError, match="nn.Conv2d"):
        factor_conv(lin, 1)
    with pytest.raises(ValueError, match="groups=1"):
        factor_conv(nn.Conv2d(4, 4, 3, groups=4), 1)
    with pytest.raises(ValueError, match="mode"):
        factor_conv(nn.Conv2d(1, 2, 3), 1, "diagonal")
    with pytest.raises(ValueError, match="classifier.2"):
        factor_layers(course_model(), {"fc1": 4})
    with pytest.raises(ValueError, match="matrix"):
        svd_factors(torch.zeros(2, 3, 4), 1)
    with pytest.raises(TypeError):
        svd_factors([[1.0, 2.0]], 1)


def test_finetune_rejects_bad_settings_before_training():
    with pytest.raises(ValueError, match="unknown fine-tuning settings"):
        finetune_lowrank(course_model(), None, {"classifier.2": 4}, epoch=3)
    with pytest.raises(ValueError, match="rank"):
        finetune_lowrank(course_model(), None, {"classifier.2": 500})
