import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from qlib.metrics import agreement, classification_report, confusion_matrix, top_k_accuracy


def _sk(y_true, y_pred, k):
    labels = list(range(k))
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels,
                                                     average=None, zero_division=0)
    return dict(accuracy=skm.accuracy_score(y_true, y_pred), p=p, r=r, f=f, s=s,
                cm=skm.confusion_matrix(y_true, y_pred, labels=labels))


@pytest.mark.parametrize("seed", range(5))
def test_matches_sklearn_random(seed):
    rng = np.random.default_rng(seed)
    k = 7
    y_true = rng.integers(0, k, 300)
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, k, 300))
    ours, ref = classification_report(y_true, y_pred, k), _sk(y_true, y_pred, k)
    assert abs(ours["accuracy"] - ref["accuracy"]) < 1e-6
    assert abs(ours["precision"] - ref["p"].mean()) < 1e-6
    assert abs(ours["recall"] - ref["r"].mean()) < 1e-6
    assert abs(ours["f1"] - ref["f"].mean()) < 1e-6
    assert abs(ours["f1"] - skm.f1_score(y_true, y_pred, average="macro", labels=range(k),
                                         zero_division=0)) < 1e-6
    for c, row in enumerate(ours["per_class"]):
        assert abs(row["precision"] - ref["p"][c]) < 1e-6
        assert abs(row["recall"] - ref["r"][c]) < 1e-6
        assert abs(row["f1"] - ref["f"][c]) < 1e-6
        assert row["support"] == ref["s"][c]
    assert np.array_equal(ours["confusion"], ref["cm"])


def test_class_never_predicted_and_never_present():
    # class 2 never predicted; class 3 never present (but predicted); class 4 neither
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 3, 0]
    ours, ref = classification_report(y_true, y_pred, 5), _sk(y_true, y_pred, 5)
    pc = ours["per_class"]
    assert pc[2]["precision"] == 0 and pc[2]["recall"] == 0  # never predicted
    assert pc[3]["recall"] == 0 and pc[3]["support"] == 0  # never present
    assert pc[4] == dict(precision=0.0, recall=0.0, f1=0.0, support=0)
    for key, arr in (("precision", ref["p"]), ("recall", ref["r"]), ("f1", ref["f"])):
        assert abs(ours[key] - arr.mean()) < 1e-6


def test_confusion_rows_are_true_class():
    cm = confusion_matrix(torch.tensor([0, 0, 1]), torch.tensor([1, 1, 1]), 2)
    assert cm.tolist() == [[0, 2], [0, 1]]


def test_perfect_and_tensor_inputs():
    y = torch.arange(10).repeat(3)
    r = classification_report(y, y, 10)
    assert r["accuracy"] == r["precision"] == r["recall"] == r["f1"] == 1.0


def test_top_k_against_sklearn():
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(200, 6)), dtype=torch.float32)
    y = rng.integers(0, 6, 200)
    for k in (1, 2, 3):
        ref = skm.top_k_accuracy_score(y, logits.numpy(), k=k, labels=range(6))
        assert abs(top_k_accuracy(logits, y, k) - ref) < 1e-6
    assert top_k_accuracy(logits, y, 6) == 1.0


