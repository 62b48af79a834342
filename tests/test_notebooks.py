"""Notebook hygiene (stored without outputs, the course skeleton) and JupyterLab serving them.

nbval executes the notebooks themselves: `make test` passes `notebooks/` to pytest.
"""

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").rglob("[0-9][0-9]_*.ipynb"))


def test_there_are_notebooks():
    assert any(p.name.startswith("00_") for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_stored_without_outputs(path):
    nb = json.loads(path.read_text())
    dirty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and
             (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs; clear them before committing"


#: The notebook metadata JupyterLab 4 writes when it opens and saves a notebook with the course's
#: kernel (read from a save in the browser test's JupyterLab). A notebook stored with anything
#: else shows "unsaved" the moment it opens, because JupyterLab rewrites it at once.
JUPYTERLAB_METADATA = {
    "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                   "name": "python3"},
    "language_info": {"codemirror_mode": {"name": "ipython", "version": 3},
                      "file_extension": ".py", "mimetype": "text/x-python", "name": "python",
                      "nbconvert_exporter": "python", "pygments_lexer": "ipython3"},
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_stores_the_metadata_jupyterlab_writes(path):
    meta = json.loads(path.read_text())["metadata"]
    info = dict(meta.get("language_info", {}))
    version = info.pop("version", None)
    assert {"kernelspec": meta.get("kernelspec"), "language_info": info} == JUPYTERLAB_METADATA
    # JupyterLab writes the kernel's full Python version; the course's machines run 3.11
    assert version is not None and version.split(".")[:2] == ["3", "11"], version


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_follows_the_skeleton(path):
    nb = json.loads(path.read_text())
    text = lambda kind: "\n".join("".join(c["source"]) for c in nb["cells"]  # noqa: E731
                                  if c["cell_type"] == kind)
    md, code = text("markdown"), text("code")
    first = "".join(nb["cells"][0]["source"])
    assert first.startswith("# ") and "goals" in first.lower() and "min" in first
    assert "qlib.set_seed(0)" in code
    assert "## Summary" in md and "## Questions" in md
    assert code.count("assert ") >= 3, "sections end in asserts on what was just shown"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_jupyterlab_serves_the_notebooks(tmp_path):
    """Start JupyterLab as `make lab` does (no browser, loopback) and list notebooks/."""
    port, token = _free_port(), secrets.token_hex(16)
    jupyter = Path(sys.executable).with_name("jupyter")
    log = open(tmp_path / "lab.log", "wb")
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path), "JUPYTER_CONFIG_DIR":
           str(tmp_path / "config")}
    proc = subprocess.Popen(
        [str(jupyter), "lab", "--no-browser", "--notebook-dir=notebooks",
         "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         f"--IdentityProvider.token={token}"] + (["--allow-root"] if os.geteuid() == 0 else []),
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline, listing = time.time() + 90, None
        while time.time() < deadline and listing is None:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited: {(tmp_path / 'lab.log').read_text()[-2000:]}")
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/api/contents/",
                                             headers={"Authorization": f"token {token}"})
                with urllib.request.urlopen(req, timeout=5) as resp:
                    listing = json.load(resp)
            except OSError:
                time.sleep(0.5)
        assert listing is not None, "JupyterLab did not answer within 90 s"
        served = {item["name"] for item in listing["content"]}
        assert {p.name for p in NOTEBOOKS if p.parent.name == "notebooks"} <= served
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab?token={token}",
                                    timeout=10) as resp:
            assert resp.status == 200 and b"JupyterLab" in resp.read()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
