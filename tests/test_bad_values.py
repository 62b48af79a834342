"""Bad values are refused where they enter qlib (issue 18): NaN / Inf, empty batches,
non-tensors, complex tensors, zero batch sizes, impossible budgets.

One table: (id, a call with one bad input, the exception type, a regex its message must
match). Each regex names the argument and what is allowed (or what was got), so a message
that stops saying either fails here. A second, short table holds inputs that look odd but
have a right answer, and checks that answer.
"""

from __future__ import annotations

import importlib
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from qlib.data import CorruptDataError, calibration_batches, load_dataset, load_torchvision
from qlib.distill import distillation_loss, kd_loss_fn, soft_targets
from qlib.measure.metrics import agreement, confusion_matrix, top_k_accuracy
from qlib.measure.stats import (bootstrap_ci, expected_calibration_error, imbalanced_indices,
                                mcnemar, output_kl, paired_mean_diff, reliability_bins)
from qlib.quant.affine import choose_qparams, dequantize, fake_quantize, minmax, quantize

assign_bits = importlib.import_module("qlib.quant.ptq").assign_bits  # qlib.quant.ptq is
# also the name of a function, so `from qlib.quant.ptq import` reaches the module this way

NAN, INF = math.nan, math.inf
S, Z = torch.tensor(0.1), torch.tensor(0)          # good per-tensor qparams
X = torch.tensor([0.5, -0.25])                     # a good input
Y = torch.tensor([0, 1])                           # labels of two rows
L = torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 1.0]])  # logits of two rows, three classes
NAN_L = torch.tensor([[NAN, 0.0, 1.0], [0.0, 3.0, 1.0]])
INF_L = torch.tensor([[INF, 0.0, 1.0], [0.0, 3.0, 1.0]])
EMPTY_L = torch.zeros(0, 3)
SENS = {"a": {2: 0.30, 8: 0.0}, "b": {2: 0.01, 8: 0.0}}
COUNTS = {"a": 100, "b": 100}


def _splits():
    return load_dataset("embedded")  # cached after the first call


def _kd(student=L, teacher=L, targets=Y, temperature=2.0, alpha=0.5):
    return distillation_loss(student, teacher, targets, temperature=temperature, alpha=alpha)


