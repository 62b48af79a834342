"""Tests for qlib.prune.llm: Wanda with flat activations is per-row magnitude pruning, N:M
groups are exact, SparseGPT beats magnitude on held-out inputs and is least squares where
the theory says so, sequential pruning sees the earlier layers pruned, bad input is refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import qlib
from qlib.prune.llm import (METHODS, collect_input_stats, nm_mask, prune_linear_layers,
                            sparsegpt, wanda_mask, wanda_scores)


@pytest.fixture(autouse=True)
def _seed() -> None:
    qlib.set_seed(0)


def _inputs(n: int, mix: torch.Tensor, loud: torch.Tensor) -> torch.Tensor:
    """X (d, n): correlated channels (a fixed mixing) of very different loudness."""
    return loud[:, None] * (mix @ torch.randn(mix.shape[0], n))


def _layer_error(w: torch.Tensor, w_hat: torch.Tensor, x: torch.Tensor) -> float:
    return float(((w - w_hat) @ x).pow(2).sum())        # ||W X - W' X||^2


def _layerwise_magnitude(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    k = round(sparsity * w.numel())
    mask = torch.ones(w.numel(), dtype=torch.bool)
    mask[w.abs().flatten().argsort()[:k]] = False
    return mask.view_as(w)


# ----- Wanda and N:M -------------------------------------------------------------------

@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.9])
def test_wanda_with_uniform_norms_is_per_row_magnitude(sparsity: float) -> None:
    w = torch.randn(16, 32)
    mask = wanda_mask(w, torch.full((32,), 3.0), sparsity)
    k = round(sparsity * 32)
    assert ((~mask).sum(1) == k).all()                  # every row loses exactly k
    for row, keep in zip(w.abs(), mask):                # ... its k smallest |w|
        expected = torch.ones(32, dtype=torch.bool)
        expected[row.argsort()[:k]] = False
        assert torch.equal(keep, expected)


def test_wanda_scores_weigh_weights_by_input_norms() -> None:
    w, norm = torch.randn(4, 6), torch.rand(6) * 10
    assert torch.allclose(wanda_scores(w, norm), w.abs() * norm)
    # a small weight on a loud input survives a large weight on a quiet one
    assert wanda_mask(torch.tensor([[0.1, 1.0]]), torch.tensor([100.0, 1.0]), 0.5).tolist() \
        == [[True, False]]


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8)])
def test_nm_mask_keeps_exactly_n_largest_of_every_m(n: int, m: int) -> None:
    scores = torch.rand(8, 32)
    mask = nm_mask(scores, n, m)
    groups, keep = scores.reshape(-1, m), mask.reshape(-1, m)
    assert (keep.sum(1) == n).all()
    kept_min = torch.where(keep, groups, torch.inf).amin(1)
    dropped_max = torch.where(keep, -torch.inf, groups).amax(1)
    assert (kept_min >= dropped_max).all()


def test_nm_mask_breaks_ties_by_position() -> None:
    assert nm_mask(torch.ones(2, 8)).tolist() == [[True, True, False, False] * 2] * 2


# ----- SparseGPT -----------------------------------------------------------------------

@pytest.mark.parametrize("pattern", [0.5, (2, 4)])
def test_sparsegpt_beats_magnitude_on_held_out_inputs(pattern) -> None:
    d_in, d_out = 64, 32
    mix = torch.randn(d_in, d_in) / d_in ** 0.5
    loud = torch.logspace(-1, 1, d_in)[torch.randperm(d_in)]   # scales 0.1..10, scattered
    x_cal, x_test = _inputs(1024, mix, loud), _inputs(1024, mix, loud)
    w = torch.randn(d_out, d_in)
    new, mask = sparsegpt(w, 2 * x_cal @ x_cal.T, pattern, block_size=32)
    assert int((~mask).sum()) == w.numel() // 2         # exactly the requested sparsity
    assert bool((new[~mask] == 0).all()) and int(new.count_nonzero()) == int(mask.sum())
    magnitude = nm_mask(w.abs(), *pattern) if isinstance(pattern, tuple) else \
        _layerwise_magnitude(w, pattern)
    err_sparsegpt = _layer_error(w, new, x_test)
    err_magnitude = _layer_error(w, w * magnitude, x_test)
    assert err_sparsegpt < 0.5 * err_magnitude
    if isinstance(pattern, tuple):                      # 2 of every 4 survive
        assert (mask.reshape(-1, 4).sum(1) == 2).all()


@pytest.mark.parametrize("sparsity", [0.3, 0.77])
def test_sparsegpt_exact_sparsity_with_ragged_blocks(sparsity: float) -> None:
    x = torch.randn(50, 200)
    new, mask = sparsegpt(torch.randn(7, 50), x @ x.T, sparsity, block_size=16)
    assert int((~mask).sum()) == round(sparsity * 350)
    assert bool((new[~mask] == 0).all())


def test_sparsegpt_pruning_the_first_column_is_least_squares() -> None:
    # OBS with every later weight free is the least-squares fit of the layer's output.
    x = torch.randn(8, 100, dtype=torch.float64)
    h = x @ x.T
    w = torch.randn(1, 8, dtype=torch.float64)
    w[0, 0] = 1e-3                                       # the one weight to go
    new, mask = sparsegpt(w, h, 1 / 8, block_size=8, damp=0.0)
    assert mask[0].tolist() == [False] + [True] * 7
    best = torch.linalg.solve(h[1:, 1:], h[1:, :] @ w[0])  # normal equations, w'_0 = 0
    assert torch.allclose(new[0, 1:], best, atol=1e-9)


def test_sparsegpt_at_zero_sparsity_changes_nothing() -> None:
    x, w = torch.randn(16, 64), torch.randn(4, 16)
    new, mask = sparsegpt(w, x @ x.T, 0.0)
    assert mask.all() and torch.allclose(new, w, atol=1e-6)


# ----- statistics and whole models ------------------------------------------------------

class Tiny(nn.Module):
    """An LM-shaped toy: two hidden Linears and a head that is excluded by name."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.lm_head = nn.Linear(8, 16), nn.Linear(16, 8), nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.fc2(torch.relu(self.fc1(x))))


