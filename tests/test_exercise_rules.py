"""The exercise rules of issue 15 (item 4), checked on every instructor notebook with exercises.

a) At least one code exercise sits inside the section whose idea it practises: some code cell
   with a SOLUTION block comes before the markdown cell headed "## Questions".
b) No exercise's solution appears, up to names and whitespace, in an earlier code cell of the
   same notebook, so the learner cannot copy it from a few cells up.

How (b) compares code. A solution body (the lines between ``### BEGIN SOLUTION`` and
``### END SOLUTION``) and each earlier code cell become Python token sequences
(``tokenize``; comments, NL, NEWLINE, INDENT and DEDENT dropped; IPython ``%``/``!`` lines
dropped first). Names are alpha-renamed: each NAME that is not a keyword and does not follow
a "." becomes v0, v1, ... in order of first appearance within the sequence compared.
Attribute names (after ".") and literals are kept, so ``x.amax(dim=0)`` and
``w.amax(dim=0)`` match, while ``x.amax(dim=1)`` and ``x.amin(dim=0)`` do not. A solution
matches an earlier cell when its canonical sequence equals the canonical form of some
contiguous run of that cell's tokens (each window re-canonicalized on its own). Bodies of
fewer than ``MIN_TOKENS`` significant tokens (``return x.sum()``) are too short to judge.

A second, statement-level check catches a by-hand cell that computes the same thing in a
slightly different shape (the ``return`` turned into an assignment, one line written another
way): the body's statements of at least ``MIN_TOKENS`` tokens, a leading ``return`` dropped,
are looked up one by one, and the solution fails when more than half of them (and at least
two) appear, each up to names, in one earlier cell.

The earlier cells are read as the learner sees them (``workbook.strip_code``): an earlier
exercise's solution and the HIDDEN TESTS are not in the student copy, so they reveal nothing.
"""

from __future__ import annotations

import io
import keyword
import re
import textwrap
import tokenize
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

from qlib.course import workbook
from qlib.course.workbook import BEGIN, END

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "notebooks"
MIN_TOKENS = 8
QUESTIONS = "## Questions"

_SKIP = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
         tokenize.ENDMARKER, tokenize.ENCODING}


# ------------------------------------------------------------------ the matcher

@dataclass(frozen=True)
class Tok:
    """One significant token: its text, whether it is a renamable name, where it starts."""

    text: str
    renamable: bool
    line: int  # 1-based line of the source the token starts on
    stmt: int  # 0-based index of the logical line (statement) it belongs to


def tokens(source: str) -> list[Tok]:
    """Significant tokens of ``source`` (IPython magic / shell lines dropped first).

    A NAME is renamable unless it is a keyword or follows a "." (an attribute). Source that
    does not tokenize to the end (an unclosed bracket in a fragment) keeps the tokens so far.

    >>> [t.text for t in tokens("y = x.amax(dim=0)  # max")]
    ['y', '=', 'x', '.', 'amax', '(', 'dim', '=', '0', ')']
    """
    lines = ["" if line.lstrip().startswith(("%", "!")) else line
             for line in source.split("\n")]
    text = textwrap.dedent("\n".join(lines)) + "\n"
    out: list[Tok] = []
    prev, stmt = "", 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.NEWLINE:
                stmt += 1
            if tok.type in _SKIP:
                continue
            renamable = (tok.type == tokenize.NAME and not keyword.iskeyword(tok.string)
                         and prev != ".")
            out.append(Tok(tok.string, renamable, tok.start[0], stmt))
            prev = tok.string
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return out


def canonical(seq: list[Tok]) -> tuple[str, ...]:
    """``seq``'s texts with renamable names replaced by v0, v1, ... in order of first use.

    >>> canonical(tokens("a = b + a"))
    ('v0', '=', 'v1', '+', 'v0')
    """
    names: dict[str, str] = {}
    return tuple(names.setdefault(t.text, f"v{len(names)}") if t.renamable else t.text
                 for t in seq)


def _shape(seq: list[Tok]) -> list[str]:
    """The texts with every renamable name replaced by one placeholder: a cheap prefilter."""
    return ["\0" if t.renamable else t.text for t in seq]


def find_run(want: list[Tok], have: list[Tok]) -> tuple[int, int] | None:
    """Lines (first, last) of the first run of ``have`` equal to ``want`` up to names, or None."""
    n = len(want)
    if n == 0:
        return None
    key, shape, have_shape = canonical(want), _shape(want), _shape(have)
    for i in range(len(have) - n + 1):
        if have_shape[i:i + n] == shape and canonical(have[i:i + n]) == key:
            return have[i].line, have[i + n - 1].line
    return None


def find_copy(body: str, earlier: str, min_tokens: int = MIN_TOKENS) -> tuple[int, int] | None:
    """Lines (first, last; 1-based, of ``earlier``) where ``body`` appears up to names, or None.

    None also when ``body`` has fewer than ``min_tokens`` significant tokens.

    >>> find_copy("s = q.abs().amax(dim=0) / 127\\nreturn s", "m = w.abs().amax(dim=0) / 127\\nreturn m")
    (1, 2)
    """
    want = tokens(body)
    if len(want) < min_tokens:
        return None
    return find_run(want, tokens(earlier))


