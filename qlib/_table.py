"""Markdown tables for printed results: one number of decimals per column.

Kept out of :mod:`qlib._util` on purpose: ``_util`` is part of every cached model's key
(:func:`qlib.train.source_hash`), and how a table prints trains nothing.

>>> print(markdown_table([{"name": "fp32", "acc": 0.984, "ms": 12.5}, {"name": "int8", "acc": 0.9841, "ms": 3.1}]))
| name |    acc |    ms |
| ---- | -----: | ----: |
| fp32 | 0.9840 | 12.50 |
| int8 | 0.9841 |  3.10 |
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["markdown_table", "column_decimals"]


def column_decimals(values: Sequence[float], digits: int = 4) -> int | None:
    """Decimals that give a column's largest finite |value| ``digits`` significant digits
    (0 to 6), or None when the column is better shown in ``%g`` form (all zero or not finite,
    or its largest |value| is below 1e-4 or at least 10 ** (digits + 2)).

    >>> column_decimals([0.984, 0.9841]), column_decimals([12.5, 3.1]), column_decimals([1234.5])
    (4, 2, 0)
    >>> column_decimals([3e-6]) is None
    True
    """
    finite = [abs(float(v)) for v in values if math.isfinite(float(v)) and v != 0]
    if not finite:
        return None
    top = max(finite)
    if top < 1e-4 or top >= 10 ** (digits + 2):
        return None
    return min(6, max(0, digits - 1 - math.floor(math.log10(top))))


def markdown_table(rows: Sequence[dict], columns: Sequence[str] | None = None,
                   digits: int = 4) -> str:
    """A Markdown table of dicts (one row each), numbers right-aligned. The floats of a column
    share one number of decimals (:func:`column_decimals`: its largest value gets ``digits``
    significant digits), so 0.984 and 0.9841 print as 0.9840 and 0.9841; a nonzero value
    that would round to zero prints in ``%g`` form instead. ``columns`` picks and orders keys
    (default: the first row's keys); a missing value prints as an empty cell. Introduced in
    notebook 03.
    """
    if not rows:
        raise ValueError("markdown_table needs at least one row (a dict)")
    cols = list(columns if columns is not None else rows[0].keys())
    is_float = lambda v: isinstance(v, (float, np.floating))
    decimals = {c: column_decimals([r[c] for r in rows if is_float(r.get(c))], digits) for c in cols}

    def cell(v: Any, c: str) -> str:
        if is_float(v):
            d = decimals[c]
            if d is None or (v != 0 and math.isfinite(v) and round(float(v), d) == 0):
                return f"{float(v):.{digits}g}"
            return f"{float(v):.{d}f}"
        return "" if v is None else str(v)

    body = [[cell(r.get(c), c) for c in cols] for r in rows]
    numeric = [all(isinstance(r.get(c), (int, float, np.number)) for r in rows) for c in cols]
    widths = [max(3, len(c), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(s.rjust(w) if num else s.ljust(w)
                                 for s, w, num in zip(cells, widths, numeric)) + " |"

    rule = "| " + " | ".join("-" * (w - 1) + ":" if num else "-" * w
                             for w, num in zip(widths, numeric)) + " |"
    return "\n".join([line(cols), rule] + [line(b) for b in body])
