"""The workbook as an nbgrader course (``make classroom``): graded exercises, a gradebook.

``python -m qlib workbook --nbgrader DIR`` (:func:`write_course`) writes an nbgrader course
directory from the instructor notebooks that hold exercises: ``DIR/nbgrader_config.py``
(only where missing: it is the instructor's to edit) and, per notebook NN_name.ipynb, the
assignment ``DIR/source/NN_name/NN_name.ipynb``. Its cells, in the instructor's order:

    instructor cell                      nbgrader cell                  learner's release
    code with a SOLUTION block           autograded answer              the workbook's stub
    its checker (a HIDDEN TESTS block)   autograder tests, ``points``   the visible checker
    markdown with a SOLUTION block       manually graded answer with    "*Your answer here.*"
                                         ``grade_written``, else a
                                         plain cell, answer removed
    everything else                      read-only (locked)             unchanged

A checker cell prints the same sentence as in the workbook; its hidden ``assert
result.passed, result``, put back by ``nbgrader autograde``, fails for anything but
"correct", so an exercise earns all its points or none and the error carries the checker's
sentence into the feedback. Locked cells are restored from the gradebook when grading.
``nbgrader generate_assignment`` releases exactly the workbook copy (tests/test_classroom.py)
with a classroom banner in place of the workbook's: ``nbgrader_config.py`` sets the stubs
and, after nbgrader's ClearSolutions, names each stub's function from the solution cell's
metadata ``workbook_stubs`` (the config does not import qlib, nor this module nbgrader).

Example (the README's "Teaching with nbgrader" goes on from here)::

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     points = write_course(tmp)     # then: cd tmp && nbgrader generate_assignment '*'
    ...     made = (Path(tmp) / "source/01_number_formats/01_number_formats.ipynb").is_file()
    >>> made, points["01_number_formats"]
    (True, 4)
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import nbformat

from .._util import check_int
from .workbook import (ANSWER, BANNER_ID, BEGIN, BEGIN_HIDDEN, END, END_HIDDEN, NOTEBOOKS,
                       STUB, enclosing_def, has_exercises, instructor_notebooks, strip_code,
                       is_answer_key, strip_markdown, student_notebook)

__all__ = ["write_course", "classroom_notebook", "CLASSROOM_BANNER_ID", "STUB_NAMES",
           "CONFIG", "COURSE_ID"]

CLASSROOM_BANNER_ID = "classroom-banner"
#: A solution cell's metadata key: the names of its stubs' functions, in order (for the config).
STUB_NAMES = "workbook_stubs"
COURSE_ID = "qlib"
#: What nbgrader reads as its own markers (substrings of a line), beyond the exact lines above.
_NBGRADER_MARKS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS",
                   "BEGIN MARK SCHEME", "END MARK SCHEME", "AUTOTEST")

CONFIG = f'''"""nbgrader's configuration of the course, written by `make classroom`.

`make classroom` writes this file only where it is missing: edit it freely (course id,
exchange, timeouts); delete it to get the current defaults back.
"""

from nbgrader.converters import GenerateAssignment
from nbgrader.preprocessors import ClearSolutions

c = get_config()  # noqa: F821 - defined by nbgrader's config loader

c.CourseDirectory.course_id = "{COURSE_ID}"
# the gradebook: sqlite:///gradebook.db in this folder unless set here or with --db
# c.CourseDirectory.db_url = "sqlite:////srv/nbgrader/{COURSE_ID}/gradebook.db"
c.Execute.timeout = 300  # seconds per cell when autograding (some cells train a model)

# Stubs and answers read as in notebooks/workbook/: each code stub names its function
# (the names are in the source cell's metadata "{STUB_NAMES}", written by make classroom).
c.ClearSolutions.code_stub = {{"python": {STUB!r}}}
c.ClearSolutions.text_stub = {ANSWER!r}


def name_stubs(nb, resources):
    """After ClearSolutions: the k-th stub of a cell gets the k-th name."""
    for cell in nb.cells:
        for name in cell.metadata.pop("{STUB_NAMES}", []):
            cell.source = cell.source.replace({STUB!r}, {STUB!r}.format(name=name), 1)
    return nb, resources


_steps = list(GenerateAssignment.class_traits()["preprocessors"].default())
_steps.insert(_steps.index(ClearSolutions) + 1, name_stubs)
c.GenerateAssignment.preprocessors = _steps
'''

Cell = nbformat.NotebookNode


def _meta(grade_id: str, *, grade: bool = False, solution: bool = False, locked: bool = False,
          points: int | None = None) -> dict[str, Any]:
    """nbgrader's cell metadata, schema version 3."""
    meta: dict[str, Any] = {"grade": grade, "grade_id": grade_id, "locked": locked,
                            "schema_version": 3, "solution": solution, "task": False}
    if points is not None:
        meta["points"] = points
    return meta


