"""Tests for qlib.deploy: the interleaving schedule, the command line end to end on the
course model (tiny timing budget, no torch.compile) and its bad arguments. Timings are
checked for presence and order only, never for speed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from qlib.__main__ import main as qlib_main
from qlib.bench import interleaved_latency
from qlib.deploy import COLUMNS, TORCHAO_SCHEMES


def main(argv: list[str]) -> int:
    return qlib_main(["deploy", *argv])


def test_interleaving_visits_every_runtime_each_round_in_rotated_order() -> None:
    log: list[str] = []

    def make(name: str):
        def fn(x):
            log.append(name)
            return x
        return fn

    fns = {n: make(n) for n in "abc"}
    res = interleaved_latency(fns, torch.zeros(1), rounds=3, seconds=1e-9)
    # warm-up: 2 calls each (1 untimed + 1 timed); then one call per round (budget tiny),
    # each fast runtime re-warmed once after a switch: pairs of calls per visit.
    rounds = log[6:]
    visits = [rounds[i] for i in range(0, len(rounds), 2)]
    assert visits == list("abc") + list("bca") + list("cab")
    assert set(res) == set("abc")
    for r in res.values():
        assert len(r["runs"]) == 3 and r["min_ms"] <= r["median_ms"] <= r["p90_ms"]


def test_interleaving_scales_calls_with_the_budget() -> None:
    res = interleaved_latency({"relu": torch.relu}, torch.zeros(10), rounds=2, seconds=0.05)
    assert 2 <= len(res["relu"]["runs"]) <= 100  # at most 50 calls per round


def test_interleaving_bad_arguments() -> None:
    with pytest.raises(ValueError, match="rounds"):
        interleaved_latency({"a": torch.relu}, torch.zeros(1), rounds=0)
    with pytest.raises(ValueError, match="seconds"):
        interleaved_latency({"a": torch.relu}, torch.zeros(1), seconds=0)
    with pytest.raises(ValueError, match="at least one model"):
        interleaved_latency({}, torch.zeros(1))


def test_deploy_command_on_the_course_model(tmp_path, capsys, monkeypatch) -> None:
    import os

    import qlib.data

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # restored afterwards
    out = tmp_path / "deploy.json"
    code = main(["--models", "course", "--no-compile", "--rounds", "2", "--scale", "0.02",
                 "--no-progress", "--json", str(out)])
    assert code == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 16 and all(tuple(r) == COLUMNS for r in rows)
    assert {(r["batch"], r["runtime"], r["precision"]) for r in rows} == {
        (b, rt, p) for b in (1, 32) for rt, p in
        [("eager", "fp32"), ("compile", "fp32"), ("ort", "fp32"), ("ort", "int8"),
         ("torchao", "int8")]}
    ao_rows = {(r["scheme"], r["batch"]): r for r in rows if r["runtime"] == "torchao"}
    assert set(ao_rows) == {(s, b) for s in TORCHAO_SCHEMES for b in (1, 32)}
    # torchao's PT2E int8 (lowered to oneDNN) and int8 dynamic track fp32 like ORT's int8
    assert all(r["top1_agreement"] >= 0.98 and r["median_ms"] > 0 for r in ao_rows.values())
    timed = [r for r in rows if r["runtime"] != "compile"]
    assert all(0 < r["median_ms"] <= r["p90_ms"] for r in timed)
    assert all(r["note"].startswith("skipped") and r["median_ms"] is None
               for r in rows if r["runtime"] == "compile")
    by = {(r["scheme"], r["batch"]): r for r in timed if r["runtime"] == "ort"}
    fp32, u8 = by[(None, 1)], by[("static u8 act/s8 w", 1)]
    assert fp32["size_bytes"] / u8["size_bytes"] > 3.0
    # int8 flips a handful of the 1,000 test images (how many depends on the trained weights,
    # which depend on the machine's float sums); accuracy stays within a point
    assert u8["top1_agreement"] >= 0.98 and u8["accuracy"] >= fp32["accuracy"] - 0.01
    assert max(r["speedup"] for r in timed if r["batch"] == 1 and r["precision"] == "fp32") == 1.0
    printed = capsys.readouterr().out
    assert "| model" in printed and "course batch 1: ORT int8 static" in printed
    # torch.compile's kernels would go under data/, with the course's other caches
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(qlib.data.DATA_DIR / "torch_compile")
    assert oct(out.stat().st_mode & 0o777) == "0o644"                  # an ordinary file


@pytest.mark.parametrize("argv", [["--threads", "0"], ["--models", "vgg"], ["--scale", "-1"],
                                  ["--image-size", "8"]])
def test_deploy_bad_arguments(argv) -> None:
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2


def test_benchmark_function_refuses_bad_arguments() -> None:
    from qlib.deploy import benchmark

    with pytest.raises(ValueError, match="rounds"):
        benchmark(["course"], rounds=0)
    with pytest.raises(ValueError, match="models"):
        benchmark(["vgg"])


def test_bad_output_paths_fail_before_any_work(tmp_path, capsys, monkeypatch) -> None:
    with pytest.raises(SystemExit) as err:
        main(["--json", str(tmp_path)])                      # a folder, not a file
    assert err.value.code == 2 and "is a folder" in capsys.readouterr().err
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(SystemExit) as err:
        qlib_main(["report", "--out", str(afile)])           # a file, not a folder
    (line,) = capsys.readouterr().err.strip().splitlines()   # one line, no usage text
    assert err.value.code == 2 and line.endswith("afile is a file, not a folder")
    with pytest.raises(SystemExit):
        main(["--json", str(afile / "rows.json")])           # its parent is a file
    assert capsys.readouterr().err.strip().endswith("afile is a file, not a folder")
    # a data folder that cannot take the cached models and ONNX files: one line, exit 2
    monkeypatch.setattr("qlib.data.DATA_DIR", afile / "data")
    for argv in (["report", "--out", str(tmp_path / "r")], ["deploy", "--suite", "lm"]):
        with pytest.raises(SystemExit) as err:
            qlib_main(argv)
        (message,) = capsys.readouterr().err.strip().splitlines()
        assert err.value.code == 2 and "data folder" in message and "QLIB_DATA" in message


def test_output_checks_run_before_the_heavy_imports(tmp_path) -> None:
    """No work before the checks: a bad --out fails before ONNX or nbformat is even imported
    (what makes it fail in a second or two; the time itself is not asserted)."""
    code = ("import sys\nfrom qlib.__main__ import main\n"
            f"try:\n    main(['report', '--out', {str(tmp_path / 'f')!r}])\n"
            "except SystemExit as e:\n    assert e.code == 2, e.code\n"
            "heavy = [m for m in ('onnx', 'onnxruntime', 'nbformat', 'qlib.report',"
            " 'qlib.recipes') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    (tmp_path / "f").write_text("")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "is a file, not a folder" in done.stderr


def test_cli_choices_agree_with_the_modules_that_own_them() -> None:
    import qlib.__main__ as cli
    from qlib.deploy import BENCH_MODELS
    from qlib.report import TASKS

    assert cli.TASKS == TASKS and cli.BENCH_MODELS == tuple(BENCH_MODELS)