def test_agreement():
    assert agreement([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75


@pytest.mark.parametrize("call, match", [
    (lambda: classification_report([0, 1], [0], 2), "same length"),
    (lambda: classification_report([0, 5], [0, 1], 3), "outside 0..2"),
    (lambda: classification_report([], [], 3), "empty"),
    (lambda: classification_report([0, 1], [0, 1], 0), "num_classes"),
    (lambda: classification_report([[0, 1]], [[0, 1]], 2), "1-d"),
    (lambda: top_k_accuracy(torch.zeros(3, 4), [0, 1, 2], k=5), "k must be in 1..4"),
    (lambda: agreement([1, 2], [1]), "equal length"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_float_labels_rejected():
    with pytest.raises(TypeError, match="integer"):
        classification_report(np.array([0.5, 1.0]), np.array([0, 1]), 2)


# ---------------------------------------------------------------- paired statistics (notebook 07)

from math import comb  # noqa: E402

from scipy import optimize  # noqa: E402
from scipy.stats import norm  # noqa: E402

from qlib.measure import stats  # noqa: E402
from qlib.metrics import holm, mcnemar_min_p, non_inferiority, paired_diff_ci  # noqa: E402


def _vectors(a, b, c, d):
    """Per-image correctness of models A and B with the 2x2 counts a, b, c, d."""
    x = [1] * a + [1] * b + [0] * c + [0] * d
    y = [1] * a + [0] * b + [1] * c + [0] * d
    return np.array(x), np.array(y)


def _wilson_by_root(x, n, z):
    """Reference Wilson limits: the roots of (x/n - p)^2 = z^2 p (1 - p) / n, found numerically."""
    f = lambda p: (x / n - p) ** 2 - z * z * p * (1 - p) / n  # noqa: E731
    ph = x / n
    # f(0) > 0 and f(1) > 0 unless x is 0 or n; f < 0 just inside p-hat (p-hat itself is a
    # root when x is 0 or n, hence the small step away from it)
    low = 0.0 if x == 0 else optimize.brentq(f, 0.0, ph - 1e-12, xtol=1e-14)
    high = 1.0 if x == n else optimize.brentq(f, ph + 1e-12, 1.0, xtol=1e-14)
    return low, high


def _newcombe_reference(a, b, c, d, confidence=0.95):
    """Newcombe (1998) method 10, written from the paper's definitions, Wilson limits by root."""
    n = a + b + c + d
    z = norm.ppf((1 + confidence) / 2)
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = _wilson_by_root(a + b, n, z)
    l2, u2 = _wilson_by_root(a + c, n, z)
    den = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / np.sqrt(den) if den else 0.0
    dl2 = (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2
    du2 = (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2
    return p1 - p2 - np.sqrt(max(dl2, 0)), p1 - p2 + np.sqrt(max(du2, 0))


@pytest.mark.parametrize("counts", [(980, 3, 0, 17), (960, 20, 10, 10), (5, 1, 7, 12),
                                    (50, 0, 0, 50), (0, 10, 5, 0), (100, 0, 0, 0),
                                    (30, 12, 12, 6), (1, 0, 1, 0)])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_paired_diff_ci_matches_the_reference(counts, confidence):
    x, y = _vectors(*counts)
    r = paired_diff_ci(x, y, confidence=confidence)
    lo, hi = _newcombe_reference(*counts, confidence=confidence)
    assert (r["a"], r["b"], r["c"], r["d"], r["n"]) == (*counts, sum(counts))
    assert r["diff"] == pytest.approx((counts[1] - counts[2]) / sum(counts))
    assert r["low"] == pytest.approx(max(lo, -1), abs=1e-9)
    assert r["high"] == pytest.approx(min(hi, 1), abs=1e-9)
    assert -1 <= r["low"] <= r["diff"] <= r["high"] <= 1


def test_paired_diff_ci_properties():
    x, y = _vectors(900, 40, 25, 35)
    ab, ba = paired_diff_ci(x, y), paired_diff_ci(y, x)
    assert ab["low"] == pytest.approx(-ba["high"]) and ab["high"] == pytest.approx(-ba["low"])
    narrow, wide = paired_diff_ci(x, y, confidence=0.8), paired_diff_ci(x, y, confidence=0.99)
    assert wide["low"] < narrow["low"] < narrow["high"] < wide["high"]
    none = paired_diff_ci(*_vectors(990, 0, 0, 10))   # no discordant images: not a point
    assert none["low"] < 0 < none["high"]


def test_paired_diff_ci_coverage_is_near_nominal():
    # 3,000 simulated test sets of 300 images, true difference +2 points, correlated models
    rng = np.random.default_rng(0)
    probs = np.array([0.85, 0.06, 0.04, 0.05])          # a, b, c, d
    true = probs[1] - probs[2]
    hits = 0
    for _ in range(3000):
        a, b, c, d = rng.multinomial(300, probs)
        r = paired_diff_ci(*_vectors(a, b, c, d))
        hits += r["low"] <= true <= r["high"]
    assert 0.93 <= hits / 3000 <= 0.975


def test_paired_diff_ci_rejects_bad_input():
    with pytest.raises(ValueError, match="same images"):
        paired_diff_ci([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="0/1"):
        paired_diff_ci([1, 2], [1, 0])
    with pytest.raises(ValueError, match="confidence"):
        paired_diff_ci([1, 0], [1, 0], confidence=1.0)


def test_non_inferiority_decides_on_the_lower_bound():
    ref = np.ones(1000, dtype=int)
    for lost in range(0, 12):
        new = ref.copy()
        new[:lost] = 0
        r = non_inferiority(new, ref, margin=0.01)
        assert r["non_inferior"] == (r["low"] > -0.01)
        assert r["margin"] == 0.01 and r["diff"] == pytest.approx(-lost / 1000)
    assert non_inferiority(ref, ref, margin=0.01)["non_inferior"]
    assert not non_inferiority(np.r_[np.zeros(50, int), ref[50:]], ref, margin=0.01)["non_inferior"]
    with pytest.raises(ValueError, match="margin"):
        non_inferiority(ref, ref, margin=0)
    with pytest.raises(ValueError, match="margin"):
        non_inferiority(ref, ref, margin=1.5)


@pytest.mark.parametrize("n", range(0, 15))
def test_mcnemar_min_p_is_the_smallest_exact_p(n):
    # brute force: the exact p of every split of n discordant images; the smallest is the floor
    if n == 0:
        assert mcnemar_min_p(0) == 1.0
        return
    ps = [stats.mcnemar([1] * k + [0] * (n - k), [0] * k + [1] * (n - k))["p_value"]
          for k in range(n + 1)]
    assert mcnemar_min_p(n) == pytest.approx(min(ps)) == pytest.approx(min(1.0, 2 * 0.5 ** n))
    assert sum(comb(n, k) for k in range(n + 1)) == 2 ** n


def test_mcnemar_min_p_rejects_bad_input():
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="n_discordant"):
            mcnemar_min_p(bad)


def _holm_by_procedure(p, alpha):
    """Holm's step-down procedure itself: which hypotheses it rejects at level alpha."""
    m = len(p)
    rejected = set()
    for rank, i in enumerate(sorted(range(m), key=lambda k: p[k])):
        if p[i] > alpha / (m - rank):
            break
        rejected.add(i)
    return rejected


@pytest.mark.parametrize("seed", range(5))
def test_holm_agrees_with_the_step_down_procedure(seed):
    rng = np.random.default_rng(seed)
    p = np.round(np.r_[rng.uniform(0, 0.02, 4), rng.uniform(0, 1, 8)], 4).tolist()
    adj = holm(p)
    for alpha in (0.01, 0.05, 0.1, 0.2):
        assert {i for i, q in enumerate(adj) if q <= alpha} == _holm_by_procedure(p, alpha)
    assert all(q >= pi for pi, q in zip(p, adj)) and all(q <= min(1, len(p) * pi)
                                                        for pi, q in zip(p, adj))


def test_holm_small_cases_and_errors():
    assert holm([]) == []
    assert holm([0.04]) == [0.04]
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError, match=r"p_values\[1\]"):
        holm([0.1, 1.5])
