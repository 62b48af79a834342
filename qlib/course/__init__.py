"""Course tools: exercise checkers, widgets, the student copies and the nbgrader course.

    check      judge a learner's function, model or value against qlib's reference
    widgets    interactive explorers (ipywidgets), with a static fallback
    workbook   student copies of the notebooks (``python -m qlib workbook``)
    classroom  the same exercises as an nbgrader course (``make classroom``)

The top layer beside the command line: it may use anything below it.

The submodules load on first use (PEP 562): a notebook's ``from qlib.course import check``
does not pay for ``classroom``'s nbformat / jsonschema (over a second); ``qlib.course.classroom``
still works as an attribute and imports it then.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for type checkers and IDEs only; at run time __getattr__ imports
    from . import check, classroom, widgets, workbook

__all__ = ["check", "classroom", "widgets", "workbook"]


def __getattr__(name: str) -> ModuleType:
    """Import the submodule ``name`` on first access (later ones find it in globals)."""
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")  # binds it here as well
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}; its submodules "
                         f"are {__all__}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
