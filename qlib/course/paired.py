"""One kernel for a notebook's two copies: the student copy as a learner runs it, then the
instructor copy's own cells (its solutions and hidden tests).

Used by ``make test`` (``notebooks/conftest.py``, option ``--paired-copies``). The student copy
(``make workbook``) is the instructor notebook with each solution replaced by a stub and the
hidden tests removed, so the two share every other cell; running both from the top repeats
every expensive cell. The paired run executes, in one fresh kernel::

    S_0, S_1, ..., S_{N-1}          the student copy, top to bottom, exactly as a learner runs it
    I_d1, I_d2, ..., I_dm           then the instructor copy's cells that differ, in order

where ``d1 < ... < dm`` index the instructor's code cells that the student copy lacks or
holds with another source. This equals running the instructor copy top to bottom when every
name a cell reads is provided by the same cell in both orders. :func:`paired_run_problems`
checks that with the cells' syntax trees: for each read of a global name, the last earlier
cell that binds it (assignment, ``def``, ``import``, ``for``/``with`` target, ``del``) or
writes into it (``x.attr = ...``, ``x[i] = ...``, ``x += ...``) must be the same cell in the
instructor's own order and in the paired order. A name a cell binds before reading it counts
as its own (not for its functions, which read at call time); two cells that bind a name by the same import statement provide the same
object. Mutation through a method call (``model.train()``) is not visible to the
syntax tree; the course's checkers give each call a deep copy of its inputs
(:func:`qlib.course.check.check_function`), so a solution cannot change shared state.

>>> import copy, nbformat
>>> cell = nbformat.v4.new_code_cell
>>> instr = nbformat.v4.new_notebook(cells=[cell("x = 1"), cell("def f(): return x + 1"),
...                                         cell("assert f() == 2"), cell("x = 5")])
>>> student = copy.deepcopy(instr)                     # what make workbook does: same cells, same ids
>>> student.cells[1].source, student.cells[2].source = "def f(): raise NotImplementedError", "pass"
>>> instructor_only_cells(instr, student)
[1, 2]
>>> for problem in paired_run_problems(instr, student):   # f reads x, which cell 3 rebinds first
...     print(problem)
a function of instructor cell 1, called by instructor cell 2, reads 'x' from cell 0 when the copy runs top to bottom, but from cell 3 in the paired run
a function of instructor cell 1, called by itself, reads 'x' from cell 0 when the copy runs top to bottom, but from cell 3 in the paired run
>>> instr.cells[3].source = student.cells[3].source = "y = 5"
>>> paired_run_problems(instr, student)
[]
"""

from __future__ import annotations

import ast
import builtins
import symtable
from typing import NamedTuple

import nbformat

__all__ = ["instructor_only_cells", "CellNames", "cell_names", "paired_run_problems"]


