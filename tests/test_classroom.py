"""qlib.course.classroom: the workbook as an nbgrader course, graded by nbgrader itself.

The first tests read the generated cells (no nbgrader). The end-to-end part, in a
temporary folder with a temporary SQLite gradebook, runs nbgrader's own command line as an
instructor would: ``write_course`` for every notebook, one ``nbgrader generate_assignment
'*'`` (cheap: it releases all eleven notebooks without executing any), then one learner's
submission of notebook 01 (the fastest to run: it loads the cached baseline and computes
on one weight matrix) with its four exercises solved right, wrong, nearly right ("close")
and left as the stub, ``nbgrader autograde`` (the one step that runs a notebook) and
``nbgrader generate_feedback``.

How a release is compared with ``notebooks/workbook/``: the same cells in the same order,
as (cell type, source) pairs, after dropping each side's banner cell (``workbook-banner``,
``classroom-banner``). So the stubs, the visible checker cells and the answer prompts are
equal character for character; nbgrader's own cell metadata (grade ids, checksums, locks)
and outputs are not compared.
"""

from __future__ import annotations

import html
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from qlib.course import classroom, workbook
from qlib.course.classroom import CLASSROOM_BANNER_ID, STUB_NAMES, classroom_notebook, write_course
from qlib.course.workbook import BANNER_ID, BEGIN, BEGIN_HIDDEN, END, END_HIDDEN

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "notebooks"
NB01 = "01_number_formats"


def _nb(name: str) -> nbformat.NotebookNode:
    return nbformat.read(SRC / f"{name}.ipynb", as_version=4)


def _by_id(nb: nbformat.NotebookNode) -> dict[str, nbformat.NotebookNode]:
    return {c["id"]: c for c in nb.cells}


# ------------------------------------------------------------- the source notebooks

def test_each_cell_gets_the_nbgrader_metadata_of_its_part():
    source, total = classroom_notebook(_nb(NB01), f"{NB01}.ipynb", points=2)
    cells = _by_id(source)
    assert total == 8 and source.cells[1]["id"] == CLASSROOM_BANNER_ID
    base = {"schema_version": 3, "task": False}
    for k in range(1, 5):
        assert cells[f"ex{k}-code"].metadata.nbgrader == {
            **base, "grade": False, "solution": True, "locked": False, "grade_id": f"ex{k}-code"}
        assert len(cells[f"ex{k}-code"].metadata[STUB_NAMES]) == 1   # the config names stubs
        assert cells[f"ex{k}-check"].metadata.nbgrader == {
            **base, "grade": True, "solution": False, "locked": True, "points": 2,
            "grade_id": f"ex{k}-check"}
        assert BEGIN_HIDDEN in cells[f"ex{k}-check"].source, "the hidden assert stays in source/"
    rest = [c for c in source.cells if not c["id"].startswith(("ex1", "ex2", "ex3", "ex4"))]
    assert all(c.metadata.nbgrader["locked"] and not c.metadata.nbgrader["grade"]
               for c in rest), "teaching text and code are read-only"
    assert all(c.outputs == [] for c in source.cells if c.cell_type == "code")
    assert cells["ex1-code"].metadata[STUB_NAMES] == ["symmetric_qparams"]
    assert "earns 2 points" in source.cells[1].source


def test_written_answers_are_graded_by_hand_only_when_asked():
    nb = _nb("00_setup_and_baseline")
    plain, total = classroom_notebook(nb, "00.ipynb")
    graded, total_graded = classroom_notebook(nb, "00.ipynb", grade_written=True)
    assert total_graded == total + 1, "one written answer, one point"
    answer = _by_id(plain)["ex5-task"]
    assert "nbgrader" not in answer.metadata, "an ungraded answer is a plain, editable cell"
    assert workbook.ANSWER in answer.source and "**Answer.**" not in answer.source
    key = _by_id(graded)["ex5-task"]
    assert key.metadata.nbgrader == {"schema_version": 3, "task": False, "grade": True,
                                     "solution": True, "locked": False, "points": 1,
                                     "grade_id": "ex5-task"}
    assert "**Answer.**" in key.source, "the answer key stays in source/ for the graders"


