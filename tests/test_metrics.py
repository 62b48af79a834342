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
