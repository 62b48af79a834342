"""Notebook 02's exercise checkers accept every correct answer and reject a wrong one.

Each test repeats a checker cell of ``notebooks/02_post_training_quantization.ipynb``
(same reference, inputs and tolerances; the cell id is named) and runs it on two different
correct implementations, which must both pass, and on a wrong one, which must fail.

Exercise 3 (MSE clipping, cell nb02-50) is a search: two correct searches can pick different
ratios where the errors tie to the last digits, so its checker compares two properties of
the answer (the range lies on the line alpha * (min x, max x), and its error is the grid's
smallest within 0.1%), never one particular ratio. Exercises 1 and 2 have one right answer
up to float rounding; their tests show that two ways of computing it both pass.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qlib.course import check
from qlib.quant import MSEObserver, choose_qparams, fake_quantize

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ exercise 1 (cells nb02-43, nb02-44)

def random_bn_linear(g: torch.Generator):
    n_out, n_in = (int(torch.randint(1, 9, (1,), generator=g)) for _ in range(2))
    r = lambda *shape: torch.randn(*shape, generator=g)
    return r(n_out, n_in), r(n_out), r(n_in), r(n_in), r(n_in), torch.rand(n_in, generator=g) + 0.1, 1e-5


def reference_fold(weight, bias, gamma, beta, mean, var, eps):
    """Run the two layers (float64) and read the affine map off: f(0) = b', f(e_j) - f(0) = column j."""
    n_out, n_in = weight.shape
    seq = nn.Sequential(nn.BatchNorm1d(n_in, eps=eps), nn.Linear(n_in, n_out)).double().eval()
    with torch.no_grad():
        for p, v in zip((seq[0].weight, seq[0].bias, seq[0].running_mean, seq[0].running_var,
                         seq[1].weight, seq[1].bias), (gamma, beta, mean, var, weight, bias)):
            p.copy_(v)
        out = seq(torch.cat([torch.zeros(1, n_in), torch.eye(n_in)]).double())
    return (out[1:] - out[0]).T.float(), out[0].float()


def check_fold(answer, baseline):
    fc1 = baseline.classifier[2]
    g = torch.Generator().manual_seed(2)
    fixed = [(fc1.weight.detach(), fc1.bias.detach(), 1 + 0.2 * torch.randn(800, generator=g),
              torch.randn(800, generator=g), torch.randn(800, generator=g),
              torch.rand(800, generator=g) + 0.5, 1e-5)]
    return check.check_function(answer, reference_fold, fixed, random=random_bn_linear, trials=10,
                                atol=1e-5, rtol=1e-4)


def fold_columns(weight, bias, gamma, beta, mean, var, eps):
    s = gamma / torch.sqrt(var + eps)
    return weight * s, bias + weight @ (beta - mean * s)


def fold_diag(weight, bias, gamma, beta, mean, var, eps):
    s = torch.rsqrt(var + eps) * gamma
    return weight @ torch.diag(s), bias + (weight * beta).sum(1) - (weight * (mean * s)).sum(1)


def fold_forgets_the_shift(weight, bias, gamma, beta, mean, var, eps):
    return weight * (gamma / torch.sqrt(var + eps)), bias


def test_exercise1_accepts_two_correct_folds(baseline):
    assert check_fold(fold_columns, baseline).passed
    assert check_fold(fold_diag, baseline).passed


def test_exercise1_rejects_a_fold_without_the_shift(baseline):
    assert not check_fold(fold_forgets_the_shift, baseline).passed


# ------------------------------------------------------------------ exercise 2 (cells nb02-46, nb02-47)

def random_weight(g: torch.Generator):
    shape = [(16, 8), (8, 4, 3, 3), (32, 50)][int(torch.randint(0, 3, (1,), generator=g))]
    spread = torch.rand(shape[0], *[1] * (len(shape) - 1), generator=g)
    offset = torch.randn(shape[0], *[1] * (len(shape) - 1), generator=g)
    return torch.randn(*shape, generator=g) * spread + offset, int(torch.randint(2, 9, (1,), generator=g))


def reference_affine(weight, bits):
    dims = tuple(range(1, weight.ndim))
    scale, zp = choose_qparams(weight.amin(dim=dims), weight.amax(dim=dims), bits)
    return fake_quantize(weight, scale, zp, bits, axis=0)


def check_affine(answer, baseline):
    fc1_weight = baseline.classifier[2].weight.detach()
    fixed = [(fc1_weight, 4), (fc1_weight, 2), (baseline.features[0].weight.detach(), 3),
             (torch.zeros(3, 4), 4)]
    return check.check_function(answer, reference_affine, fixed, random=random_weight, trials=10)


def affine_flat(weight, bits):
    flat = weight.reshape(weight.shape[0], -1)
    lo = torch.clamp(flat.min(dim=1).values, max=0.0)
    hi = torch.clamp(flat.max(dim=1).values, min=0.0)
    qmin, qmax = -2 ** (bits - 1), 2 ** (bits - 1) - 1
    scale = torch.clamp((hi - lo) / (qmax - qmin), min=torch.finfo(torch.float32).eps)
    zero = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax)
    shape = (-1,) + (1,) * (weight.ndim - 1)
    scale, zero = scale.view(shape), zero.view(shape)
    return scale * (torch.clamp(torch.round(weight / scale) + zero, qmin, qmax) - zero)