def _tiny(*sources: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 99 · Tiny")] + [
        nbformat.v4.new_code_cell(s) for s in sources]
    return nb


SOLUTION = f"def f(x):\n    {BEGIN}\n    return x\n    {END}"
CHECK = (f"result = check.check_function(f, lambda x: x, [(1,)])\n"
         f"{BEGIN_HIDDEN}\nassert result.passed\n{END_HIDDEN}")


@pytest.mark.parametrize("sources, match", [
    ((SOLUTION,), "no checker cell"),
    ((SOLUTION, SOLUTION.replace("f(", "g("), CHECK), "no checker cell"),
    ((SOLUTION + "\n" + CHECK,), "one cell"),
    (("x = 1  # see BEGIN SOLUTION above",), "marker"),
    ((f"{BEGIN}\nx = 1\n{END}",), "not inside a def"),     # the workbook's own checks
])
def test_a_notebook_nbgrader_could_not_grade_is_an_error_that_says_where(sources, match):
    with pytest.raises(ValueError, match=match):
        classroom_notebook(_tiny(*sources), "99_tiny.ipynb")
    with pytest.raises(ValueError, match="99_tiny.ipynb, cell"):
        classroom_notebook(_tiny(*sources), "99_tiny.ipynb")


def test_write_course_rewrites_only_changes_and_keeps_the_instructors_config(tmp_path):
    points = write_course(tmp_path)
    assert set(points) == {p.stem for p in SRC.glob("[0-9][0-9]_*.ipynb")
                           if workbook.has_exercises(nbformat.read(p, as_version=4))}
    config, nb01 = tmp_path / "nbgrader_config.py", tmp_path / "source" / NB01 / f"{NB01}.ipynb"
    assert config.read_text() == classroom.CONFIG
    config.write_text(config.read_text() + "\n# mine\n")
    stamp = nb01.stat().st_mtime_ns
    assert write_course(tmp_path) == points
    assert config.read_text().endswith("# mine\n") and nb01.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="points"):
        write_course(tmp_path, points=0)
    with pytest.raises(ValueError, match="no notebooks folder"):
        write_course(tmp_path, tmp_path / "missing")


# ------------------------------------------------------------- nbgrader, end to end

def _nbgrader(course: Path, *args: str) -> str:
    """``nbgrader ARGS`` in the course folder, with the venv's bin on PATH (nbgrader calls
    ``alembic`` when it creates the gradebook); its log, or a failure that shows it."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    db = f"sqlite:///{course / 'gradebook.db'}"
    res = subprocess.run([sys.executable, "-m", "nbgrader", *args, "--db", db], cwd=course,
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout + res.stderr


@pytest.fixture(scope="module")
def course(tmp_path_factory, baseline):
    """The released course (``baseline``: notebook 01 then loads it, cached, not trains)."""
    pytest.importorskip("nbgrader")
    root = tmp_path_factory.mktemp("classroom")
    write_course(root, grade_written=True)
    _nbgrader(root, "generate_assignment", "*")
    return root


def test_every_release_matches_the_workbook_copy(course):
    def cells(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
        return [(c.cell_type, c.source) for c in nb.cells
                if c.get("id") not in (BANNER_ID, CLASSROOM_BANNER_ID)]

    copies = sorted((SRC / "workbook").glob("[0-9][0-9]_*.ipynb"))
    assert {p.stem for p in copies} == {p.name for p in (course / "release").iterdir()}
    for copy in copies:
        released = nbformat.read(course / "release" / copy.stem / copy.name, as_version=4)
        assert cells(released) == cells(nbformat.read(copy, as_version=4)), (
            f"{copy.name}: the release differs from the workbook copy (run `make workbook`?)")
        assert released.cells[1]["id"] == CLASSROOM_BANNER_ID


def _solution(source: nbformat.NotebookNode, gid: str) -> str:
    """The instructor's solution of one exercise, markers removed."""
    return "\n".join(line for line in _by_id(source)[gid].source.split("\n")
                     if line.strip() not in (BEGIN, END))