def _banner(name: str, exercises: int, points: int, written: int) -> Cell:
    each = f"{points} point{'s' if points != 1 else ''}"
    by_hand = (f" Your {written} written answer{'s are' if written != 1 else ' is'} graded "
               "by hand.") if written else ""
    cell = nbformat.v4.new_markdown_cell(
        f"> **Assignment** `{Path(name).stem}`, made by `make classroom` from "
        f"`notebooks/{name}`. Each of the {exercises} code exercises at the end has a stub "
        "that raises `NotImplementedError`: replace it with your code and run the checker "
        "cell below it. The checker prints the sentence your grade is based on: an exercise "
        f"earns {each} when it says *Correct*, none otherwise.{by_hand} Only your answer "
        "cells count: the other cells are read-only and are restored when your notebook "
        "is graded, so experiment in new cells. Restart and run all before you submit.")
    cell["id"] = CLASSROOM_BANNER_ID
    return cell


def _check_marks(cell: Cell, where: str) -> None:
    """A line nbgrader would read as a marker must be exactly one of the workbook's."""
    exact = {BEGIN, END, BEGIN_HIDDEN, END_HIDDEN}
    for i, line in enumerate(cell.source.split("\n")):
        if line.strip() not in exact and any(m in line for m in _NBGRADER_MARKS):
            raise ValueError(f"{where}, line {i + 1}: nbgrader would read {line.strip()!r} "
                             "as a marker; reword it or make it a marker line of its own")


def classroom_notebook(nb: nbformat.NotebookNode, name: str = "notebook", *,
                       points: int = 1, grade_written: bool = False
                       ) -> tuple[nbformat.NotebookNode, int]:
    """The nbgrader source version of an instructor notebook and its total points.

    Each checker cell (a code cell with a HIDDEN TESTS block) is an autograder test worth
    ``points``; with ``grade_written`` each written answer is graded by hand, worth
    ``points``. A code solution without a checker cell after it (before the next
    solution) is an error: nbgrader would grade nothing. Outputs are removed.
    """
    student_notebook(nb, name)  # the workbook's checks: markers balanced, stubs compile
    source = copy.deepcopy(nb)
    source.cells = [c for c in source.cells if c.get("id") not in (BANNER_ID,
                    CLASSROOM_BANNER_ID) and not is_answer_key(c)]
    total, exercises, written, pending = 0, 0, 0, None
    seen: set[str] = set()

    def no_checker(k: int) -> ValueError:
        return ValueError(f"{name}, cell {k}: the solution has no checker cell (with a "
                          f"'{BEGIN_HIDDEN}' block) after it")

    for k, cell in enumerate(source.cells):
        where = f"{name}, cell {k}"
        _check_marks(cell, where)
        gid = str(cell.get("id") or f"cell-{k}")
        if gid in seen:
            raise ValueError(f"{where}: the cell id {gid!r} is used twice")
        seen.add(gid)
        meta = _meta(gid, locked=True)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            stubs = strip_code(cell.source, where)[1]
            tests = any(line.strip() == BEGIN_HIDDEN for line in cell.source.split("\n"))
            if stubs and tests:
                raise ValueError(f"{where}: a solution and hidden tests in one cell; put "
                                 "the checker in the cell after the solution")
            if stubs:
                if pending is not None:
                    raise no_checker(pending)
                meta, pending = _meta(gid, solution=True), k
                lines = cell.source.split("\n")
                cell.metadata[STUB_NAMES] = [enclosing_def(lines, i) for i, line in
                                             enumerate(lines) if line.strip() == BEGIN]
            elif tests:
                meta, pending = _meta(gid, grade=True, locked=True, points=points), None
                total, exercises = total + points, exercises + 1
        elif cell.cell_type == "markdown" and strip_markdown(cell.source, where) != cell.source:
            if not grade_written:
                cell.source = strip_markdown(cell.source, where)
                continue  # a plain cell the learner may edit; not graded
            meta = _meta(gid, grade=True, solution=True, points=points)
            total, written = total + points, written + 1
        cell.metadata["nbgrader"] = meta
    if pending is not None:
        raise no_checker(pending)
    banner = _banner(name, exercises, points, written)
    banner.metadata["nbgrader"] = _meta(CLASSROOM_BANNER_ID, locked=True)
    source.cells.insert(1, banner)
    return source, total


def _write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` unless it already holds it (its time stamp then stays)."""
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def write_course(out: str | Path, src: str | Path = NOTEBOOKS, *, points: int = 1,
                 grade_written: bool = False) -> dict[str, int]:
    """Write the nbgrader course into ``out``; ``{assignment: total points}``.

    One assignment per instructor notebook with exercises (``source/NN_name/NN_name.ipynb``,
    rewritten only where its content changed) and ``nbgrader_config.py`` where missing.
    Everything is checked before anything is written: a bad notebook raises ValueError
    naming it and its cell. Other files in ``out`` (release/, the gradebook) are kept.
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise ValueError(f"no notebooks folder at {src}")
    check_int(points, "points", 1)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder")
    courses: dict[str, tuple[nbformat.NotebookNode, int]] = {}
    for path in instructor_notebooks(src):
        nb = nbformat.read(path, as_version=4)
        if has_exercises(nb):
            courses[path.stem] = classroom_notebook(nb, path.name, points=points,
                                                    grade_written=grade_written)
    if not courses:
        raise ValueError(f"no instructor notebook with exercises in {src}")
    config = out / "nbgrader_config.py"
    if not config.exists():
        _write(config, CONFIG)
    for stem, (nb, _) in courses.items():
        _write(out / "source" / stem / f"{stem}.ipynb", nbformat.writes(nb) + "\n")
    return {stem: total for stem, (_, total) in courses.items()}
