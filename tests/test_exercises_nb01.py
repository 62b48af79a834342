"""Notebook 01's exercise checkers accept every correct answer and reject a wrong one.

Each test repeats the check call of one checker cell of notebooks/01_number_formats.ipynb
(same reference, random-input generator, trials and tolerances; the fixed inputs that use
fc1's trained weights use a seeded random matrix of the same shape instead, so that the test
needs no trained model) on two different correct implementations, which must pass, and one
wrong implementation, which must fail.
"""

from __future__ import annotations

import math

import torch

from qlib.course import check
from qlib.quant import choose_qparams, dequantize, fake_quantize, qrange, quantize

W = torch.randn(128, 800, generator=torch.Generator().manual_seed(0)) * 0.05   # stands in for fc1


# ---------------------------------------------------------- cell ex1-check (section 4)

def _random_range(g: torch.Generator):
    lo, hi = sorted((torch.randn(2, generator=g) * 3).tolist())
    return lo, hi, int(torch.randint(2, 9, (1,), generator=g)), bool(torch.randint(0, 2, (1,), generator=g))


def _check_symmetric(answer) -> check.CheckResult:
    reference = lambda x_min, x_max, bits, signed=True: choose_qparams(  # noqa: E731
        x_min, x_max, bits, symmetric=True, signed=signed)
    fixed = [(-1.0, 3.0, 8, True), (-3.0, 1.0, 8, True), (0.5, 4.0, 8, False), (-0.3, 0.2, 4, False),
             (float(W.min()), float(W.max()), 4, True), (0.0, 0.0, 8, True)]
    return check.check_function(answer, reference, fixed, random=_random_range, trials=30)


def _symmetric_python(x_min, x_max, bits, signed=True):
    lo_code, hi_code = qrange(bits, signed)
    largest = max(-x_min, x_max, 0.0)
    scale = max(largest / ((hi_code - lo_code) / 2), torch.finfo(torch.float32).eps)
    return scale, (0 if signed else (lo_code + hi_code + 1) // 2)


def _symmetric_torch(x_min, x_max, bits, signed=True):
    """Another correct route: 2^(b-1) - 0.5 levels on each side, in float32 tensors."""
    amax = torch.tensor([x_min, x_max], dtype=torch.float32).abs().max()
    scale = torch.clamp(amax / (2 ** (bits - 1) - 0.5), min=torch.finfo(torch.float32).eps)
    return float(scale), (0 if signed else 2 ** (bits - 1))


def _symmetric_wrong(x_min, x_max, bits, signed=True):
    """Divides by qmax instead of (qmax - qmin) / 2, a common slip."""
    lo_code, hi_code = qrange(bits, signed)
    scale = max(max(-x_min, x_max, 0.0) / hi_code, torch.finfo(torch.float32).eps)
    return scale, (0 if signed else (lo_code + hi_code + 1) // 2)


def test_symmetric_qparams_checker():
    assert _check_symmetric(_symmetric_python).passed
    assert _check_symmetric(_symmetric_torch).passed
    assert not _check_symmetric(_symmetric_wrong).passed


# ---------------------------------------------------------- cell ex2-check (exercises)

def _random_rows(g: torch.Generator):
    w = torch.randn(int(torch.randint(1, 9, (1,), generator=g)), 16, generator=g)
    w = w * (torch.rand(w.shape[0], 1, generator=g) * 3 + 0.1)
    bits, signed = int(torch.randint(2, 9, (1,), generator=g)), bool(torch.randint(0, 2, (1,), generator=g))
    s, z = choose_qparams(0.7 * w.amin(1), 0.7 * w.amax(1), bits, signed=signed)
    return w, s, z, bits, signed


def _check_rows(answer) -> check.CheckResult:
    reference = lambda w, scale, zero_point, bits, signed=True: fake_quantize(  # noqa: E731
        w, scale, zero_point, bits, signed=signed, axis=0)
    s_rows, z_rows = choose_qparams(W.amin(1), W.amax(1), 4)
    ties = torch.tensor([[0.5, 1.5, 2.5, -0.5, -2.5], [1.0, 3.0, 5.0, -1.0, -5.0]])
    fixed = [(W, s_rows, z_rows, 4, True),
             (ties, torch.tensor([1.0, 2.0]), torch.tensor([0, 0]), 4, True),
             (ties, torch.tensor([1.0, 2.0]), torch.tensor([3, 8]), 4, False)]
    return check.check_function(answer, reference, fixed, random=_random_rows, trials=30)


def _rows_broadcast(w, scale, zero_point, bits, signed=True):
    qmin, qmax = qrange(bits, signed)
    s, z = scale[:, None], zero_point[:, None]
    codes = torch.clamp(torch.round(w / s) + z, qmin, qmax)
    return (s * (codes - z)).float()


def _rows_loop(w, scale, zero_point, bits, signed=True):
    """Another correct route: one per-tensor round trip per row."""
    return torch.stack([dequantize(quantize(row, s, z, bits, signed=signed), s, z)
                        for row, s, z in zip(w, scale, zero_point)])


def _rows_floor(w, scale, zero_point, bits, signed=True):
    """Rounds half up (floor(x + 0.5)) instead of half to even: wrong on ties."""
    qmin, qmax = qrange(bits, signed)
    s, z = scale[:, None], zero_point[:, None]
    codes = torch.clamp(torch.floor(w / s + 0.5) + z, qmin, qmax)
    return (s * (codes - z)).float()


def test_quant_dequant_rows_checker():
    assert _check_rows(_rows_broadcast).passed
    assert _check_rows(_rows_loop).passed
    assert not _check_rows(_rows_floor).passed
    assert math.isclose(float(_rows_floor(torch.tensor([[0.5]]), torch.tensor([1.0]),
                                          torch.tensor([0]), 4)), 1.0)   # the tie it gets wrong
