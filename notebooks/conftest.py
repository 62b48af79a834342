"""What a learner sees, checked while nbval runs each notebook (no second execution).

nbval's ``--nbval-lax`` only fails a cell that raises; it does not compare outputs. This hook
reads the outputs nbval already collected for each executed cell (``IPyNbCell.test_outputs``,
streams merged as a notebook front end shows them) and fails the cell when

- ``stderr``:  anything was written to stderr (a learner sees it as a red box),
- ``warning``: that stderr text holds a Python warning (``...Warning: ...``), or
- ``length``:  one output (the cell's stdout, or an ``execute_result``/``display_data``'s
  ``text/plain``) is longer than ``MAX_LINES`` lines.

Fix the cause rather than filtering: print a summary instead of a whole tensor, avoid the
deprecated call. A third-party warning that cannot be avoided is filtered narrowly in qlib
at its call site, with a comment saying why.

With ``--paired-copies`` (``make test``), a notebook and its student copy in ``workbook/`` run
in one kernel (:mod:`qlib.course.paired`): the student copy top to bottom, as a learner runs
it, then the instructor copy's own cells (solutions and hidden tests), reported as
``Cell k (instructor copy)``. The cells the two share run once instead of twice. A pair whose
cells would not see the same names that way runs as two notebooks, with a warning that says why.
Without the option (``make notebooks``) every notebook runs alone from the top.
"""

from __future__ import annotations

import re
import warnings
from collections import defaultdict
from pathlib import Path

import nbformat
import pytest
from nbval.plugin import IPyNbCell, IPyNbFile

from qlib.course.paired import instructor_only_cells, paired_run_problems

MAX_LINES = 40
SHOW_LINES = 8
_WARNING = re.compile(r"\b\w*Warning\b:")


def _text(output: dict) -> str:
    if output.get("output_type") == "stream":
        return str(output.get("text", ""))
    text = output.get("data", {}).get("text/plain", "")
    return "".join(text) if isinstance(text, list) else str(text)


def output_problems(outputs: list[dict], max_lines: int = MAX_LINES) -> list[str]:
    """One message per broken rule: the rule's name, what it means, the first lines seen."""
    problems = []
    for i, out in enumerate(outputs):
        kind = out.get("output_type")
        if kind not in ("stream", "execute_result", "display_data"):
            continue
        text = _text(out)
        lines = text.splitlines()
        head = "\n".join("    | " + line for line in lines[:SHOW_LINES])
        more = f"\n    | ... ({len(lines) - SHOW_LINES} more lines)" if len(lines) > SHOW_LINES else ""
        where = f"output {i} ({out.get('name', kind)})"
        if kind == "stream" and out.get("name") == "stderr" and text.strip():
            rule = ("warning: a Python warning was printed" if _WARNING.search(text)
                    else "stderr: the cell wrote to stderr")
            problems.append(f"[{rule}] in {where}; fix the cause, a learner sees a red box:\n"
                            f"{head}{more}")
        if len(lines) > max_lines:
            problems.append(f"[length: {len(lines)} lines, at most {max_lines} allowed] in "
                            f"{where}; print a summary instead:\n{head}{more}")
    return problems


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    result = yield  # the cell ran without raising: now judge what it showed
    outputs = getattr(item, "test_outputs", None)
    if outputs is not None and hasattr(item, "raise_cell_error"):  # an nbval cell
        problems = output_problems(outputs)
        if problems:
            item.raise_cell_error("Cell output a learner should not see "
                                  "(rules in notebooks/conftest.py)", "\n\n".join(problems))
    return result


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--paired-copies", action="store_true",
                     help="run each notebook and its workbook/ student copy in one kernel: the "
                          "student copy, then the instructor copy's own cells (see notebooks/conftest.py)")


class PairedNotebook(IPyNbFile):
    """The student copy's cells, then the instructor copy's cells that differ, one kernel."""

    instructor: Path

    def collect(self):
        yield from super().collect()            # reads the student copy into self.nb
        nb = nbformat.read(str(self.instructor), as_version=4)
        cells = [c for c in nb.cells if c.cell_type == "code"]
        for k in instructor_only_cells(nb, self.nb):
            yield IPyNbCell.from_parent(self, name=f"Cell {k} (instructor copy)", cell_num=k,
                                        cell=cells[k], options=defaultdict(bool, check=False))


def _pair(path: Path) -> tuple[Path, Path] | None:
    """(instructor, student) when ``path`` is either copy of a numbered notebook with both."""
    if not re.fullmatch(r"\d\d_.*\.ipynb", path.name):
        return None
    instructor = path.parent.parent / path.name if path.parent.name == "workbook" else path
    student = instructor.parent / "workbook" / path.name
    return (instructor, student) if instructor.is_file() and student.is_file() else None


def _chosen(path: Path, config: pytest.Config, *, named: bool = False) -> bool:
    """Whether ``path`` lies under one of the paths pytest was asked to run (``named``: is
    one of them itself)."""
    for arg in config.args:
        root = Path(config.invocation_params.dir, arg.split("::")[0]).resolve()
        if root == path.resolve() or (not named and root in path.resolve().parents):
            return True
    return False


@pytest.hookimpl(wrapper=True)
def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    found = yield
    pair = _pair(file_path) if parent.config.getoption("paired_copies", False) else None
    if (not pair or not all(_chosen(p, parent.config) for p in pair)
            or _chosen(pair[0], parent.config, named=True)):   # an instructor notebook asked for by name runs alone
        return found
    instructor, student = pair
    problems = paired_run_problems(nbformat.read(instructor, as_version=4),
                                   nbformat.read(student, as_version=4))
    if problems:                               # run the two copies apart, and say why (once)
        if file_path == student:
            warnings.warn(pytest.PytestWarning(f"{file_path.name}: its two copies ran separately, "
                                               "because " + "; ".join(problems[:3])))
        return found
    notebooks = [f for f in found if isinstance(f, IPyNbFile)]
    rest = [f for f in found if not isinstance(f, IPyNbFile)]
    if file_path == instructor:                # its cells run in the student copy's kernel
        return rest
    paired = PairedNotebook.from_parent(parent, path=file_path)
    paired.instructor = instructor
    return rest + ([paired] if notebooks else [])


#: The files that take longest in a fresh clone after ``python -m qlib prepare`` (CI with two
#: workers, 2026-12-02: notebook 06 trains its own students on first use, 206 s; 10 155 s;
#: 09 149 s; 07 127 s; 03 106 s; then the test files of 40-90 s). Only an order hint: a
#: stale list costs a little time, never a result.
LONGEST_FIRST = ("06", "10", "09", "07", "03", "04", "05", "02", "08")
SLOW_TESTS = ("test_browser.py", "test_layering.py", "test_classroom.py",
              "test_own_models.py", "test_paired.py", "test_train.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Notebooks first, longest first, then the slowest test files, then the rest (a stable
    sort: each file keeps its items in order). With pytest-xdist's ``--dist loadfile``
    (``make test``) a worker takes the next whole file when it is free: starting with the
    longest lets the short files fill in at the end, so both workers finish together."""
    def rank(item: pytest.Item) -> tuple[int, int]:
        name = item.path.name
        if item.path.suffix == ".ipynb":
            return (0, LONGEST_FIRST.index(name[:2]) if name[:2] in LONGEST_FIRST
                    else len(LONGEST_FIRST))
        return (1, SLOW_TESTS.index(name)) if name in SLOW_TESTS else (2, 0)

    items.sort(key=rank)
