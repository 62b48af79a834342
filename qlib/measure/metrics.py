"""Classification metrics: accuracy, precision / recall / F1, confusion, top-k, agreement.

Introduced in notebook 00. Written by hand (they are short and worth reading) and checked
against scikit-learn in ``tests/test_metrics.py``.

For class c with TP_c, FP_c, FN_c taken from the confusion matrix C (rows = true class)::

    precision_c = TP_c / (TP_c + FP_c)   (0 if the class is never predicted)
    recall_c    = TP_c / (TP_c + FN_c)   (0 if the class never occurs)
    f1_c        = 2 P R / (P + R)        (0 if P + R = 0)

and the macro averages are plain means over the ``num_classes`` classes.

>>> r = classification_report([0, 1, 1, 2], [0, 1, 2, 2], 3)
>>> r["accuracy"], round(r["f1"], 4)
(0.75, 0.7778)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .._util import check_int, check_logits

__all__ = ["confusion_matrix", "classification_report", "top_k_accuracy", "agreement"]

ArrayLike = Tensor | np.ndarray | Sequence[int]


def _labels(x: ArrayLike, name: str) -> np.ndarray:
    if x is None or isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be 1-d integer class indices, got {type(x).__name__}")
    a = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-d class indices, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name} must hold integer class indices, got dtype {a.dtype}")
    return a.astype(np.int64)


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int) -> np.ndarray:
    """Counts (num_classes, num_classes): entry [i, j] = images of true class i predicted j."""
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    num_classes = check_int(num_classes, "num_classes", 1)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred must have the same length, got {len(t)} and "
                         f"{len(p)}")
    if t.size == 0:
        raise ValueError("y_true is empty: there is nothing to evaluate")
    for a, name in ((t, "y_true"), (p, "y_pred")):
        if a.min() < 0 or a.max() >= num_classes:
            raise ValueError(f"{name} holds labels outside 0..{num_classes - 1} "
                             f"(min {a.min()}, max {a.max()})")
    return np.bincount(t * num_classes + p, minlength=num_classes ** 2).reshape(
        num_classes, num_classes)


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)


def classification_report(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int) -> dict:
    """Accuracy, macro precision / recall / F1, per-class figures and the confusion matrix.

    Returns ``{"accuracy", "precision", "recall", "f1", "per_class", "confusion"}``: the four
    figures are fractions (macro averages over all ``num_classes`` classes); ``per_class`` is
    a list of ``{"precision", "recall", "f1", "support"}``; ``confusion`` is a nested list.
    """
    cm = confusion_matrix(y_true, y_pred, num_classes).astype(np.float64)
    tp = np.diag(cm)
    support = cm.sum(1)
    precision = _safe_div(tp, cm.sum(0))
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    per_class = [dict(precision=float(p), recall=float(r), f1=float(f), support=int(s))
                 for p, r, f, s in zip(precision, recall, f1, support)]
    return dict(accuracy=float(tp.sum() / cm.sum()), precision=float(precision.mean()),
                recall=float(recall.mean()), f1=float(f1.mean()), per_class=per_class,
                confusion=cm.astype(np.int64).tolist())


def top_k_accuracy(logits: Tensor, y_true: ArrayLike, k: int = 5) -> float:
    """Fraction of rows whose true class is among the k largest logits (N, classes)."""
    check_logits(logits, "logits")  # a NaN logit would rank as the largest
    if not 1 <= check_int(k, "k", 1) <= logits.shape[1]:
        raise ValueError(f"k must be in 1..{logits.shape[1]} (the class count), got {k}")
    t = torch.as_tensor(_labels(y_true, "y_true"))
    if len(t) != len(logits):
        raise ValueError(f"{len(logits)} rows of logits but {len(t)} labels")
    top = logits.topk(k, dim=1).indices
    return float((top == t.view(-1, 1)).any(1).float().mean())


def agreement(pred_a: ArrayLike, pred_b: ArrayLike) -> float:
    """Fraction of inputs on which two models predict the same class (top-1 fidelity)."""
    a, b = _labels(pred_a, "pred_a"), _labels(pred_b, "pred_b")
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"predictions must be non-empty and of equal length, got {len(a)} "
                         f"and {len(b)}")
    return float((a == b).mean())
