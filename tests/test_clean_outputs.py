"""The output rules of notebooks/conftest.py: stderr, warnings and long outputs fail a cell.

One tiny generated notebook runs under nbval in a subprocess (one kernel start, a few
seconds), with a copy of the real notebooks/conftest.py next to it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import nbformat

CONFTEST = Path(__file__).resolve().parents[1] / "notebooks" / "conftest.py"

CELLS = {  # cell source -> should the cell pass?
    "print('hello')\n1 + 1": True,
    "print('\\n'.join(str(i) for i in range(40)))": True,       # 40 lines: the limit
    "import sys\nprint('oops', file=sys.stderr)": False,
    "import warnings\nwarnings.warn('careful')": False,
    "print('\\n'.join(str(i) for i in range(50)))": False,      # one long print
    "for i in range(50):\n    print(i)": False,                  # 50 prints, one output
    "list(range(100))": False,                                   # a long execute_result
    "import matplotlib\nmatplotlib.use('agg')\nimport matplotlib.pyplot as plt\n"
    "plt.plot([1, 2]); plt.show()": True,
}


def _load_rules():
    spec = importlib.util.spec_from_file_location("notebook_rules", CONFTEST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_output_problems_names_rule_and_first_lines():
    rules = _load_rules()
    stream = lambda name, text: {"output_type": "stream", "name": name, "text": text}
    assert rules.output_problems([stream("stdout", "ok\n")]) == []
    assert rules.output_problems([stream("stderr", "")]) == []
    (msg,) = rules.output_problems([stream("stderr", "x.py:3: UserWarning: careful\n")])
    assert msg.startswith("[warning") and "| x.py:3: UserWarning: careful" in msg
    (msg,) = rules.output_problems([stream("stderr", "ERROR: gpu\n")])
    assert msg.startswith("[stderr") and "| ERROR: gpu" in msg
    long = "\n".join(f"line {i}" for i in range(41))
    (msg,) = rules.output_problems([stream("stdout", long)])
    assert msg.startswith("[length: 41 lines, at most 40")
    assert "| line 0" in msg and "| line 7" in msg and "line 8\n" not in msg
    assert "(33 more lines)" in msg
    result = {"output_type": "execute_result", "data": {"text/plain": long}}
    assert rules.output_problems([result])[0].startswith("[length: 41")
    # stderr that is also long breaks two rules: both are reported
    assert len(rules.output_problems([stream("stderr", long)])) == 2


def test_nbval_fails_exactly_the_unclean_cells(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in CELLS]
    nbformat.write(nb, tmp_path / "tiny.ipynb")
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    report = tmp_path / "report.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tiny.ipynb", "--nbval-lax", "--nbval-current-env",
         "-p", "no:cacheprovider", f"--junitxml={report}", "-q"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"})   # not the outer run's options
    cases = ET.parse(report).getroot().iter("testcase")
    failed = {int(c.get("name").split()[-1]): c.find("failure") for c in cases}
    assert len(failed) == len(CELLS), proc.stdout[-3000:]
    for i, (src, ok) in enumerate(CELLS.items()):
        assert (failed[i] is None) == ok, f"cell {i} {src!r}:\n{proc.stdout[-3000:]}"
    text = proc.stdout
    assert "[stderr: the cell wrote to stderr]" in text and "| oops" in text
    assert "[warning: a Python warning was printed]" in text and "UserWarning: careful" in text
    assert "[length: 50 lines, at most 40 allowed]" in text
    assert "Cell 2:" in text and "Input:" in text  # which cell, and its source


# ------------------------------------------ the profiler behind peak_memory prints nothing
def test_peak_memory_writes_nothing_to_stderr(capfd):
    """Kineto logs "profiler_start" and, on a CUDA build of torch with no GPU, "ERROR ...
    gpuGetDeviceCount failed" straight to file descriptor 2; peak_memory keeps it out."""
    import torch
    from torch import nn

    from qlib.measure.footprint import peak_memory

    model = nn.Sequential(nn.Linear(100, 50), nn.ReLU(), nn.Linear(50, 10))
    capfd.readouterr()
    mem = peak_memory(model, torch.zeros(4, 100))
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert mem["activations_peak_bytes"] == 2 * 4 * 50 * 4  # the same measure as before


def test_the_profiler_quieting_keeps_other_stderr_lines(capfd):
    import os

    from qlib.measure.footprint import _quiet_profiler_log

    chatter = ("USDT:2026-12-02 03:24:16 1:1 SyncActivityProfilerHandler.cpp:39] profiler_start\n"
               "STAGE:2026-12-02 03:24:16 1:1 Logger.cpp:197] Completed Stage: Post Processing\n"
               "ERROR:2026-12-02 03:24:16 1:1 DeviceProperties.cpp:56] gpuGetDeviceCount "
               "failed with code 35\n")
    capfd.readouterr()
    with _quiet_profiler_log():
        os.write(2, (chatter + "ERROR:2026-12-02 03:24:16 1:1 X.cpp:1] a real failure\n").encode())
    assert capfd.readouterr().err == "ERROR:2026-12-02 03:24:16 1:1 X.cpp:1] a real failure\n"
    with _quiet_profiler_log():  # the descriptor is restored, even after an exception inside
        try:
            with _quiet_profiler_log():
                raise KeyError("inside")
        except KeyError:
            pass
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"
