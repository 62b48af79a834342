"""Course tools: exercise checkers, widgets, the student copies and the nbgrader course.

    check      judge a learner's function, model or value against qlib's reference
    widgets    interactive explorers (ipywidgets), with a static fallback
    workbook   student copies of the notebooks (``python -m qlib workbook``)
    classroom  the same exercises as an nbgrader course (``make classroom``)

The top layer beside the command line: it may use anything below it.
"""

from . import check, classroom, widgets, workbook

__all__ = ["check", "classroom", "widgets", "workbook"]
