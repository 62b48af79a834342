"""Notebook 11's checkers judged on several answers.

Runs the notebook's own checker cells (``ex1-check`` to ``ex3-check``; HIDDEN TESTS removed, as
in the student copy) on two correct implementations each and on natural wrong ones, which
must fail. The fixed input of exercise 1 (fc1's singular values) is replaced by a seeded
random spectrum of the same length.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import torch
from torch import nn

from types import SimpleNamespace

from qlib.arch import energy_rank, factor_linear
from qlib.models import course_model
from qlib.bench import count_macs
from qlib.course import check, workbook

NB = Path(__file__).resolve().parent.parent / "notebooks" / "11_efficient_architectures.ipynb"


def _run(cell_id: str, **answer) -> check.CheckResult:
    nb = nbformat.read(NB, as_version=4)
    source = workbook.strip_code(next(c for c in nb.cells if c.get("id") == cell_id).source,
                                 f"11 {cell_id}")[0]
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    images = SimpleNamespace(tensors=(torch.randn(8, 1, 28, 28, generator=g),))
    ns = dict(torch=torch, nn=nn, check=check, energy_rank=energy_rank, count_macs=count_macs,
              factor_linear=factor_linear, baseline=course_model().eval(),
              data=SimpleNamespace(test=images),
              S=(torch.rand(128, generator=g) * 5).sort(descending=True).values.double(), **answer)
    exec(source, ns)
    return ns["result"]


def rank_by_loop(s, fraction):
    e = sorted((float(v) ** 2 for v in s), reverse=True)
    total, acc = sum(e), 0.0
    for r, v in enumerate(e, 1):
        acc += v
        if acc >= fraction * total - 1e-12 * total:
            return r
    return len(e)


def rank_by_searchsorted(s, fraction):
    e = torch.sort(s.double(), descending=True).values ** 2
    kept = torch.cumsum(e, 0) / e.sum()
    return int(torch.searchsorted(kept, torch.tensor([fraction - 1e-12], dtype=kept.dtype))) + 1


def rank_unsorted(s, fraction):                      # forgets to sort
    e = s.double() ** 2
    kept = torch.cumsum(e, 0) / e.sum()
    return int((kept < fraction).sum()) + 1


def rank_of_values_not_squares(s, fraction):          # "energy" of sigma, not sigma^2
    e = s.double().sort(descending=True).values
    return int((torch.cumsum(e, 0) / e.sum() < fraction).sum()) + 1


@pytest.mark.parametrize("answer", [rank_by_loop, rank_by_searchsorted])
def test_energy_rank_correct_answers_pass(answer):
    assert _run("ex1-check", my_energy_rank=answer).passed


@pytest.mark.parametrize("answer", [rank_unsorted, rank_of_values_not_squares])
def test_energy_rank_wrong_answers_fail(answer):
    assert not _run("ex1-check", my_energy_rank=answer).passed


def macs_formula(c_in, c_out, k, h, w, stride):
    side = lambda n: (n + 2 * (k // 2) - k) // stride + 1
    return side(h) * side(w) * c_in * (k * k + c_out)


def macs_by_modules(c_in, c_out, k, h, w, stride):
    x = torch.zeros(1, c_in, h, w)
    dw = nn.Conv2d(c_in, c_in, k, stride=stride, padding=k // 2, groups=c_in, bias=False)
    out = dw(x)
    return out.numel() * k * k + out[0, 0].numel() * c_in * c_out


def macs_standard_conv(c_in, c_out, k, h, w, stride):   # a standard conv, not separable
    side = lambda n: (n + 2 * (k // 2) - k) // stride + 1
    return side(h) * side(w) * c_in * c_out * k * k


def macs_ignoring_stride(c_in, c_out, k, h, w, stride):
    return h * w * c_in * (k * k + c_out)


@pytest.mark.parametrize("answer", [macs_formula, macs_by_modules])
def test_separable_macs_correct_answers_pass(answer):
    assert _run("ex2-check", my_separable_macs=answer).passed


@pytest.mark.parametrize("answer", [macs_standard_conv, macs_ignoring_stride])
def test_separable_macs_wrong_answers_fail(answer):
    assert not _run("ex2-check", my_separable_macs=answer).passed


def forward_balanced(x, weight, bias, rank):
    u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
    root = s[:rank].sqrt()
    a, b = root[:, None] * vh[:rank], u[:, :rank] * root
    return ((x.double() @ a.T) @ b.T + bias.double()).float()


def forward_by_matrix(x, weight, bias, rank):
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    return x @ ((u[:, :rank] * s[:rank]) @ vh[:rank]).T + bias


def forward_wrong_side(x, weight, bias, rank):              # keeps the smallest singular values
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    return x @ ((u[:, -rank:] * s[-rank:]) @ vh[-rank:]).T + bias


def forward_no_bias(x, weight, bias, rank):
    return forward_by_matrix(x, weight, torch.zeros_like(bias), rank)


@pytest.mark.parametrize("answer", [forward_balanced, forward_by_matrix])
def test_lowrank_forward_correct_answers_pass(answer):
    assert _run("ex3-check", my_lowrank_forward=answer).passed


@pytest.mark.parametrize("answer", [forward_wrong_side, forward_no_bias])
def test_lowrank_forward_wrong_answers_fail(answer):
    assert not _run("ex3-check", my_lowrank_forward=answer).passed


def test_unsolved_exercises_report_not_attempted():
    def stub(*args):
        raise NotImplementedError("Exercise: write this function")
    for cell, name in (("ex1-check", "my_energy_rank"), ("ex2-check", "my_separable_macs"),
                       ("ex3-check", "my_lowrank_forward")):
        assert _run(cell, **{name: stub}).status == "not attempted"