def statements(body: str, min_tokens: int = MIN_TOKENS) -> list[list[Tok]]:
    """The body's statements of at least ``min_tokens`` tokens, a leading ``return`` dropped.

    >>> [len(s) for s in statements("x = 1\\nreturn torch.round(w / s).clamp(-8, 7)")]
    [16]
    """
    out: dict[int, list[Tok]] = {}
    for t in tokens(body):
        out.setdefault(t.stmt, []).append(t)
    stmts = [s[1:] if s[0].text == "return" else s for s in out.values()]
    return [s for s in stmts if len(s) >= min_tokens]


def mostly_in(body: str, earlier: str, min_tokens: int = MIN_TOKENS) -> list[tuple[int, int]]:
    """Lines of ``earlier`` holding the body's statements, when more than half of them (and at
    least two) appear there, each up to names (a by-hand cell computing the same thing); else [].

    A ``return E`` in the body matches ``E`` anywhere, e.g. in ``y = E``.
    """
    stmts = statements(body, min_tokens)
    have = tokens(earlier)
    hits = [hit for s in stmts if (hit := find_run(s, have)) is not None]
    return hits if len(hits) >= 2 and 2 * len(hits) > len(stmts) else []


# ------------------------------------------------------------------ the notebooks

@dataclass(frozen=True)
class Solution:
    """One code SOLUTION block: the cell it is in, its enclosing def and its body."""

    cell: int
    name: str
    body: str


def solutions(nb: nbformat.NotebookNode) -> list[Solution]:
    """Every SOLUTION block in the code cells of ``nb``, in order."""
    out = []
    for k, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        lines = cell.source.split("\n")
        start = None
        for i, line in enumerate(lines):
            if line.strip() == BEGIN:
                start = i
            elif line.strip() == END and start is not None:
                name = workbook.enclosing_def(lines, start) or "<no def>"
                out.append(Solution(k, name, "\n".join(lines[start + 1:i])))
                start = None
    return out


def questions_cell(nb: nbformat.NotebookNode) -> int | None:
    """Index of the markdown cell holding the "## Questions" heading, or None."""
    for k, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown" and any(
                line.strip() == QUESTIONS for line in cell.source.split("\n")):
            return k
    return None


def _show(source: str, hits: list[tuple[int, int]]) -> str:
    lines = source.split("\n")
    shown = sorted({i for first, last in hits for i in range(first, last + 1)})
    return "\n".join(f"    {i:3d} | {lines[i - 1]}" for i in shown)


def copies_in(nb: nbformat.NotebookNode, name: str, *, mostly: bool = False) -> list[str]:
    """One message per solution found in an earlier code cell, as the learner sees that cell.

    ``mostly=False``: the whole body appears (``find_copy``); ``mostly=True``: more than half
    of its statements appear in one earlier cell (``mostly_in``).
    """
    problems = []
    student = [workbook.strip_code(c.source, f"{name}, cell {k}")[0]
               if c.cell_type == "code" else None for k, c in enumerate(nb.cells)]
    for sol in solutions(nb):
        for k in range(sol.cell):
            if student[k] is None:
                continue
            if mostly:
                hits = mostly_in(sol.body, student[k])
                what = "most of its statements appear"
            else:
                hit = find_copy(sol.body, student[k])
                hits = [hit] if hit else []
                what = "its body appears"
            if hits:
                problems.append(
                    f"{name}: the solution of {sol.name}() (cell {sol.cell}): {what}, up to "
                    f"names and whitespace, in earlier cell {k}:\n{_show(student[k], hits)}\n"
                    "Make the exercise a variation (another granularity, bit width or "
                    "criterion) or move the by-hand cell after it.")
                break
    return problems


def _exercise_notebooks() -> list[Path]:
    return [p for p in workbook.instructor_notebooks(SRC)
            if workbook.has_exercises(nbformat.read(p, as_version=4))]


NOTEBOOKS = _exercise_notebooks()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_an_exercise_sits_inside_its_section(path):
    nb = nbformat.read(path, as_version=4)
    q = questions_cell(nb)
    assert q is not None, f"{path.name}: no markdown cell with a '{QUESTIONS}' heading"
    inside = [s for s in solutions(nb) if s.cell < q]
    assert inside, (f"{path.name}: every code exercise comes after '{QUESTIONS}' (cell {q}); "
                    "move at least one into the section whose idea it practises")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_no_solution_appears_in_an_earlier_cell(path):
    nb = nbformat.read(path, as_version=4)
    problems = copies_in(nb, path.name)
    assert not problems, "\n\n".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_no_solution_is_mostly_an_earlier_by_hand_cell(path):
    # The same rule, statement by statement: catches a by-hand cell that computes the same
    # thing with the return turned into an assignment, or one line written differently.
    nb = nbformat.read(path, as_version=4)
    problems = copies_in(nb, path.name, mostly=True)
    assert not problems, "\n\n".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_the_questions_have_an_answer_key_for_each_question(path):
    # Issue 15 item 4: the answer key follows the questions in the instructor copy only
    # (workbook.ANSWER_KEY; the student copy and the nbgrader release drop it).
    nb = nbformat.read(path, as_version=4)
    q = questions_cell(nb)
    assert q is not None and q + 1 < len(nb.cells), f"{path.name}: no '{QUESTIONS}' cell"
    key = nb.cells[q + 1]
    assert workbook.is_answer_key(key), (f"{path.name}: the cell after '{QUESTIONS}' is not an "
                                         f"answer key (first line {workbook.ANSWER_KEY})")
    asked = re.findall(r"^(\d+)\. ", nb.cells[q].source, re.M)
    answered = re.findall(r"^\**(\d+)[.)]", key.source, re.M)
    assert asked and answered == asked, (f"{path.name}: questions {asked} but answers "
                                         f"{answered}; answer each question, in order")


