import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats as sps

from qlib.measure.stats import (bootstrap_ci, expected_calibration_error, imbalanced_indices, mcnemar,
                        output_kl, paired_bootstrap, paired_mean_diff,
                        reliability_bins)


@pytest.mark.parametrize("seed", range(4))
def test_mcnemar_matches_scipy_binomtest(seed):
    rng = np.random.default_rng(seed)
    a = rng.random(300) < 0.9
    b = np.where(rng.random(300) < 0.05, ~a, a)
    r = mcnemar(a, b)
    assert r["b"] == int((a & ~b).sum()) and r["c"] == int((~a & b).sum())
    ref = sps.binomtest(r["b"], r["b"] + r["c"], 0.5).pvalue if r["b"] + r["c"] else 1.0
    assert abs(r["p_value"] - ref) < 1e-12


def test_mcnemar_identical_models():
    assert mcnemar([1, 0, 1], [1, 0, 1]) == dict(b=0, c=0, p_value=1.0)


def test_bootstrap_ci_brackets_accuracy_and_shrinks_with_n():
    small = np.r_[np.ones(90), np.zeros(10)]
    big = np.tile(small, 100)
    acc, lo, hi = bootstrap_ci(small)
    acc2, lo2, hi2 = bootstrap_ci(big)
    assert acc == acc2 == 0.9 and lo < 0.9 < hi and lo2 < 0.9 < hi2
    assert (hi2 - lo2) < (hi - lo) / 5  # 100x the images: about 10x narrower
    # normal approximation sqrt(p(1-p)/n) gives the same width to within ~15%
    width = 2 * 1.96 * np.sqrt(0.09 / 100)
    assert abs((hi - lo) - width) / width < 0.15
    assert bootstrap_ci(small, seed=3) == bootstrap_ci(small, seed=3)


def test_paired_bootstrap():
    rng = np.random.default_rng(0)
    a = rng.random(1000) < 0.98
    same = paired_bootstrap(a, a)
    assert same["diff"] == 0 and same["low"] == same["high"] == 0 and same["p_value"] == 1
    b = a.copy()
    b[np.flatnonzero(a)[:40]] = False  # B loses 40 images A gets right
    r = paired_bootstrap(a, b)
    assert abs(r["diff"] - 0.04) < 1e-12 and r["low"] > 0 and r["p_value"] < 0.01


def test_output_kl_matches_torch():
    torch.manual_seed(0)
    p, q = torch.randn(50, 10), torch.randn(50, 10)
    ref = F.kl_div(F.log_softmax(q, 1), F.log_softmax(p, 1), log_target=True,
                   reduction="batchmean")
    assert abs(output_kl(p, q) - float(ref)) < 1e-6
    assert output_kl(p, p) == 0


def test_ece_by_hand():
    # 4 images: confidences .85, .85 (one right), .55, .55 (both right); 10 bins
    logits = torch.log(torch.tensor([[0.85, 0.15], [0.85, 0.15], [0.55, 0.45], [0.55, 0.45]]))
    labels = torch.tensor([0, 1, 0, 0])
    # bin (0.8,0.9]: conf .85 acc .5 -> gap .35 ; bin (0.5,0.6]: conf .55 acc 1 -> gap .45
    assert abs(expected_calibration_error(logits, labels, 10) - 0.4) < 1e-6
    bins = reliability_bins(logits, labels, 10)
    assert bins["count"].sum() == 4 and bins["count"][8] == 2 and bins["count"][5] == 2


def test_ece_perfectly_calibrated_is_small():
    torch.manual_seed(0)
    n = 20000
    conf = torch.rand(n) * 0.5 + 0.5
    labels = (torch.rand(n) > conf).long()  # class 0 right with probability conf
    logits = torch.log(torch.stack([conf, 1 - conf], 1))
    assert expected_calibration_error(logits, labels) < 0.02


