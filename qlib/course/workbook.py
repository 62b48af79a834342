"""Student copies of the notebooks: solutions replaced by stubs (``make workbook``).

Introduced in notebook 00's exercises. ``python -m qlib workbook`` reads every instructor
notebook ``notebooks/NN_*.ipynb`` that holds solutions and writes its student copy
``notebooks/workbook/NN_*.ipynb``, only where the content changed; ``--check`` writes
nothing and exits 1 if a copy is missing, stale or orphaned (tests/test_workbook.py).

Conventions for exercises (an instructor notebook's "## Exercises" section, after
"## Questions"):

1. A code exercise is a function (or method) whose body lies between two lines
   ``### BEGIN SOLUTION`` and ``### END SOLUTION``, inside the ``def``, after its
   docstring. The student copy keeps the ``def`` and the docstring and replaces the block
   with ``raise NotImplementedError("Exercise: write the body of NAME")`` at the block's
   indentation. A block outside a ``def`` is an error: the copy must run to the end.
2. The next cell checks it with ``qlib.course.check`` against qlib's reference (a lambda over it
   is fine) on fixed inputs and seeded random ones, and prints the result: one plain
   sentence; a checker never raises on a wrong or unsolved answer ("Not attempted yet")::

       result = check.check_function(macro_f1, reference, [(y_true, y_pred, 10)],
                                     random=random_labels, trials=20)
       print(result)
       ### BEGIN HIDDEN TESTS
       assert result.passed, result
       ### END HIDDEN TESTS

   Lines between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS`` are removed from
   the copy: there they check the instructor's solution under nbval.
3. Nothing after an exercise calls the learner's function: later cells use qlib's
   reference (or a lambda over it), so the copy runs to the end with nothing solved.
4. A written answer goes in a markdown cell between the same SOLUTION lines; the copy
   shows "*Your answer here.*".
   Checkers: ``check_function`` (a function), ``check_model`` (a module, or a class /
   builder so that a stub ``__init__`` reads "not attempted"), ``check_value``.
5. At least three code exercises per notebook (three to five in all), at least one of them
   inside the section whose idea it practises; run ``make workbook`` after editing one.
   Notebook 00's exercises are the worked example.
6. The answer key to a notebook's "Questions" is a markdown cell whose first line is
   ``<!-- ANSWER KEY -->`` (an HTML comment, invisible when rendered). It stays in the
   instructor copy and is dropped from the student copy and from the nbgrader release.

``qlib.course.classroom`` (``make classroom``) writes the same exercises as an nbgrader course.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat

__all__ = ["strip_code", "strip_markdown", "student_notebook", "generate", "enclosing_def",
           "has_exercises", "instructor_notebooks", "BEGIN", "END", "BEGIN_HIDDEN",
           "END_HIDDEN", "STUB", "ANSWER", "BANNER_ID", "ANSWER_KEY", "is_answer_key"]

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
STUB = 'raise NotImplementedError("Exercise: write the body of {name}")'
ANSWER = "*Your answer here.*"
NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
BANNER_ID = "workbook-banner"
ANSWER_KEY = "<!-- ANSWER KEY -->"
_DEF = re.compile(r"^(\s*)(?:async\s+)?def\s+(\w+)")


def is_answer_key(cell: nbformat.NotebookNode) -> bool:
    """Whether ``cell`` is an instructor-only answer key (markdown, first line ANSWER_KEY)."""
    return (cell.cell_type == "markdown"
            and cell.source.lstrip().split("\n", 1)[0].strip() == ANSWER_KEY)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def enclosing_def(lines: list[str], i: int) -> str | None:
    """Name of the innermost ``def`` enclosing line i (by indentation), or None."""
    level = _indent(lines[i])
    for line in reversed(lines[:i]):
        if not line.strip() or line.lstrip().startswith("#") or _indent(line) >= level:
            continue
        m = _DEF.match(line)
        if m:
            return m.group(2)
        level = _indent(line)  # an enclosing if / for / class: keep looking outwards
    return None


def _blocks(lines: list[str], begin: str, end: str, where: str) -> list[tuple[int, int]]:
    """(begin, end) line indices of each marked block; unbalanced markers raise."""
    spans, start = [], None
    for i, line in enumerate(lines):
        mark = line.strip()
        if mark == begin:
            if start is not None:
                raise ValueError(f"{where}: '{begin}' on line {i + 1} inside another block "
                                 f"(opened on line {start + 1}); close it with '{end}' first")
            start = i
        elif mark == end:
            if start is None:
                raise ValueError(f"{where}: '{end}' on line {i + 1} without a '{begin}'")
            spans.append((start, i))
            start = None
    if start is not None:
        raise ValueError(f"{where}: '{begin}' on line {start + 1} is never closed by '{end}'")
    return spans


def strip_code(source: str, where: str = "cell") -> tuple[str, int]:
    """A code cell's student version and its number of stubs.

    Each SOLUTION block becomes one ``raise NotImplementedError(...)`` line at the
    indentation of its BEGIN line; HIDDEN TESTS blocks are dropped; all else is kept.

    >>> strip_code("def f(x):\\n    ### BEGIN SOLUTION\\n    return x\\n    ### END SOLUTION")
    ('def f(x):\\n    raise NotImplementedError("Exercise: write the body of f")', 1)
    """
    lines = source.split("\n")
    drop: set[int] = set()
    stubs: dict[int, str] = {}
    for b, e in _blocks(lines, BEGIN_HIDDEN, END_HIDDEN, where):
        drop.update(range(b, e + 1))
    for b, e in _blocks(lines, BEGIN, END, where):
        name = enclosing_def(lines, b)
        if name is None:
            raise ValueError(f"{where}: the solution on line {b + 1} is not inside a def; "
                             "put each code solution in a function body so that the student "
                             "copy runs to the end (see qlib.course.workbook's conventions)")
        drop.update(range(b, e + 1))
        stubs[b] = lines[b][:_indent(lines[b])] + STUB.format(name=name)
    out = [stubs[i] if i in stubs else line for i, line in enumerate(lines)
           if i in stubs or i not in drop]
    return "\n".join(out), len(stubs)


def strip_markdown(source: str, where: str = "cell") -> str:
    """A markdown cell's student version: each SOLUTION block becomes "*Your answer here.*"."""
    lines = source.split("\n")
    spans = _blocks(lines, BEGIN, END, where)
    starts, drop = {b for b, _ in spans}, {i for b, e in spans for i in range(b, e + 1)}
    return "\n".join(ANSWER if i in starts else line for i, line in enumerate(lines)
                     if i in starts or i not in drop)