def _corrupt_mnist(content: bytes) -> None:
    """An MNIST folder whose training images file holds ``content``, then load it."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for prefix, n in (("train", 60), ("t10k", 20)):
            for kind, dims, nd in (("images-idx3", (n, 28, 28), 3), ("labels-idx1", (n,), 1)):
                header = bytes([0, 0, 8, nd]) + b"".join(d.to_bytes(4, "big") for d in dims)
                (raw / f"{prefix}-{kind}-ubyte").write_bytes(header + bytes(int(np.prod(dims))))
        (raw / "train-images-idx3-ubyte").write_bytes(content)
        load_torchvision("mnist", tmp, download=False, val_size=10)


BAD = [
    # --- qlib.measure.stats: calibration, fidelity, intervals, paired tests -------------
    ("ece-nan-logits", lambda: expected_calibration_error(NAN_L, Y), ValueError,
     r"logits holds NaN or Inf .* only finite values are allowed"),
    ("ece-empty-batch", lambda: expected_calibration_error(EMPTY_L, Y[:0]), ValueError,
     r"logits must be \(N, classes\) logits with N >= 1 rows"),
    ("ece-list-logits", lambda: expected_calibration_error([[1.0, 2.0]], [0]), TypeError,
     r"logits must be a torch\.Tensor, got list"),
    ("reliability-inf-logits", lambda: reliability_bins(INF_L, Y), ValueError,
     r"logits holds NaN or Inf"),
    ("reliability-nan-n_bins", lambda: reliability_bins(L, Y, NAN), ValueError,
     r"n_bins must be an int >= 1, got nan"),
    ("reliability-float-labels", lambda: reliability_bins(L, torch.tensor([0.0, 1.0])),
     TypeError, r"labels must hold integer class indices, got torch\.float32"),
    ("output_kl-nan-ref", lambda: output_kl(NAN_L, L), ValueError,
     r"logits_ref holds NaN or Inf"),
    ("output_kl-inf-other", lambda: output_kl(L, INF_L), ValueError,
     r"logits_other holds NaN or Inf"),
    ("output_kl-empty", lambda: output_kl(EMPTY_L, EMPTY_L), ValueError,
     r"logits_ref must be \(N, classes\) logits with N >= 1"),
    ("output_kl-list", lambda: output_kl(L.tolist(), L), TypeError,
     r"logits_ref must be a torch\.Tensor, got list"),
    ("bootstrap_ci-nan", lambda: bootstrap_ci([1, NAN, 0]), ValueError,
     r"correct must hold only 0/1 or False/True .*got nan"),
    ("bootstrap_ci-empty", lambda: bootstrap_ci([]), ValueError,
     r"correct must be a non-empty 1-d array"),
    ("bootstrap_ci-nan-n_boot", lambda: bootstrap_ci([1, 0], n_boot=NAN), ValueError,
     r"n_boot .* must be an int >= 100, got nan"),
    ("bootstrap_ci-nan-confidence", lambda: bootstrap_ci([1, 0], confidence=NAN), ValueError,
     r"confidence must be a finite number in \(0, 1\), got nan"),
    ("mcnemar-nan", lambda: mcnemar([1, 0], [1, NAN]), ValueError,
     r"correct_b must hold only 0/1 .*got nan"),
    ("mcnemar-empty", lambda: mcnemar([], []), ValueError,
     r"correct_a must be a non-empty 1-d array"),
    ("paired_mean_diff-nan", lambda: paired_mean_diff([1.0, NAN], [1.0, 2.0]), ValueError,
     r"a and b must be finite"),
    ("paired_mean_diff-empty", lambda: paired_mean_diff([], []), ValueError,
     r"a and b must be 1-D, non-empty"),
    ("paired_mean_diff-complex", lambda: paired_mean_diff([1j, 2.0], [1.0, 2.0]), TypeError,
     r"a must be real numbers"),
    ("paired_mean_diff-None", lambda: paired_mean_diff([1.0, 2.0], None), TypeError,
     r"b must be real numbers"),
    ("imbalanced_indices-empty", lambda: imbalanced_indices(torch.tensor([], dtype=torch.long),
                                                            [1.0]), ValueError,
     r"labels must be a non-empty tensor of class indices"),
    # --- qlib.measure.metrics ------------------------------------------------------------
    ("confusion_matrix-nan-labels", lambda: confusion_matrix(np.array([0.0, NAN]), [0, 1], 2),
     TypeError, r"y_true must hold integer class indices, got dtype float64"),
    ("confusion_matrix-nan-num_classes", lambda: confusion_matrix([0, 1], [0, 1], NAN),
     ValueError, r"num_classes must be an int >= 1, got nan"),
    ("confusion_matrix-None", lambda: confusion_matrix([0, 1], None, 2), TypeError,
     r"y_pred must be 1-d integer class indices, got NoneType"),
    ("top_k-nan-logits", lambda: top_k_accuracy(NAN_L, Y, 1), ValueError,
     r"logits holds NaN or Inf"),
    ("top_k-empty", lambda: top_k_accuracy(EMPTY_L, Y[:0], 1), ValueError,
     r"logits must be \(N, classes\) logits with N >= 1"),
    ("top_k-list", lambda: top_k_accuracy(L.tolist(), Y, 1), TypeError,
     r"logits must be a torch\.Tensor, got list"),
    ("top_k-float-k", lambda: top_k_accuracy(L, Y, 2.0), ValueError,
     r"k must be an int >= 1, got 2\.0"),
    ("agreement-nan", lambda: agreement(np.array([NAN, 1.0]), [0, 1]), TypeError,
     r"pred_a must hold integer class indices"),
    # --- qlib.distill ----------------------------------------------------------------------
    ("kd-nan-student", lambda: _kd(student=NAN_L), ValueError,
     r"student_logits holds NaN or Inf .* only finite values are allowed"),
    ("kd-inf-teacher", lambda: _kd(teacher=INF_L), ValueError,
     r"teacher_logits holds NaN or Inf"),
    ("kd-empty-batch", lambda: _kd(EMPTY_L, EMPTY_L, Y[:0]), ValueError,
     r"student_logits must be \(N, classes\) logits with N >= 1 rows \(an empty batch"),
    ("kd-float-targets", lambda: _kd(targets=torch.tensor([1.0, 2.0])), TypeError,
     r"targets must hold integer class indices .*got torch\.float32"),
    ("kd-targets-out-of-range", lambda: _kd(targets=torch.tensor([0, 5])), ValueError,
     r"targets must lie in 0\.\.2 .*max 5"),
    ("kd-negative-target", lambda: _kd(targets=torch.tensor([-100, 1])), ValueError,
     r"targets must lie in 0\.\.2 .*min -100"),
    ("kd-complex-logits", lambda: _kd(student=L.to(torch.complex64)), TypeError,
     r"student_logits is complex .* only real tensors are allowed"),
    ("kd-int-logits", lambda: _kd(student=L.long(), teacher=L.long()), TypeError,
     r"student_logits must be floating-point logits, got torch\.int64"),
    ("kd-str-temperature", lambda: _kd(temperature="2"), TypeError,
     r"temperature must be a real number, got str"),
    ("kd-inf-temperature", lambda: _kd(temperature=INF), ValueError,
     r"temperature must be a finite number > 0, got inf"),
    ("kd-nan-alpha", lambda: _kd(alpha=NAN), ValueError,
     r"alpha .* must be a finite number in \[0, 1\], got nan"),
    ("soft_targets-nan", lambda: soft_targets(NAN_L, 2.0), ValueError,
     r"logits holds NaN or Inf"),
    ("kd_loss_fn-nan-hint_weight", lambda: kd_loss_fn(nn.Linear(2, 2), temperature=2.0,
                                                      alpha=0.5, hint_weight=NAN),
     ValueError, r"hint_weight must be a finite number >= 0, got nan"),
    # --- qlib.quant.affine -----------------------------------------------------------------
    ("dequantize-nan-codes", lambda: dequantize(torch.tensor([1.0, NAN]), S, Z), ValueError,
     r"q holds NaN or Inf .* only finite values are allowed"),
    ("dequantize-inf-codes", lambda: dequantize(torch.tensor([INF]), S, Z), ValueError,
     r"q holds NaN or Inf"),
    ("dequantize-fractional-codes", lambda: dequantize(torch.tensor([0.5]), S, Z),
     ValueError, r"q must hold whole numbers \(integer codes\), got 0\.5"),
    ("dequantize-fractional-zero_point", lambda: dequantize(torch.tensor([1]), S,
                                                            torch.tensor(0.5)),
     ValueError, r"zero_point must hold whole numbers .*got 0\.5"),
    ("dequantize-nan-zero_point", lambda: dequantize(torch.tensor([1]), S, torch.tensor(NAN)),
     ValueError, r"zero_point must hold whole numbers .*got nan"),
    ("dequantize-zero-scale", lambda: dequantize(torch.tensor([1]), torch.tensor(0.0), Z),
     ValueError, r"scale must be positive \(> 0\), got min 0"),
    ("dequantize-inf-scale", lambda: dequantize(torch.tensor([1]), torch.tensor(INF), Z),
     ValueError, r"scale holds NaN or Inf"),
    ("dequantize-list", lambda: dequantize([1, 2], S, Z), TypeError,
     r"q must be a torch\.Tensor, got list"),
    ("dequantize-None", lambda: dequantize(None, S, Z), TypeError,
     r"q must be a torch\.Tensor, got NoneType"),
    ("dequantize-complex", lambda: dequantize(torch.tensor([1 + 0j]), S, Z), TypeError,
     r"q is complex .* only real tensors are allowed"),
    ("quantize-complex", lambda: quantize(torch.tensor([1 + 2j]), S, Z, 8), TypeError,
     r"x is complex \(torch\.complex64\); only real tensors are allowed"),
    ("quantize-list", lambda: quantize([0.5], S, Z, 8), TypeError,
     r"x must be a torch\.Tensor, got list"),
    ("quantize-ndarray", lambda: quantize(np.array([0.5]), S, Z, 8), TypeError,
     r"x must be a torch\.Tensor, got ndarray"),
    ("quantize-None", lambda: quantize(None, S, Z, 8), TypeError,
     r"x must be a torch\.Tensor, got NoneType"),
    ("quantize-nan-x", lambda: quantize(torch.tensor([NAN]), S, Z, 8), ValueError,
     r"x holds NaN or Inf"),
    ("quantize-nan-scale", lambda: quantize(X, torch.tensor(NAN), Z, 8), ValueError,
     r"scale holds NaN or Inf .* only finite values are allowed"),
    ("quantize-inf-scale", lambda: quantize(X, torch.tensor(INF), Z, 8), ValueError,
     r"scale holds NaN or Inf"),
    ("quantize-zero-scale", lambda: quantize(X, torch.tensor(0.0), Z, 8), ValueError,
     r"scale must be positive \(> 0\), got min 0"),
    ("quantize-negative-scale", lambda: quantize(X, torch.tensor(-0.1), Z, 8), ValueError,
     r"scale must be positive \(> 0\), got min -0\.1"),
    ("quantize-None-scale", lambda: quantize(X, None, Z, 8), TypeError,
     r"scale must be a real tensor, array or number, got NoneType"),
    ("quantize-str-zero_point", lambda: quantize(X, S, "0", 8), TypeError,
     r"zero_point must be a real tensor, array or number, got str"),
    ("quantize-zero_point-outside", lambda: quantize(X, S, torch.tensor(300), 8), ValueError,
     r"zero_point must lie in qrange = \[-128, 127\], got \[300, 300\]"),
    ("quantize-nan-bits", lambda: quantize(X, S, Z, NAN), ValueError,
     r"bits must be an int in 1\.\.16, got nan"),
    ("fake_quantize-complex", lambda: fake_quantize(torch.tensor([1 + 2j]), S, Z, 8),
     TypeError, r"x is complex"),
    ("fake_quantize-None", lambda: fake_quantize(None, S, Z, 8), TypeError,
     r"x must be a torch\.Tensor, got NoneType"),
    ("fake_quantize-list", lambda: fake_quantize([0.5], S, Z, 8), TypeError,
     r"x must be a torch\.Tensor, got list"),
    ("fake_quantize-inf-x", lambda: fake_quantize(torch.tensor([INF]), S, Z, 8), ValueError,
     r"x holds NaN or Inf"),
    ("fake_quantize-zero-scale", lambda: fake_quantize(X, torch.tensor(0.0), Z, 8),
     ValueError, r"scale must be positive \(> 0\)"),
    ("fake_quantize-fractional-zero_point", lambda: fake_quantize(X, S, torch.tensor(1.5), 8),
     ValueError, r"zero_point must hold whole numbers .*got 1\.5"),
    ("choose_qparams-nan-min", lambda: choose_qparams(torch.tensor(NAN), torch.tensor(1.0), 8),
     ValueError, r"x_min holds NaN or Inf"),
    ("choose_qparams-inf-max", lambda: choose_qparams(0.0, INF, 8), ValueError,
     r"x_max holds NaN or Inf"),
    ("choose_qparams-None", lambda: choose_qparams(None, 1.0, 8), TypeError,
     r"x_min must be a real tensor, array or number, got NoneType"),
    ("choose_qparams-complex", lambda: choose_qparams(torch.tensor(-1 + 0j), 1.0, 8),
     TypeError, r"x_min is complex"),
    ("minmax-nan", lambda: minmax(torch.tensor([1.0, NAN])), ValueError,
     r"x holds NaN or Inf"),
    ("minmax-complex", lambda: minmax(torch.tensor([1 + 1j])), TypeError, r"x is complex"),
    ("minmax-None", lambda: minmax(None), TypeError,
     r"x must be a real tensor, array or number, got NoneType"),
    # --- qlib.quant.ptq.assign_bits ----------------------------------------------------
    ("assign_bits-nan-budget", lambda: assign_bits(SENS, COUNTS, NAN), ValueError,
     r"budget_bytes must be a finite number > 0, got nan"),
    ("assign_bits-inf-budget", lambda: assign_bits(SENS, COUNTS, INF), ValueError,
     r"budget_bytes must be a finite number > 0, got inf"),
    ("assign_bits-negative-budget", lambda: assign_bits(SENS, COUNTS, -1), ValueError,
     r"budget_bytes must be a finite number > 0, got -1"),
    ("assign_bits-str-budget", lambda: assign_bits(SENS, COUNTS, "125"), TypeError,
     r"budget_bytes must be a real number, got str"),
    ("assign_bits-nan-drop", lambda: assign_bits({"a": {2: NAN, 8: 0.0}}, COUNTS, 125),
     ValueError, r"sensitivity\['a'\]\[2\] .* must be a finite number, got nan"),
    ("assign_bits-zero-count", lambda: assign_bits(SENS, {"a": 0, "b": 100}, 125),
     ValueError, r"counts\['a'\] .* must be an int >= 1, got 0"),
    ("assign_bits-bad-width", lambda: assign_bits({"a": {99: 0.0}}, COUNTS, 125), ValueError,
     r"bit widths of sensitivity\['a'\] must be an int in 1\.\.16, got 99"),
    ("assign_bits-empty", lambda: assign_bits({}, {}, 125), ValueError,
     r"sensitivity is empty: pass \{layer: \{bits: accuracy drop\}\}"),
    ("assign_bits-no-widths", lambda: assign_bits({"a": {}}, COUNTS, 125), ValueError,
     r"sensitivity\['a'\] is empty: measure at least one bit width"),
    # --- qlib.data -------------------------------------------------------------------------
    ("calibration_batches-zero-batch_size", lambda: calibration_batches(_splits(), 8, 0),
     ValueError, r"batch_size must be an int >= 1, got 0"),
    ("calibration_batches-negative-batch_size", lambda: calibration_batches(_splits(), 8, -1),
     ValueError, r"batch_size must be an int >= 1, got -1"),
    ("calibration_batches-nan-batch_size", lambda: calibration_batches(_splits(), 8, NAN),
     ValueError, r"batch_size must be an int >= 1, got nan"),
    ("calibration_batches-zero-images", lambda: calibration_batches(_splits(), 0), ValueError,
     r"num_images .*empty calibration set.* must be an int >= 1, got 0"),
    ("calibration_batches-negative-images", lambda: calibration_batches(_splits(), -3),
     ValueError, r"num_images .* must be an int >= 1, got -3"),
    ("calibration_batches-fractional-images", lambda: calibration_batches(_splits(), 2.5),
     ValueError, r"num_images .* must be an int >= 1, got 2\.5"),
    ("calibration_batches-None-splits", lambda: calibration_batches(None), TypeError,
     r"splits must be a qlib\.data\.Splits .*got NoneType"),
    ("loader-nan-batch_size", lambda: _splits().loader("train", NAN), ValueError,
     r"batch_size must be an int >= 1, got nan"),
    ("load_torchvision-garbage-cache", lambda: _corrupt_mnist(b"not an idx file"),
     CorruptDataError, r"mnist files in .* are corrupt.*delete the folder .*download=True"),
    ("load_torchvision-truncated-cache", lambda: _corrupt_mnist(bytes([0, 0, 8, 3]) + b"\0" * 9),
     CorruptDataError, r"mnist files in .* are corrupt.*delete the folder"),
]


@pytest.mark.parametrize("call, error, match", [row[1:] for row in BAD],
                         ids=[row[0] for row in BAD])
def test_bad_value_is_refused_with_a_clear_message(call, error, match) -> None:
    with pytest.raises(error, match=match):
        call()


def test_the_table_is_big_and_its_ids_unique() -> None:
    ids = [row[0] for row in BAD]
    assert len(ids) >= 30 and len(set(ids)) == len(ids)


RIGHT = [
    # an empty tensor has an empty (not a refused) quantization
    ("quantize-empty", lambda: quantize(torch.zeros(0), S, Z, 8).tolist(), []),
    # Python numbers are fine qparams, and give what the tensors give
    ("quantize-number-qparams", lambda: quantize(X, 0.1, 0, 8).tolist(), [5, -2]),
    # a float zero point holding a whole number is a whole number
    ("dequantize-whole-float-zero_point",
     lambda: dequantize(torch.tensor([4]), S, torch.tensor(3.0)).tolist(), [pytest.approx(0.1)]),
    # a huge finite value saturates at qmax (that is quantization, not a bad value)
    ("fake_quantize-huge-saturates",
     lambda: fake_quantize(torch.tensor([1e30]), S, Z, 8).tolist(), [pytest.approx(12.7)]),
    # int32 targets are class indices too: the same loss as int64
    ("kd-int32-targets", lambda: float(_kd(targets=Y.int())), pytest.approx(float(_kd()))),
    # a budget that fits the widest plan keeps it
    ("assign_bits-roomy-budget", lambda: assign_bits(SENS, COUNTS, 1e9), {"a": 8, "b": 8}),
    # NumPy integers are ints
    ("confusion_matrix-numpy-num_classes",
     lambda: confusion_matrix([0, 1], [0, 1], np.int64(2)).tolist(), [[1, 0], [0, 1]]),
    # asking for more calibration images than the split holds gives all of them
    ("calibration_batches-more-than-the-split",
     lambda: sum(len(b) for b in calibration_batches(_splits(), 10**6, 1000, which="val")),
     500),
    # the ECE of well-formed logits is a number in [0, 1]
    ("ece-finite", lambda: 0.0 <= expected_calibration_error(L, Y) <= 1.0, True),
]


@pytest.mark.parametrize("call, expected", [row[1:] for row in RIGHT],
                         ids=[row[0] for row in RIGHT])
def test_odd_but_valid_input_has_the_right_answer(call, expected) -> None:
    assert call() == expected