def test_imbalanced_indices():
    labels = torch.arange(10).repeat_interleave(100)
    idx = imbalanced_indices(labels, [1.0] + [0.1] * 9)
    counts = torch.bincount(labels[idx], minlength=10).tolist()
    assert counts == [100] + [10] * 9


@pytest.mark.parametrize("call, match", [
    (lambda: bootstrap_ci([]), "non-empty"),
    (lambda: bootstrap_ci([0, 2]), "0/1"),
    (lambda: bootstrap_ci([0, 1], n_boot=10), "n_boot"),
    (lambda: bootstrap_ci([0, 1], confidence=1.5), "confidence"),
    (lambda: mcnemar([1, 0], [1]), "same images"),
    (lambda: paired_bootstrap([1, 0], [1]), "same images"),
    (lambda: output_kl(torch.zeros(2, 3), torch.zeros(2, 4)), "logits"),
    (lambda: reliability_bins(torch.zeros(2, 3), torch.zeros(2).long(), 0), "n_bins"),
    (lambda: imbalanced_indices(torch.tensor([0, 1]), [1.5, 1]), r"\[0, 1\]"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_paired_mean_diff_interval_covers_the_shift_and_sees_pairing():
    rng = np.random.default_rng(0)
    base = rng.normal(1.5, 0.5, 400)                    # per-window losses vary a lot ...
    shifted = base + 0.02 + rng.normal(0, 0.01, 400)    # ... the paired difference hardly
    r = paired_mean_diff(shifted, base)
    assert r["n"] == 400 and r["diff"] == pytest.approx(np.mean(shifted - base))
    assert r["low"] < 0.02 < r["high"] and r["low"] > 0 and r["p_value"] < 0.01
    # the same values unpaired (shuffled) give an interval that contains 0
    assert paired_mean_diff(rng.permutation(shifted), base)["low"] < 0
    same = paired_mean_diff(base, base)
    assert same["diff"] == 0 and same["p_value"] == 1.0


@pytest.mark.parametrize("a, b, match", [
    ([1.0, 2.0], [1.0], "same length"), ([], [], "non-empty"), ([[1.0]], [[1.0]], "1-D"),
    ([1.0, float("nan")], [1.0, 2.0], "finite"),
])
def test_paired_mean_diff_bad_input(a, b, match):
    with pytest.raises(ValueError, match=match):
        paired_mean_diff(a, b)


# ----- speed verdicts (notebook 08, the report) -------------------------------------------

from qlib.measure.stats import SAME_SPEED, speed_verdict  # noqa: E402


def test_speed_verdict_calls_a_difference_only_past_the_noise():
    quiet = [1.0, 1.01, 0.99]
    assert speed_verdict([1.5, 1.6, 1.55], quiet)["verdict"] == "faster"
    assert speed_verdict([0.5, 0.6, 0.55], quiet)["verdict"] == "slower"
    # the same 1.5x median, but one round inside the noise band: not called
    assert speed_verdict([1.5, 1.6, 1.005], quiet)["verdict"] == SAME_SPEED
    # every round 1.2x, but the reference differed from itself by 30%: noise, not a result
    r = speed_verdict([1.2, 1.2, 1.2], [1.3, 1.0, 1.0])
    assert r["verdict"] == SAME_SPEED and abs(r["noise"] - 0.3) < 1e-12
    r = speed_verdict([1.0] * 7, [1.0] * 7)  # identical timings: the same, never faster
    assert r["verdict"] == SAME_SPEED and r["speedup"] == 1.0 and r["noise"] == 0.0
    assert (r["low"], r["high"], r["rounds"]) == (1.0, 1.0, 7)


@pytest.mark.parametrize("bad", [dict(speedup=[1, 1], self_ratios=[1, 1, 1]),
                                 dict(speedup=[1, 1, 0], self_ratios=[1, 1, 1]),
                                 dict(speedup=[1, 1, float("nan")], self_ratios=[1, 1, 1])])
def test_speed_verdict_rejects_bad_ratios(bad):
    with pytest.raises(ValueError, match="at least 3 rounds|positive finite"):
        speed_verdict(**bad)