def test_collect_input_stats_equals_direct_computation() -> None:
    model, batches = Tiny(), [torch.randn(2, 5, 8) for _ in range(3)]
    stats = collect_input_stats(model, {"fc1": model.fc1, "fc2": model.fc2},
                                [(b, None) for b in batches])   # (input, target) pairs work
    x1 = torch.cat(batches).reshape(-1, 8)                      # (B*T, in)
    x2 = torch.relu(model.fc1(x1)).detach()
    for name, x in (("fc1", x1), ("fc2", x2)):
        assert stats[name].count == 30
        assert torch.allclose(stats[name].hessian, x.T @ x, atol=1e-4)
        assert torch.allclose(stats[name].act_norm, x.norm(dim=0), atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("target", [{"sparsity": 0.5}, {"nm": (2, 4)}])
def test_prune_linear_layers(method: str, target: dict) -> None:
    model, batches = Tiny(), [torch.randn(4, 6, 8) for _ in range(2)]
    head = model.lm_head.weight.detach().clone()
    report = prune_linear_layers(model, method, batches=batches, **target)
    assert list(report) == ["fc1", "fc2"]                       # lm_head excluded
    assert torch.equal(model.lm_head.weight, head)
    for name, row in report.items():
        w = model.get_submodule(name).weight
        assert row["sparsity"] == 0.5 and int(w.count_nonzero()) == row["nonzeros"]
        assert 0.0 <= row["rel_error"] < 1.0


def test_sequential_wanda_sees_the_earlier_layer_pruned() -> None:
    model, batches = Tiny(), [torch.randn(4, 6, 8)]
    reference = Tiny()
    reference.load_state_dict(model.state_dict())
    prune_linear_layers(model, "wanda", sparsity=0.5, batches=batches)
    # by hand: prune fc1, then measure fc2's inputs through the pruned fc1
    x = batches[0].reshape(-1, 8)
    with torch.no_grad():
        norm1 = x.norm(dim=0)
        reference.fc1.weight.mul_(wanda_mask(reference.fc1.weight, norm1, 0.5))
        norm2 = torch.relu(reference.fc1(x)).norm(dim=0)
    assert torch.equal(model.fc2.weight != 0, wanda_mask(reference.fc2.weight, norm2, 0.5))


def test_a_layer_called_twice_sees_both_inputs() -> None:
    shared = nn.Linear(8, 8)
    model = nn.Sequential(shared, nn.Tanh(), shared)
    x = torch.randn(3, 8)
    st = collect_input_stats(model, {"0": shared}, [x])["0"]
    both = torch.cat([x, torch.tanh(shared(x))]).detach()
    assert st.count == 6 and torch.allclose(st.hessian, both.T @ both, atol=1e-5)
    first = collect_input_stats(model, {"0": shared}, [x], stop_early=True)["0"]
    assert first.count == 3                                  # stopped after the first call
    report = prune_linear_layers(model, "sparsegpt", batches=[x])  # no early stop here
    assert report["0"]["sparsity"] == 0.5


def test_magnitude_needs_no_calibration() -> None:
    model = Tiny()
    report = prune_linear_layers(model, "magnitude", sparsity=0.25)
    assert report["fc1"]["sparsity"] == 0.25 and "rel_error" not in report["fc1"]


# ----- bad input ----------------------------------------------------------------------

@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, float("nan")])
def test_sparsity_outside_zero_one_is_refused(sparsity: float) -> None:
    w = torch.randn(4, 8)
    with pytest.raises(ValueError, match="sparsity"):
        wanda_mask(w, torch.ones(8), sparsity)
    with pytest.raises(ValueError, match="sparsity"):
        sparsegpt(w, torch.eye(8), sparsity)


