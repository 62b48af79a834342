"""README.md against the notebooks: one source of truth for each notebook's time, and a lab plan.

Each instructor notebook's header carries one line in a fixed form::

    **Time.** About 90 min of study, exercises included; Run All takes about 27 s on 2 cores
    once the models are cached.

(one line in the notebook, optionally followed by more sentences, e.g. on the first run). The
README's course map gives the same two numbers in its "time" column as ``90 min · 27 s``, and
its measured table ("What a lab needs from a shared server") gives the same Run All seconds.
The workbook section holds a 2-hour lab plan per notebook (before, in the lab, hand in).

The notebooks folder is a parameter of the helpers below, so the checks can run on copies.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from qlib.course import workbook

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
NOTEBOOKS = ROOT / "notebooks"

HEADER = re.compile(r"^\*\*Time\.\*\* About (?P<study>\d+) min of study, exercises included; "
                    r"Run All takes about (?P<run>\d+) s on 2 cores once the models are cached\."
                    r"(?: \S.*)?$")
MAP_TIME = re.compile(r"^(?P<study>\d+) min · (?P<run>\d+) s$")
LAB_MINUTES = re.compile(r"\((\d+) min\)")
LAB_PARTS = ("**Before the lab.**", "**In the lab.**", "**Hand in.**")


# ------------------------------------------------------------------ parsing

def header_times(path: Path) -> tuple[int, int]:
    """(study minutes, Run All seconds) from the notebook's "**Time.**" header line.

    Raises ValueError, naming the notebook, when there is not exactly one such line in the
    opening markdown cell or it does not have the fixed form.
    """
    nb = nbformat.read(path, as_version=4)
    first = next((c for c in nb.cells if c.cell_type == "markdown"), None)
    lines = [line.strip() for line in (first.source.split("\n") if first else [])
             if line.lstrip().startswith(("**Time.**", "**Time:**"))]
    if len(lines) != 1:
        raise ValueError(f"{path.name}: expected one '**Time.**' line in the first markdown "
                         f"cell, found {len(lines)}")
    m = HEADER.match(lines[0])
    if m is None:
        raise ValueError(f"{path.name}: the time line {lines[0]!r} is not of the form "
                         "'**Time.** About N min of study, exercises included; Run All takes "
                         "about S s on 2 cores once the models are cached.' (more sentences may "
                         "follow)")
    return int(m["study"]), int(m["run"])


def _rows(text: str, first_header_cell: str) -> list[list[str]]:
    """Body rows of the markdown table whose header row starts with ``first_header_cell``."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_header_cell:
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append([c.strip() for c in row.strip().strip("|").split("|")])
            return rows
    raise ValueError(f"README: no table whose header starts with '{first_header_cell}'")


def map_times(text: str) -> dict[str, tuple[int, int]]:
    """{notebook stem: (study minutes, Run All seconds)} from the course map's last column."""
    out = {}
    for row in _rows(text, "notebook"):
        stem, time = row[0].strip("`"), row[-1]
        m = MAP_TIME.match(time)
        if m is None:
            raise ValueError(f"README course map, {stem}: time {time!r} is not 'N min · S s'")
        out[stem] = int(m["study"]), int(m["run"])
    return out


def measured_run_all(text: str) -> dict[str, int]:
    """{notebook stem: Run All seconds} from the measured table (header "notebook | Run All")."""
    lines = text.split("\n")
    start = next(i for i, line in enumerate(lines)
                 if re.match(r"^\|\s*notebook\s*\|\s*Run All\s*\|", line))
    rows = _rows("\n".join(lines[start:]), "notebook")
    return {row[0]: int(row[1].removesuffix(" s")) for row in rows}


def lab_plans(text: str) -> dict[str, str]:
    """{two-digit notebook number: its lab plan's text} from "#### Lab NN · ..." headings."""
    plans: dict[str, str] = {}
    current = None
    for line in text.split("\n"):
        m = re.match(r"^#### Lab (\d\d) · ", line)
        if m:
            current = m.group(1)
            plans[current] = ""
        elif line.startswith("#"):
            current = None
        elif current is not None:
            plans[current] += line + "\n"
    return plans


def time_mismatches(notebooks: Path, readme_text: str) -> list[str]:
    """One sentence per disagreement between the notebooks' headers and the README."""
    problems = []
    in_map, measured = map_times(readme_text), measured_run_all(readme_text)
    for path in workbook.instructor_notebooks(notebooks):
        stem = path.stem
        try:
            study, run = header_times(path)
        except ValueError as err:
            problems.append(str(err))
            continue
        if stem not in in_map:
            problems.append(f"{path.name}: not in the README course map")
            continue
        if (study, run) != in_map[stem]:
            problems.append(f"{path.name}: the header says {study} min of study and {run} s to "
                            f"run; the README course map says {in_map[stem][0]} min · "
                            f"{in_map[stem][1]} s")
        if measured.get(stem) != run:
            problems.append(f"{path.name}: the header says Run All takes {run} s; the README's "
                            f"measured table says {measured.get(stem)} s")
    return problems