def _compiles(source: str) -> bool:
    try:
        compile(source, "<cell>", "exec")
        return True
    except SyntaxError:  # IPython magics and shell escapes are not Python
        return False


def student_notebook(nb: nbformat.NotebookNode, name: str = "notebook"
                     ) -> tuple[nbformat.NotebookNode, int]:
    """The student copy of an instructor notebook (outputs stripped) and its stub count.

    A markdown banner (cell id ``workbook-banner``) after the title says where the copy
    came from; answer-key cells are dropped. A cell that compiled before stripping but not after is an error.
    """
    student = copy.deepcopy(nb)
    student.cells = [c for c in student.cells
                     if c.get("id") != BANNER_ID and not is_answer_key(c)]
    total = 0
    for k, cell in enumerate(student.cells):
        where = f"{name}, cell {k}"
        if cell.cell_type == "code":
            new, n = strip_code(cell.source, where)
            if n and _compiles(cell.source) and not _compiles(new):
                raise ValueError(f"{where}: the student version does not compile; keep the "
                                 "SOLUTION lines inside a function body")
            cell.source, cell.outputs, cell.execution_count = new, [], None
            total += n
        elif cell.cell_type == "markdown":
            cell.source = strip_markdown(cell.source, where)
    banner = nbformat.v4.new_markdown_cell(
        f"> **Workbook copy** of `notebooks/{name}`, made by `make workbook`. Each exercise "
        "has a stub that raises `NotImplementedError`: replace it with your code "
        "and run the checker cell below it. `make workbook` overwrites this file, so keep "
        "your work in a copy.")
    banner["id"] = BANNER_ID
    student.cells.insert(1, banner)
    return student, total


def instructor_notebooks(src: Path) -> list[Path]:
    """The numbered notebooks ``NN_*.ipynb`` in ``src``, in order."""
    return sorted(p for p in src.glob("[0-9][0-9]_*.ipynb") if p.is_file())


def has_exercises(nb: nbformat.NotebookNode) -> bool:
    """Whether any cell of ``nb`` holds a SOLUTION block (code or written)."""
    return any(line.strip() == BEGIN for c in nb.cells for line in c.source.split("\n"))


def generate(src: str | Path = NOTEBOOKS, out: str | Path | None = None, *,
             check: bool = False) -> dict[str, str]:
    """Write (or with ``check`` only compare) the student copy of each instructor notebook.

    Returns ``{file name: state}``, state one of "written", "current", "stale" (check
    only), "missing" (check only), "orphan" (a copy whose instructor notebook is gone or
    holds no solutions any more; never deleted) and "no exercises" (no copy is made).
    """
    src = Path(src)
    out = Path(out) if out is not None else src / "workbook"
    if not src.is_dir():
        raise ValueError(f"no notebooks folder at {src}")
    states: dict[str, str] = {}
    for path in instructor_notebooks(src):
        nb = nbformat.read(path, as_version=4)
        student, stubs = student_notebook(nb, path.name)
        target = out / path.name
        if stubs == 0 and not has_exercises(nb):
            states[path.name] = "orphan" if target.exists() else "no exercises"
            continue
        text = nbformat.writes(student) + "\n"
        old = target.read_text(encoding="utf-8") if target.exists() else None
        if old == text:
            states[path.name] = "current"
        elif check:
            states[path.name] = "missing" if old is None else "stale"
        else:
            out.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            states[path.name] = "written"
    for old_copy in instructor_notebooks(out) if out.is_dir() else []:
        if old_copy.name not in states:
            states[old_copy.name] = "orphan"
    return states
