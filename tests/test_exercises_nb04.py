"""Notebook 04's in-section exercise checker, run on two correct answers and one wrong one.

Mirrors the cell ``ex1-check`` of notebooks/04_qat.ipynb (exercise 1, the STE's gradient mask
per channel): the same reference (autograd through ``fake_quantize``), the same fixed and
seeded random inputs, the same tolerances (check_function's defaults). If that cell changes,
change this file with it.
"""

from __future__ import annotations

import torch
from torch import nn

from qlib.course import check
from qlib.quant import fake_quantize, qrange


def autograd_mask(x, scale, zero_point, bits, signed=True, axis=None):
    x = x.clone().requires_grad_()
    fake_quantize(x, scale, zero_point, bits, signed=signed, axis=axis).sum().backward()
    return x.grad


def random_fq(g: torch.Generator):
    bits, signed = int(torch.randint(2, 9, (1,), generator=g)), bool(torch.randint(0, 2, (1,), generator=g))
    qmin, qmax = qrange(bits, signed)
    z = 0 if signed else int(torch.randint(0, qmax + 1, (1,), generator=g))
    scale = float(torch.rand(1, generator=g) * 0.5 + 0.01)
    x = scale * (qmin - z - 3 + torch.rand(50, generator=g) * (qmax - qmin + 6))
    return x, scale, z, bits, signed


def random_per_channel(g: torch.Generator):
    x, scale, z, bits, signed = random_fq(g)
    c = int(torch.randint(1, 5, (1,), generator=g))
    x = torch.stack([x * (1 + k) for k in range(c)])
    scales = torch.tensor([scale * (1 + k) for k in range(c)])
    zeros = torch.full((c,), z, dtype=torch.int64)
    axis = int(torch.randint(0, 2, (1,), generator=g))
    return (x if axis == 0 else x.T.contiguous()), scales, zeros, bits, signed, axis


def _check(answer, baseline: nn.Module) -> check.CheckResult:
    w_conv = baseline.features[0].weight.detach()
    s_conv = w_conv.abs().amax((1, 2, 3)) / 3
    fixed = [(torch.tensor([3.4, 3.6, -4.4, -4.6, 0.0]), torch.tensor(1.0), torch.tensor(0), 3, True, None),
             (torch.tensor([[3.4, 3.6], [6.8, 7.2]]), torch.tensor([1.0, 2.0]), torch.tensor([0, 0]), 3, True, 0),
             (w_conv, s_conv, torch.zeros(16, dtype=torch.int64), 3, True, 0),
             (torch.linspace(-1, 1, 24).view(2, 12), torch.tensor([0.1, 0.2]), torch.tensor([3, 8]), 4, False, 0)]
    return check.check_function(answer, autograd_mask, fixed, random=random_per_channel, trials=30)


def _view(x, axis):
    view = [1] * x.dim()
    if axis is not None:
        view[axis] = -1
    return view


def mask_by_comparison(x, scale, zero_point, bits, signed=True, axis=None):
    """The notebook's solution: compare round(x / s) + z with qmin and qmax."""
    qmin, qmax = qrange(bits, signed)
    v = _view(x, axis)
    level = torch.round(x / scale.reshape(v)) + zero_point.reshape(v)
    return ((level >= qmin) & (level <= qmax)).to(torch.float32)


def mask_by_clamp(x, scale, zero_point, bits, signed=True, axis=None):
    """Another correct one: a level is inside when clamping leaves it unchanged (moved axis)."""
    qmin, qmax = qrange(bits, signed)
    if axis is None:
        level = torch.round(x / scale) + zero_point
    else:
        xm = x.movedim(axis, -1)
        level = (torch.round(xm / scale) + zero_point).movedim(-1, axis)
    return (level.clamp(qmin, qmax) == level).float()


def mask_before_rounding(x, scale, zero_point, bits, signed=True, axis=None):
    """Wrong: decides "inside" on x / s + z before rounding, so 3.4 at qmax = 3 counts as clipped."""
    qmin, qmax = qrange(bits, signed)
    v = _view(x, axis)
    u = x / scale.reshape(v) + zero_point.reshape(v)
    return ((u >= qmin) & (u <= qmax)).float()


def test_two_correct_masks_pass(baseline: nn.Module) -> None:
    for answer in (mask_by_comparison, mask_by_clamp):
        result = _check(answer, baseline)
        assert result.passed, (answer.__name__, result)


def test_masking_before_rounding_fails(baseline: nn.Module) -> None:
    result = _check(mask_before_rounding, baseline)
    assert not result.passed, result
