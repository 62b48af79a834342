"""make test's paired run of a notebook and its student copy (qlib.course.paired and
notebooks/conftest.py): which cells it runs, and that it refuses orders it cannot vouch for."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from qlib.course.paired import cell_names, instructor_only_cells, paired_run_problems
from qlib.course.workbook import instructor_notebooks

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
_ENV = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}   # not the outer run's options
PAIRS = [(p, NOTEBOOKS / "workbook" / p.name) for p in instructor_notebooks(NOTEBOOKS)
         if (NOTEBOOKS / "workbook" / p.name).exists()]


def _pair(*cells: tuple[str, str | None]) -> tuple[nbformat.NotebookNode, nbformat.NotebookNode]:
    """An instructor notebook and its student copy: (instructor source, student source or
    None when the two share the cell)."""
    instr = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(a) for a, _ in cells])
    student = copy.deepcopy(instr)
    for cell, (_, b) in zip(student.cells, cells):
        if b is not None:
            cell.source = b
    return instr, student


def test_every_course_notebook_pairs_with_its_student_copy():
    assert len(PAIRS) == 12
    for instr, student in PAIRS:
        a, b = nbformat.read(instr, as_version=4), nbformat.read(student, as_version=4)
        only = instructor_only_cells(a, b)
        assert len(only) >= 4, (instr.name, only)                 # solutions and hidden tests
        assert paired_run_problems(a, b) == [], instr.name


def test_cell_names():
    names = cell_names(
        "import numpy as np\nfrom qlib.course import check\nx = np.zeros(3)\n"
        "def f(a):\n    return a + y + x\nmodel.weight[0] = 0\nz += 1\nprint([len(x) + v for v in w])")
    assert names.writes == {"np", "check", "x", "f", "model", "z"}
    assert names.reads == {"model", "z", "w"}    # x and np are the cell's own; v is the comprehension's
    assert names.function_reads == {"y", "x"}    # read when f is called: a is f's own
    assert names.imports == {"np": "numpy", "check": "qlib.course:check"}


def test_a_name_a_solution_binds_and_a_later_shared_cell_reads_is_a_problem():
    instr, student = _pair(("w = 1", None),
                           ("def solve():\n    return 2\nanswer = solve()", "def solve():\n    raise NotImplementedError"),
                           ("print(answer)", None))
    problems = paired_run_problems(instr, student)
    assert problems == ["cell 2 reads 'answer' from instructor cell 1 when the copy runs top to bottom, "
                        "but from nowhere in the paired run"]


def test_a_solution_writing_into_shared_state_is_a_problem():
    instr, student = _pair(("import torch\nmodel = torch.nn.Linear(2, 2)", None),
                           ("model.weight.data[0] = 0", "pass"),
                           ("print(model(torch.ones(2)))", None))
    assert any("reads 'model' from instructor cell 1" in p for p in paired_run_problems(instr, student))


def test_the_same_import_again_is_not_a_problem_but_another_one_is():
    cells = [("from qlib.course import check", None),
             ("from qlib.course import check\ndef f():\n    return check", "def f():\n    raise NotImplementedError"),
             ("from qlib.course import check", None), ("f()", "pass")]
    assert paired_run_problems(*_pair(*cells)) == []
    cells[2] = ("from qlib import check", None)             # rebinds check to another module
    assert paired_run_problems(*_pair(*cells)) != []


def test_a_stale_student_copy_is_an_error():
    instr, student = _pair(("x = 1", None))
    student.cells.append(nbformat.v4.new_code_cell("y = 2"))
    with pytest.raises(ValueError, match="make workbook"):
        instructor_only_cells(instr, student)


def test_make_test_collects_each_instructor_notebook_inside_its_student_copy():
    out = subprocess.run([sys.executable, "-m", "pytest", "notebooks", "--collect-only", "-q",
                          "--nbval-lax", "--nbval-current-env", "--paired-copies", "-p", "no:cacheprovider"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env=_ENV)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    items = [line for line in out.stdout.splitlines() if "::Cell " in line]
    assert not [i for i in items if not i.startswith("notebooks/workbook/")]
    for instr, student in PAIRS:
        a, b = nbformat.read(instr, as_version=4), nbformat.read(student, as_version=4)
        mine = [i.split("::")[1] for i in items if i.startswith(f"notebooks/workbook/{instr.name}::")]
        n = sum(c.cell_type == "code" for c in b.cells)
        assert mine == [f"Cell {k}" for k in range(n)] + [f"Cell {k} (instructor copy)"
                                                          for k in instructor_only_cells(a, b)]


def _tiny_course(root: Path, solution: str, last: str = "print(x)") -> None:
    nbs = root / "notebooks"
    (nbs / "workbook").mkdir(parents=True)
    shutil.copy(NOTEBOOKS / "conftest.py", nbs / "conftest.py")
    shutil.copy(NOTEBOOKS / "__init__.py", nbs / "__init__.py")      # a package, as in the course
    instr, student = _pair(("x = 2", None),
                           (f"def double(v):\n    return {solution}", "def double(v):\n    raise NotImplementedError"),
                           ("assert double(x) == 4", "pass"), (last, None))
    nbformat.write(instr, nbs / "01_tiny.ipynb")
    nbformat.write(student, nbs / "workbook" / "01_tiny.ipynb")


def _run(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "notebooks", "-v", "-p", "no:cacheprovider",
                           "--nbval-lax", "--nbval-current-env", "--paired-copies", "--rootdir", str(root)],
                          cwd=root, capture_output=True, text=True, timeout=300, env=_ENV)


def _cells(stdout: str) -> dict[tuple[str, str], str]:
    """{(copy, cell name): outcome} from pytest -v lines (the node id's form varies)."""
    found = {}
    for line in stdout.splitlines():
        m = re.match(r"notebooks/(workbook/)?01_tiny\S*::(Cell \d+(?: \(instructor copy\))?) (PASSED|FAILED)", line)
        if m:
            found["workbook" if m[1] else "instructor", m[2]] = m[3]
    return found


@pytest.mark.parametrize("solution, passes", [("2 * v", True), ("v + 1", False)])
def test_the_paired_run_tests_the_solutions(tmp_path, solution, passes):
    """A wrong solution fails its hidden test in the paired run, as in the instructor copy."""
    _tiny_course(tmp_path, solution)
    out = _run(tmp_path)
    assert (out.returncode == 0) == passes, out.stdout[-3000:]
    ran = _cells(out.stdout)
    assert ran["workbook", "Cell 2 (instructor copy)"] == ("PASSED" if passes else "FAILED")
    assert ran["workbook", "Cell 1"] == ran["workbook", "Cell 2"] == "PASSED"   # the student's stub is never called
    assert not [k for k in ran if k[0] == "instructor"]


def test_a_pair_the_paired_run_cannot_vouch_for_runs_as_two_notebooks(tmp_path):
    _tiny_course(tmp_path, "2 * v", last="x = 3")          # rebinds x, which double's check reads
    out = _run(tmp_path)
    assert out.returncode == 0, out.stdout[-3000:]
    ran = _cells(out.stdout)
    assert ran["instructor", "Cell 2"] == ran["workbook", "Cell 2"] == "PASSED"
    assert len(ran) == 8 and "(instructor copy)" not in out.stdout
    assert "01_tiny.ipynb: its two copies ran separately, because instructor cell 2 reads 'x'" in out.stdout