def affine_loop(weight, bits):
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    out = torch.empty_like(weight)
    for c in range(weight.shape[0]):
        w = weight[c]
        lo, hi = min(float(w.min()), 0.0), max(float(w.max()), 0.0)
        scale = torch.tensor(max((hi - lo) / (qmax - qmin), torch.finfo(torch.float32).eps),
                             dtype=torch.float32)
        zero = min(max(qmin - round(lo / float(scale)), qmin), qmax)
        out[c] = scale * (torch.clamp(torch.round(w / scale) + zero, qmin, qmax) - zero)
    return out


def affine_without_zero_point(weight, bits):  # symmetric: the section-3 grid, not the exercise
    dims = tuple(range(1, weight.ndim))
    scale, zp = choose_qparams(weight.amin(dim=dims), weight.amax(dim=dims), bits, symmetric=True)
    return fake_quantize(weight, scale, zp, bits, axis=0)


def test_exercise2_accepts_two_correct_implementations(baseline):
    assert check_affine(affine_flat, baseline).passed
    assert check_affine(affine_loop, baseline).passed


def test_exercise2_rejects_the_symmetric_grid(baseline):
    assert not check_affine(affine_without_zero_point, baseline).passed


# ------------------------------------------------------------------ exercise 3 (cells nb02-49, nb02-50)

def random_activations(g: torch.Generator):
    x = torch.relu(torch.randn(2000, generator=g)) ** 2 * float(torch.rand(1, generator=g) * 5 + 0.1)
    return x, int(torch.randint(2, 9, (1,), generator=g))


def reference_mse(x, bits, grid=64, min_ratio=0.2):
    obs = MSEObserver(bits, grid=grid, min_ratio=min_ratio)
    obs(x)
    return obs.range()


def judged(clip_range):
    """The two properties the notebook's checker compares (cell nb02-50)."""
    def properties(x, bits, grid=64, min_ratio=0.2):
        lo, hi = (torch.as_tensor(v, dtype=torch.float32) for v in clip_range(x, bits, grid, min_ratio))
        alpha = float(hi / x.max())
        on_line = bool(torch.isclose(lo, alpha * x.min(), rtol=1e-4, atol=1e-6)) and \
            min_ratio - 1e-4 <= alpha <= 1 + 1e-4
        mse = lambda lo, hi: float(((fake_quantize(x, *choose_qparams(lo, hi, bits, signed=False), bits,
                                                   signed=False) - x) ** 2).mean())
        best = mse(*reference_mse(x, bits, grid, min_ratio))
        return {"range is alpha * (min x, max x)": on_line,
                "its MSE / the grid's smallest MSE (1 = smallest)": max(mse(lo, hi) / best, 1.0)}
    return properties


def check_mse(answer):
    fc1_input = torch.relu(torch.randn(4000, generator=torch.Generator().manual_seed(1))) ** 2
    return check.check_function(judged(answer), judged(reference_mse), [(fc1_input, 4), (fc1_input, 2)],
                                random=random_activations, trials=10, rtol=1e-3)


def _err(x, lo, hi, bits):
    scale, zp = choose_qparams(lo, hi, bits, signed=False)
    return ((fake_quantize(x, scale, zp, bits, signed=False) - x) ** 2).mean()


def mse_loop_first_on_tie(x, bits, grid=64, min_ratio=0.2):
    lo, hi = x.min(), x.max()
    best, best_err = (lo, hi), float("inf")
    for a in torch.linspace(min_ratio, 1.0, grid).tolist():
        err = float(_err(x, a * lo, a * hi, bits))
        if err < best_err:
            best, best_err = (a * lo, a * hi), err
    return best


def mse_vectorized_last_on_tie(x, bits, grid=64, min_ratio=0.2):
    """float64 errors and the *last* minimum: another correct search, another tie rule."""
    alphas = torch.linspace(min_ratio, 1.0, grid, dtype=torch.float64)
    errs = torch.stack([_err(x.double(), a * x.min().double(), a * x.max().double(), bits).double()
                        for a in alphas])
    k = len(errs) - 1 - int(torch.argmin(errs.flip(0)))
    return (alphas[k] * x.min()).float(), (alphas[k] * x.max()).float()


def mse_no_search(x, bits, grid=64, min_ratio=0.2):  # min-max: the observer it replaces
    return x.min(), x.max()


def mse_worst(x, bits, grid=64, min_ratio=0.2):  # argmax instead of argmin
    alphas = torch.linspace(min_ratio, 1.0, grid)
    errs = torch.stack([_err(x, a * x.min(), a * x.max(), bits) for a in alphas])
    k = int(torch.argmax(errs))
    return alphas[k] * x.min(), alphas[k] * x.max()


def test_exercise3_accepts_two_correct_searches():
    assert check_mse(mse_loop_first_on_tie).passed
    assert check_mse(mse_vectorized_last_on_tie).passed


@pytest.mark.parametrize("wrong", [mse_no_search, mse_worst])
def test_exercise3_rejects_a_wrong_search(wrong):
    result = check_mse(wrong)
    assert not result.passed and result.status == "wrong", result


def test_exercise3_rejects_a_range_off_the_line():
    def off_line(x, bits, grid=64, min_ratio=0.2):
        lo, hi = mse_loop_first_on_tie(x, bits, grid, min_ratio)
        return lo - 0.1 * (hi - lo), hi   # a lower end the search never proposes
    assert not check_mse(off_line).passed