#: Notebook 01's exercises as one learner answers them, and the points each should earn.
SUBMISSION = {
    "ex1-code": (lambda s: s, 1.0),                                         # right
    "ex2-code": (lambda s: s.replace("torch.round(w / s)",                  # wrong: ties
                                     "torch.floor(w / s + 0.5)"), 0.0),      # round up
    "ex3-code": (lambda s: s.replace("10 * math.log10(", "10 / 2.3 * math.log("), 0.0),
    "ex4-code": (None, 0.0),                                                # the stub, untouched
}
MESSAGES = {"ex1-check": "Correct: matches the reference",
            "ex2-check": "Wrong at index",                    # 0.5 rounds to 1, expected 0
            "ex3-check": "Close, but not within tolerance",   # ln 10 rounded to 2.3: nearly right
            "ex4-check": "Not attempted yet: the function still raises NotImplementedError"}


@pytest.fixture(scope="module")
def graded(course):
    """Learner "ada" submits notebook 01; autograde and feedback run on it."""
    source = nbformat.read(course / "source" / NB01 / f"{NB01}.ipynb", as_version=4)
    nb = nbformat.read(course / "release" / NB01 / f"{NB01}.ipynb", as_version=4)
    for cell in nb.cells:
        edit = SUBMISSION.get(cell.get("id"), (None, 0))[0]
        if edit is not None:
            cell.source = edit(_solution(source, cell["id"]))
            assert cell.source != _solution(source, cell["id"]) or cell["id"] == "ex1-code", (
                f"{cell['id']}: the edit no longer applies to notebook 01's solution")
    target = course / "submitted" / "ada" / NB01 / f"{NB01}.ipynb"
    target.parent.mkdir(parents=True)
    nbformat.write(nb, target)
    _nbgrader(course, "autograde", NB01)
    _nbgrader(course, "generate_feedback", NB01)
    return course


def test_autograde_gives_the_points_the_checkers_imply(graded):
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{graded / 'gradebook.db'}", classroom.COURSE_ID) as gb:
        nb = gb.find_submission_notebook(NB01, NB01, "ada")
        scores = {g.name: (g.score, g.max_score) for g in nb.grades}
        total = (nb.score, nb.max_score)
    assert scores == {gid.replace("code", "check"): (points, 1.0)
                      for gid, (_, points) in SUBMISSION.items()}
    assert total == (1.0, 4.0)


def test_the_feedback_carries_each_checkers_sentence(graded):
    autograded = nbformat.read(graded / "autograded" / "ada" / NB01 / f"{NB01}.ipynb",
                               as_version=4)
    for gid, message in MESSAGES.items():
        cell = _by_id(autograded)[gid]
        printed = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
        assert printed.startswith(message), (gid, printed)
        assert f"{BEGIN_HIDDEN}\nassert result.passed, result" in cell.source, "put back"
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert bool(errors) == (gid != "ex1-check"), (gid, cell.outputs)
    feedback = html.unescape((graded / "feedback" / "ada" / NB01 / f"{NB01}.html").read_text())
    assert all(message in feedback for message in MESSAGES.values())


def test_the_command_line_writes_the_course_and_refuses_mixed_options(tmp_path, capsys):
    from qlib.__main__ import main

    assert main(["workbook", "--nbgrader", str(tmp_path / "course")]) == 0
    printed = capsys.readouterr().out
    assert "points" in printed and (tmp_path / "course" / "nbgrader_config.py").is_file()
    for argv, words in [(["--grade-written"], "goes with --nbgrader"),
                        (["--nbgrader", str(tmp_path / "c2"), "--check"], "neither --check"),
                        (["--nbgrader", str(tmp_path / "course" / "nbgrader_config.py")],
                         "is a file")]:
        with pytest.raises(SystemExit) as err:
            main(["workbook", *argv])
        assert err.value.code == 2 and words in capsys.readouterr().err