def test_there_are_notebooks_with_exercises():
    assert len(NOTEBOOKS) >= 1


# ------------------------------------------------------------------ the matcher itself

SOLUTION = """\
scale = w.abs().amax(dim=1, keepdim=True) / 127
q = torch.clamp(torch.round(w / scale), -128, 127)
return q * scale
"""


def test_a_renamed_copy_with_other_whitespace_is_caught():
    earlier = ("import torch\n\n"
               "def by_hand(weight):\n"
               "    s   = weight.abs().amax(dim=1,keepdim=True)/127   # per row\n"
               "    qq = torch.clamp(\n        torch.round(weight / s), -128, 127)\n"
               "    return qq*s\n\nprint(by_hand(torch.ones(2, 2)))\n")
    assert find_copy(SOLUTION, earlier) == (4, 7)


def test_another_granularity_or_statistic_is_not_caught():
    assert find_copy(SOLUTION, SOLUTION.replace("dim=1", "dim=0")) is None
    assert find_copy(SOLUTION, SOLUTION.replace("amax", "amin")) is None
    assert find_copy(SOLUTION, SOLUTION.replace("127", "7")) is None


def test_names_must_be_renamed_consistently():
    # w and scale swapped in one place: not the same code up to a renaming
    assert find_copy(SOLUTION, SOLUTION.replace("torch.round(w / scale)",
                                                "torch.round(scale / w)")) is None


def test_a_short_body_is_ignored():
    assert len(tokens("return x.sum()")) < MIN_TOKENS
    assert find_copy("return x.sum()", "def f(y):\n    return y.sum()\n") is None


def test_magic_lines_and_comments_are_ignored():
    earlier = "%timeit 1\n!ls\n# a comment\n" + SOLUTION
    assert find_copy(SOLUTION, earlier) == (4, 6)


def _notebook(*sources: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(s[3:]) if s.startswith("md:")
                else nbformat.v4.new_code_cell(s) for s in sources]
    return nb


EXERCISE = "def rowwise(w):\n    \"\"\"Per-row int8.\"\"\"\n    " + BEGIN + "\n" + \
    textwrap.indent(SOLUTION, "    ") + "    " + END + "\n"


def test_a_solution_that_appears_only_later_is_not_flagged():
    nb = _notebook("import torch", EXERCISE, "def later(x):\n" + textwrap.indent(SOLUTION, "    "))
    assert copies_in(nb, "nb.ipynb") == []


def test_a_solution_that_appears_earlier_is_flagged_with_where():
    nb = _notebook("def earlier(x):\n" + textwrap.indent(SOLUTION, "    "), "md:## Questions",
                   EXERCISE)
    [message] = copies_in(nb, "nb.ipynb")
    assert "nb.ipynb" in message and "rowwise()" in message and "earlier cell 0" in message
    assert "amax(dim=1" in message


def test_a_by_hand_cell_with_most_statements_is_flagged_by_the_statement_rule():
    by_hand = ("w = torch.randn(4, 8)\n"
               "s = w.abs().amax(dim=1, keepdim=True) / 127\n"
               "q = torch.clamp(torch.round(w / s), -128, 127)\n"
               "w_hat = q * s   # dequantized\nprint(w_hat)\n")
    assert find_copy(SOLUTION, by_hand) is None          # the return became an assignment
    assert mostly_in(SOLUTION, by_hand) == [(2, 2), (3, 3)]
    [message] = copies_in(_notebook(by_hand, EXERCISE), "nb.ipynb", mostly=True)
    assert "most of its statements" in message and "earlier cell 0" in message
    # one statement in common out of two significant ones is not "most"
    assert mostly_in(SOLUTION, by_hand.replace("dim=1", "dim=0")) == []


def test_an_earlier_exercise_solution_is_hidden_from_the_learner():
    other = EXERCISE.replace("rowwise", "first")
    nb = _notebook(other, EXERCISE)
    assert copies_in(nb, "nb.ipynb") == []


def test_questions_and_solution_cells_are_found():
    nb = _notebook("x = 1", EXERCISE, "md:Intro\n\n## Questions\n\n1. Why?", EXERCISE)
    assert questions_cell(nb) == 2
    assert [(s.cell, s.name) for s in solutions(nb)] == [(1, "rowwise"), (3, "rowwise")]
