"""Course tools: exercise checkers, interactive widgets and the student-copy generator.

    check      judge a learner's function, model or value against qlib's reference
    widgets    interactive explorers (ipywidgets), with a static fallback
    workbook   student copies of the notebooks (``python -m qlib workbook``)

The top layer beside the command line: it may use anything below it.
"""

from . import check, widgets, workbook

__all__ = ["check", "widgets", "workbook"]