# ------------------------------------------------------------------ the checks

def test_every_notebook_header_agrees_with_the_readme():
    problems = time_mismatches(NOTEBOOKS, README.read_text(encoding="utf-8"))
    assert not problems, "\n".join(problems)


def test_the_course_map_and_the_measured_table_list_every_notebook_once():
    text = README.read_text(encoding="utf-8")
    stems = [p.stem for p in workbook.instructor_notebooks(NOTEBOOKS)]
    assert sorted(map_times(text)) == stems
    assert sorted(measured_run_all(text)) == stems
    for stem, (study, run) in map_times(text).items():
        assert 30 <= study <= 180, f"{stem}: {study} min of study is outside 30-180"
        assert run == measured_run_all(text)[stem], stem


def test_every_notebook_has_a_two_hour_lab_plan():
    plans = lab_plans(README.read_text(encoding="utf-8"))
    numbers = [p.name[:2] for p in workbook.instructor_notebooks(NOTEBOOKS)]
    assert sorted(plans) == numbers, "one '#### Lab NN · title' plan per notebook"
    for nn, plan in plans.items():
        for part in LAB_PARTS:
            assert part in plan, f"lab plan {nn}: no {part} line"
        lab = plan.split("**In the lab.**", 1)[1].split("**Hand in.**", 1)[0]
        minutes = sum(int(m) for m in LAB_MINUTES.findall(lab))
        assert minutes == 120, f"lab plan {nn}: the lab's steps add up to {minutes} min, not 120"


# ------------------------------------------------------------------ the parsers themselves

LINE = ("**Time.** About 90 min of study, exercises included; Run All takes about 27 s on 2 "
        "cores once the models are cached.")
README_SNIPPET = """\
| notebook | idea | time |
|---|---|---|
| `00_a` | x | 90 min · 27 s |
| `01_b` | y | 60 min · 25 s |

| notebook | Run All | peak memory |
|---|---:|---:|
| 00_a | 27 s | 1 GiB |
| 01_b | 25 s | 1 GiB |
"""


def _write(folder: Path, name: str, header: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {name}\n\nIntro.\n\n{header}\n"),
                nbformat.v4.new_code_cell("x = 1")]
    nbformat.write(nb, folder / f"{name}.ipynb")


def test_matching_headers_pass_and_a_mismatch_names_the_notebook(tmp_path):
    _write(tmp_path, "00_a", LINE + " The first run also trains the CNN, about 30 s more.")
    _write(tmp_path, "01_b", LINE.replace("90 min", "60 min").replace("27 s", "25 s"))
    assert time_mismatches(tmp_path, README_SNIPPET) == []
    _write(tmp_path, "01_b", LINE.replace("90 min", "45 min").replace("27 s", "25 s"))
    [problem] = time_mismatches(tmp_path, README_SNIPPET)
    assert problem.startswith("01_b.ipynb:") and "45 min" in problem and "60 min" in problem


def test_an_old_style_or_missing_header_is_reported(tmp_path):
    _write(tmp_path, "00_a", "**Time.** About 20 min to read and work through; about 30 s to run.")
    _write(tmp_path, "01_b", "No time here.")
    problems = time_mismatches(tmp_path, README_SNIPPET)
    assert len(problems) == 2
    assert "00_a.ipynb: the time line" in problems[0] and "found 0" in problems[1]


def test_a_run_time_that_disagrees_with_the_measured_table_is_reported(tmp_path):
    _write(tmp_path, "00_a", LINE)
    _write(tmp_path, "01_b", LINE.replace("90 min", "60 min").replace("27 s", "25 s"))
    snippet = README_SNIPPET.replace("| 01_b | 25 s", "| 01_b | 31 s")
    [problem] = time_mismatches(tmp_path, snippet)
    assert "01_b.ipynb" in problem and "31 s" in problem


def test_the_lab_plan_parser_reads_each_plan():
    text = ("## Workbook\n\n#### Lab 00 · Setup\n\n- **Before the lab.** run it\n"
            "- **In the lab.** read (60 min), exercises (60 min)\n- **Hand in.** the copy\n\n"
            "#### Lab 01 · Formats\n\ntext\n\n## Next\n\nnot a plan\n")
    plans = lab_plans(text)
    assert sorted(plans) == ["00", "01"] and "not a plan" not in plans["01"]
    assert sum(map(int, LAB_MINUTES.findall(plans["00"]))) == 120


@pytest.mark.parametrize("line", [LINE, LINE + " About half of it is one benchmark."])
def test_the_header_pattern_accepts_the_fixed_sentence(line):
    m = HEADER.match(line)
    assert m is not None and (m["study"], m["run"]) == ("90", "27")