def test_bad_patterns_and_shapes_are_refused() -> None:
    w = torch.randn(4, 8)
    with pytest.raises(ValueError, match="n <= m"):
        nm_mask(w.abs(), 4, 2)
    with pytest.raises(ValueError, match="multiple of m"):
        nm_mask(torch.rand(4, 6), 2, 4)
    with pytest.raises(ValueError, match="act_norm"):
        wanda_mask(w, torch.ones(7), 0.5)
    with pytest.raises(ValueError, match="hessian"):
        sparsegpt(w, torch.eye(7), 0.5)
    with pytest.raises(ValueError, match="block_size"):
        sparsegpt(w, torch.eye(8), (2, 4), block_size=6)
    with pytest.raises(ValueError, match="NaN"):
        sparsegpt(w, torch.full((8, 8), float("nan")), 0.5)


def test_bad_calibration_is_refused() -> None:
    model = Tiny()
    layers = {"fc1": model.fc1}
    with pytest.raises(ValueError, match="empty"):
        collect_input_stats(model, layers, [])
    with pytest.raises(ValueError, match="NaN"):
        collect_input_stats(model, layers, [torch.full((2, 8), float("nan"))])
    with pytest.raises(ValueError, match="never called"):
        collect_input_stats(model, {"x": nn.Linear(8, 8)}, [torch.randn(2, 8)])
    with pytest.raises(ValueError, match="empty"):
        prune_linear_layers(model, "wanda", batches=[])
    with pytest.raises(ValueError, match="needs calibration"):
        prune_linear_layers(model, "sparsegpt")
    with pytest.raises(ValueError, match="method"):
        prune_linear_layers(model, "random", batches=[torch.randn(2, 8)])
    with pytest.raises(ValueError, match="not both"):
        prune_linear_layers(model, "magnitude", sparsity=0.5, nm=(2, 4))
    with pytest.raises(ValueError, match="no nn.Linear named"):
        prune_linear_layers(model, "magnitude", layers=["fc9"])