def _code(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code"]


def instructor_only_cells(instructor: nbformat.NotebookNode,
                          student: nbformat.NotebookNode) -> list[int]:
    """Indices (among the instructor's code cells) of the cells the student copy lacks or
    holds with another source. Cells are matched by their ``id``, which ``make workbook``
    keeps; a student code cell the instructor copy lacks is an error (a stale copy)."""
    theirs = {c.get("id"): c.source for c in _code(student)}
    ours = {c.get("id") for c in _code(instructor)}
    extra = [i for i in theirs if i not in ours]
    if extra or None in theirs or None in ours:
        raise ValueError(f"the student copy's code cells {extra or '(without ids)'} are not in the "
                         "instructor notebook: regenerate it with `make workbook`")
    return [k for k, c in enumerate(_code(instructor)) if theirs.get(c.get("id")) != c.source]


class CellNames(NamedTuple):
    writes: set[str]
    reads: set[str]
    function_reads: set[str]
    imports: dict[str, str]


def cell_names(source: str) -> CellNames:
    """The global names one cell writes and reads.

    ``writes``: names the cell binds at its top level, names its functions declare ``global``
    and assign, and names whose object it writes into (attribute, item or augmented
    assignment). ``reads``: global names its top level reads and does not bind itself first.
    ``function_reads``: global names its functions read, when they are called (in this
    cell or a later one). ``imports``: the names among ``writes`` that only a
    top-level import binds, each with what it imports (``"qlib.course:check"``). Builtins are
    left out.
    """
    table = symtable.symtable(source, "<cell>", "exec")
    writes, reads, bound, before, function_reads = set(), set(), set(), set(), set()

    def walk(t: symtable.SymbolTable, top: bool, deferred: bool) -> None:
        # deferred: inside a def, whose body reads its globals when it is called; a lambda or
        # a comprehension's reads count as the cell's own (they nearly always run at once)
        for s in t.get_symbols():
            name = s.get_name()
            if top or s.is_declared_global() or (s.is_global() and not s.is_local()):
                if s.is_assigned() or s.is_imported() or (top and s.is_namespace()):
                    writes.add(name)
                    bound.add(name)
                if s.is_referenced():
                    (function_reads if deferred else reads).add(name)
        for child in t.get_children():
            walk(child, False, deferred or (child.get_type() == "function" and child.get_name()
                                            not in ("lambda", "listcomp", "setcomp", "dictcomp", "genexpr")))

    walk(table, True, False)
    tree = ast.parse(source)
    for node in ast.walk(tree):
        target = None
        if isinstance(node, (ast.Attribute, ast.Subscript)) and isinstance(node.ctx, (ast.Store, ast.Del)):
            target = node.value
        elif isinstance(node, ast.AugAssign):
            target = node.target
        while isinstance(target, (ast.Attribute, ast.Subscript)):
            target = target.value
        if isinstance(target, ast.Name):
            writes.add(target.id)
            if isinstance(node, ast.AugAssign):
                before.add(target.id)               # x += 1 reads the x from before
    imported: dict[str, str] = {}
    other: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and node in tree.body:
            for alias in node.names:
                name = alias.asname or alias.name.split(".")[0]
                what = (f"{node.module}:{alias.name}" if isinstance(node, ast.ImportFrom) and not node.level
                        else alias.name if alias.asname else name)
                imported[name] = what if imported.get(name, what) == what else "?"
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            other.add(node.id)
    skip = set(dir(builtins))
    imports = {n: w for n, w in imported.items() if n not in other and w != "?" and n in writes}
    return CellNames(writes - skip, ((reads - bound) | before) - skip, function_reads - skip, imports)


Tag = tuple[str, int]     # ("C", k) a shared cell, ("I", k) / ("S", k) one copy's cell k


def _provider(order: list[Tag], names: dict[Tag, CellNames], pos: int, name: str) -> Tag | str | None:
    """The cell before ``order[pos]`` that last wrote ``name`` (what it imported, for an
    import), or None."""
    for tag in reversed(order[:pos]):
        if name in names[tag].writes:
            return names[tag].imports.get(name, tag)
    return None


def paired_run_problems(instructor: nbformat.NotebookNode,
                        student: nbformat.NotebookNode) -> list[str]:
    """Why the paired run would differ from running the instructor copy alone ([] when it
    would not): one message per name read that two orders provide from different cells."""
    diff = set(instructor_only_cells(instructor, student))
    icells, scells = _code(instructor), _code(student)
    names: dict[Tag, CellNames] = {}
    for k, c in enumerate(icells):                 # shared cells are tagged "C", by instructor index
        names["I" if k in diff else "C", k] = cell_names(c.source)
    index = {c.get("id"): k for k, c in enumerate(icells)}
    student_order = []
    for c in scells:
        k = index[c.get("id")]
        tag = ("S", k) if k in diff else ("C", k)
        if tag[0] == "S":
            names[tag] = cell_names(c.source)
        student_order.append(tag)
    alone = [("I" if k in diff else "C", k) for k in range(len(icells))]
    paired = student_order + [("I", k) for k in sorted(diff)]
    src = lambda t: "nowhere" if t is None else f"the import of {t}" if isinstance(t, str) else (
        f"cell {t[1]}" if t[0] == "C" else f"{'student' if t[0] == 'S' else 'instructor'} cell {t[1]}")
    problems = []
    for pos, tag in enumerate(paired):
        if tag[0] == "S":
            continue                               # the student copy's own run is the learner's run
        what = f"{'instructor cell' if tag[0] == 'I' else 'cell'} {tag[1]}"
        # (name, the cell whose run reads it): the cell itself, then, for what its functions
        # read, every later instructor-only cell, which may call them
        reads = [(n, tag) for n in sorted(names[tag].reads)]
        later = [("I", k) for k in sorted(diff) if k >= tag[1] and ("I", k) != tag] + ([tag] if tag[0] == "I" else [])
        reads += [(n, t) for n in sorted(names[tag].function_reads) for t in later
                  if n not in names[tag].writes or t != tag]
        for name, at in reads:
            want = _provider(alone, names, alone.index(at), name)
            got = _provider(paired, names, paired.index(at), name)
            if want != got:
                who = what if at == tag and name in names[tag].reads else (
                    f"a function of {what}, called by {'itself' if at == tag else src(at)},")
                problems.append(f"{who} reads {name!r} from {src(want)} when the copy runs top to "
                                f"bottom, but from {src(got)} in the paired run")
    return problems
