"""qlib.course.workbook: solution blocks become stubs, copies are current, idempotent and clean.

nbval runs the student copies themselves: `make test` passes `notebooks/` to pytest, which
collects notebooks/workbook/*.ipynb too.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import nbformat
import pytest

from qlib.course import workbook
from qlib.__main__ import main as qlib_main
from qlib.course.workbook import BEGIN, BEGIN_HIDDEN, END, END_HIDDEN, strip_code, strip_markdown


def _cli(argv: list[str]) -> int:
    """``python -m qlib workbook ARGS``."""
    return qlib_main(["workbook", *argv])

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "notebooks"
INSTRUCTOR = sorted(SRC.glob("[0-9][0-9]_*.ipynb"))
COPIES = sorted((SRC / "workbook").glob("[0-9][0-9]_*.ipynb"))

EXERCISE = f'''def double(x):
    """Twice x."""
    {BEGIN}
    y = x + x
    return y
    {END}

result = check.check_function(double, lambda x: 2 * x, [(1,)])
print(result)
{BEGIN_HIDDEN}
assert result.passed, result
{END_HIDDEN}'''


# ------------------------------------------------------------------ the stubs

def test_solution_inside_a_def_becomes_a_stub_and_the_rest_is_kept():
    new, n = strip_code(EXERCISE)
    assert n == 1
    assert new == ('def double(x):\n    """Twice x."""\n'
                   '    raise NotImplementedError("Exercise: write the body of double")\n\n'
                   'result = check.check_function(double, lambda x: 2 * x, [(1,)])\n'
                   'print(result)')
    ast.parse(new)


def test_nested_blocks_keep_their_indentation_and_name_the_innermost_def():
    src = (f"class Model:\n    def forward(self, x):\n        if x:\n            {BEGIN}\n"
           f"            return x\n            {END}\n        return 0\n\n"
           f"def g():\n    {BEGIN}\n    pass\n    {END}\n")
    new, n = strip_code(src)
    assert n == 2
    assert ('            raise NotImplementedError("Exercise: write the body of forward")'
            in new.split("\n"))
    assert '    raise NotImplementedError("Exercise: write the body of g")' in new.split("\n")
    assert "        return 0" in new and "return x" not in new
    ast.parse(new)


def test_a_cell_without_markers_is_unchanged():
    src = "x = 1  # ### BEGIN SOLUTION is only a marker on a line of its own\nprint(x)\n"
    assert strip_code(src) == (src, 0)


@pytest.mark.parametrize("src, match", [
    (f"{BEGIN}\nx = 1\n{END}", "not inside a def"),
    (f"def f():\n    {BEGIN}\n    return 1\n", "never closed"),
    (f"def f():\n    return 1\n    {END}", "without a"),
    (f"def f():\n    {BEGIN}\n    {BEGIN}\n    return 1\n    {END}", "inside another block"),
    (f"{BEGIN_HIDDEN}\nassert True\n", "never closed"),
])
def test_bad_markers_are_errors_that_say_where(src, match):
    with pytest.raises(ValueError, match=match):
        strip_code(src, "00_x.ipynb, cell 3")
    with pytest.raises(ValueError, match="cell 3"):
        strip_code(src, "00_x.ipynb, cell 3")


def test_markdown_solution_becomes_a_prompt():
    src = f"Why?\n\n{BEGIN}\nBecause.\nReally.\n{END}\nAfter."
    assert strip_markdown(src) == "Why?\n\n*Your answer here.*\nAfter."


# ------------------------------------------------------------ whole notebooks

def _instructor(tmp: Path, name: str = "00_demo.ipynb", exercises: int = 3) -> Path:
    nb = nbformat.v4.new_notebook()
    cells = [nbformat.v4.new_markdown_cell("# 00 · Demo\n\nGoals. 5 min."),
             nbformat.v4.new_code_cell("import qlib\nqlib.set_seed(0)")]
    for i in range(exercises):
        cells.append(nbformat.v4.new_code_cell(EXERCISE.replace("double", f"double{i}")))
    if exercises:
        cells.append(nbformat.v4.new_markdown_cell(f"Explain.\n{BEGIN}\nAn answer.\n{END}"))
    cells[1].outputs = [nbformat.v4.new_output("stream", text="old output")]
    cells[1].execution_count = 7
    for k, c in enumerate(cells):
        c["id"] = f"cell-{k}"
    nb.cells = cells
    path = tmp / name
    nbformat.write(nb, path)
    return path


def test_student_notebook_strips_solutions_outputs_and_adds_a_banner(tmp_path):
    nb = nbformat.read(_instructor(tmp_path), as_version=4)
    student, stubs = workbook.student_notebook(nb, "00_demo.ipynb")
    assert stubs == 3
    assert [c["id"] for c in student.cells] == ["cell-0", workbook.BANNER_ID] + [
        c["id"] for c in nb.cells[1:]]
    assert student.cells[0].source == nb.cells[0].source
    assert all(c.outputs == [] and c.execution_count is None
               for c in student.cells if c.cell_type == "code")
    text = nbformat.writes(student)
    assert "y = x + x" not in text and "An answer." not in text and "### " not in text
    assert nb.cells[1].outputs, "the instructor notebook itself is not modified"
    again, _ = workbook.student_notebook(student, "00_demo.ipynb")
    assert sum(c["id"] == workbook.BANNER_ID for c in again.cells) == 1


def test_generate_is_idempotent_and_touches_nothing_else(tmp_path):
    src = tmp_path / "notebooks"
    src.mkdir()
    _instructor(src)
    _instructor(src, "01_no_exercises.ipynb", exercises=0)
    (src / "notes.ipynb").write_text("{}")  # not a numbered notebook: ignored
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}

    assert workbook.generate(src) == {"00_demo.ipynb": "written",
                                      "01_no_exercises.ipynb": "no exercises"}
    copy = src / "workbook" / "00_demo.ipynb"
    stamp, text = copy.stat().st_mtime_ns, copy.read_text()
    assert workbook.generate(src)["00_demo.ipynb"] == "current"
    assert copy.stat().st_mtime_ns == stamp and copy.read_text() == text
    after = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    assert set(after) - set(before) == {copy}
    assert all(after[p] == b for p, b in before.items())


def test_check_mode_reports_missing_stale_and_orphan_copies(tmp_path, capsys):
    src = tmp_path / "nb"
    src.mkdir()
    path = _instructor(src)
    assert _cli(["--check", "--src", str(src)]) == 1          # missing
    assert not (src / "workbook").exists(), "--check writes nothing"
    assert _cli(["--src", str(src)]) == 0
    assert _cli(["--check", "--src", str(src)]) == 0
    nb = nbformat.read(path, as_version=4)
    nb.cells[2].source = nb.cells[2].source.replace("Twice", "Two times")
    nbformat.write(nb, path)
    assert _cli(["--check", "--src", str(src)]) == 1          # stale
    assert "stale" in capsys.readouterr().out
    _cli(["--src", str(src)])
    shutil.copy(src / "workbook" / "00_demo.ipynb", src / "workbook" / "07_gone.ipynb")
    assert workbook.generate(src, check=True)["07_gone.ipynb"] == "orphan"
    assert _cli(["--check", "--src", str(src)]) == 1


def test_bad_notebook_fails_with_its_name(tmp_path, capsys):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"{BEGIN}\nx = 1\n{END}")]
    nbformat.write(nb, tmp_path / "03_bad.ipynb")
    assert _cli(["--src", str(tmp_path)]) == 1
    assert "03_bad.ipynb, cell 0" in capsys.readouterr().err
    assert not (tmp_path / "workbook").exists()
    with pytest.raises(ValueError, match="no notebooks folder"):
        workbook.generate(tmp_path / "missing")


# ------------------------------------------------------- the course's copies

def test_the_student_copies_are_current():
    states = workbook.generate(SRC, check=True)
    bad = {n: s for n, s in states.items() if s in ("stale", "missing", "orphan")}
    assert not bad, f"run `make workbook`: {bad}"


def test_every_instructor_notebook_has_a_student_copy():
    assert INSTRUCTOR, "no instructor notebooks found"
    names = {p.name for p in COPIES}
    missing = [p.name for p in INSTRUCTOR if p.name not in names]
    assert not missing, (f"{missing} have no exercises yet: add 3-5 with SOLUTION markers "
                         "(see qlib/workbook.py) and run `make workbook`")


@pytest.mark.parametrize("path", COPIES, ids=lambda p: p.name)
def test_each_copy_has_stubs_and_no_solution(path):
    nb = json.loads(path.read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    text = "\n".join("".join(c["source"]) for c in nb["cells"])
    assert code.count('raise NotImplementedError("Exercise') >= 3
    assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
    assert "HIDDEN TESTS" not in text
    # no line of a solution survives (unless the same line also appears outside one)
    src = nbformat.read(SRC / path.name, as_version=4)
    inside, outside = set(), set()
    for cell in src.cells:
        hidden = False
        for line in cell.source.split("\n"):
            mark = line.strip()
            if mark in (BEGIN, BEGIN_HIDDEN, END, END_HIDDEN):
                hidden = mark in (BEGIN, BEGIN_HIDDEN)
                continue
            (inside if hidden else outside).add(mark)
    leaked = {line for line in inside - outside if len(line) > 3} & {
        line.strip() for line in text.split("\n")}
    assert not leaked, f"solution lines left in the student copy: {sorted(leaked)[:3]}"


@pytest.mark.parametrize("path", COPIES, ids=lambda p: p.name)
def test_each_copy_compiles(path):
    nb = nbformat.read(path, as_version=4)
    for k, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and not any(
                line.lstrip().startswith(("%", "!")) for line in cell.source.split("\n")):
            compile(cell.source, f"{path.name} cell {k}", "exec")


def test_answer_keys_stay_in_the_instructor_copy_and_leave_the_student_copy(tmp_path):
    nb = nbformat.read(_instructor(tmp_path), as_version=4)
    key = nbformat.v4.new_markdown_cell(f"{workbook.ANSWER_KEY}\n**Answers.** 1. Because.")
    key["id"] = "answer-key"
    near_miss = nbformat.v4.new_markdown_cell("A note that mentions <!-- ANSWER KEY --> later")
    near_miss["id"] = "not-a-key"
    nb.cells[1:1] = [key, near_miss]
    assert workbook.is_answer_key(key) and not workbook.is_answer_key(near_miss)
    student, _ = workbook.student_notebook(nb, "00_demo.ipynb")
    ids = [c["id"] for c in student.cells]
    assert "answer-key" not in ids and "not-a-key" in ids
    assert "Because." not in nbformat.writes(student)
