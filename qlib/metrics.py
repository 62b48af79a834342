"""The contract's metrics names, at the path the course has always used.

``from qlib.metrics import classification_report`` is part of the course's public contract
(notebook 00); the definitions live in :mod:`qlib.measure.metrics`.
"""

from .measure.metrics import agreement, classification_report, confusion_matrix, top_k_accuracy

__all__ = ["classification_report", "confusion_matrix", "top_k_accuracy", "agreement"]
