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
"""

from __future__ import annotations

import re

import pytest

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
