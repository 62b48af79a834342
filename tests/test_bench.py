"""Tests for qlib.bench: timings are checked for sanity only (never for speed), counts by
hand-worked formulas and against PyTorch's own FLOP counter and torch.save."""

from __future__ import annotations

import gc
import sys
import time

import pytest
import torch
from torch import nn
from torch.nn.utils import prune
from torch.utils.flop_counter import FlopCounterMode

import qlib
from qlib._table import markdown_table as format_table
from qlib.bench import (count_macs, count_nonzeros, count_parameters, measure_latency,
                        model_size_bytes, peak_memory, throughput)
from qlib.models import course_model


@pytest.fixture(autouse=True)
def _seed() -> None:
    qlib.set_seed(0)


# ---------------------------------------------------------------- latency / throughput
def test_latency_figures_are_ordered_and_complete() -> None:
    lat = measure_latency(nn.Linear(16, 4), torch.randn(2, 16), warmup=2, repeats=7)
    assert set(lat) == {"median_ms", "p90_ms", "min_ms", "runs"}
    assert len(lat["runs"]) == 7 and all(r > 0 for r in lat["runs"])
    assert lat["min_ms"] <= lat["median_ms"] <= lat["p90_ms"] <= max(lat["runs"])
    assert lat["min_ms"] == min(lat["runs"])


def test_sleeping_callable_measures_at_least_its_sleep() -> None:
    lat = measure_latency(lambda x: time.sleep(0.002), torch.zeros(1), warmup=1, repeats=5)
    assert lat["min_ms"] >= 2.0  # sleep never returns early; perf_counter is monotonic


def test_warmup_and_repeats_call_counts_and_tuple_inputs() -> None:
    seen = []
    measure_latency(lambda a, b: seen.append((a.shape, b)), (torch.zeros(3), 5), warmup=4,
                    repeats=6)
    assert seen == [(torch.Size([3]), 5)] * 10  # a tuple is passed as positional args


def test_threads_pinned_inside_and_restored_after() -> None:
    before = torch.get_num_threads()
    inside = []
    measure_latency(lambda x: inside.append(torch.get_num_threads()), torch.zeros(1),
                    warmup=1, repeats=2, threads=1)
    assert inside == [1, 1, 1] and torch.get_num_threads() == before


def test_threads_and_gc_restored_after_exception() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2 if before != 2 else 3)
    pinned = torch.get_num_threads()

    def boom(x: torch.Tensor) -> None:
        raise RuntimeError("model failed")

    try:
        with pytest.raises(RuntimeError, match="model failed"):
            measure_latency(boom, torch.zeros(1), threads=1)
        assert torch.get_num_threads() == pinned and gc.isenabled()
    finally:
        torch.set_num_threads(before)


def test_module_runs_in_eval_no_grad_and_keeps_its_mode() -> None:
    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.log: list[tuple[bool, bool]] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.log.append((self.training, torch.is_grad_enabled()))
            return x

    probe = Probe().train()
    measure_latency(probe, torch.zeros(1), warmup=0, repeats=2)
    assert probe.log == [(False, False)] * 2 and probe.training  # mode restored


@pytest.mark.parametrize("kwargs, word", [
    (dict(warmup=-1), "warmup"), (dict(repeats=0), "repeats"), (dict(repeats=2.5), "repeats"),
    (dict(repeats=True), "repeats"), (dict(threads=0), "threads"), (dict(threads="2"), "threads"),
])
def test_latency_rejects_bad_settings(kwargs: dict, word: str) -> None:
    with pytest.raises(ValueError, match=rf"{word} must be an int >= \d, got"):
        measure_latency(nn.Identity(), torch.zeros(1), **kwargs)


def test_latency_rejects_bad_callable_and_input() -> None:
    with pytest.raises(TypeError, match="nn.Module or a callable"):
        measure_latency(42, torch.zeros(1))
    with pytest.raises(TypeError, match="example_input must be a tensor"):
        measure_latency(nn.Identity(), "image")
    with pytest.raises(TypeError, match="non-empty tuple"):
        measure_latency(nn.Identity(), ())


def test_throughput_is_batch_over_median() -> None:
    ips = throughput(lambda x: time.sleep(0.002), torch.zeros(4, 3), warmup=1, repeats=5)
    assert 0 < ips <= 4 / 0.002  # each call takes >= 2 ms for 4 images
    with pytest.raises(ValueError, match="batched first input"):
        throughput(nn.Identity(), torch.tensor(1.0))


# ---------------------------------------------------------------- size on disk
def test_model_size_equals_real_torch_save_file(tmp_path) -> None:
    model = course_model()
    path = tmp_path / "archive.pt"  # torch.save names zip entries after the stem
    torch.save(model.state_dict(), path)
    assert model_size_bytes(model) == path.stat().st_size == model_size_bytes(path)
    assert model_size_bytes(str(path)) == path.stat().st_size
    other = tmp_path / "model.pt"  # a shorter stem: only the zip headers shrink
    torch.save(model.state_dict(), other)
    assert 0 < model_size_bytes(model) - model_size_bytes(other) < 1024


def test_model_size_grows_with_parameters_about_4_bytes_each() -> None:
    small, big = model_size_bytes(nn.Linear(10, 10)), model_size_bytes(nn.Linear(300, 300))
    assert small < big
    n = 300 * 300 + 300
    assert 4 * n < big < 4 * n + 4096  # fp32 payload plus a small zip header


def test_model_size_of_directory_and_bad_input(tmp_path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(b"x" * 100)
    (tmp_path / "sub" / "b.bin").write_bytes(b"y" * 23)
    assert model_size_bytes(tmp_path) == 123
    with pytest.raises(ValueError, match="no file or directory at"):
        model_size_bytes(tmp_path / "missing.onnx")
    with pytest.raises(TypeError, match="nn.Module or a file/directory path"):
        model_size_bytes(123)


# ---------------------------------------------------------------- counts
def test_count_parameters_by_hand_for_course_model() -> None:
    # conv1 1*16*5*5 (no bias) + bn 2*16 + conv2 16*32*5*5 + bn 2*32
    # + fc 800*128 + 128 + fc 128*10 + 10
    expected = 400 + 32 + 12_800 + 64 + 102_528 + 1_290
    assert count_parameters(course_model()) == expected == 117_114


def test_count_nonzeros_after_zeroing_weights() -> None:
    lin = nn.Linear(10, 5)  # 50 weights + 5 biases
    assert count_nonzeros(lin) == count_parameters(lin) == 55
    with torch.no_grad():
        lin.weight[:3] = 0.0  # 3 rows of 10
    assert count_nonzeros(lin) == 25 and count_parameters(lin) == 55


def test_count_nonzeros_sees_torch_prune_masks() -> None:
    lin = nn.Linear(10, 5)
    prune.l1_unstructured(lin, "weight", amount=0.4)  # 20 of 50 weights masked
    assert count_parameters(lin) == 55  # weight_orig is the parameter now
    assert count_nonzeros(lin) == 55 - 20


def test_counts_reject_non_modules() -> None:
    for fn in (count_parameters, count_nonzeros):
        with pytest.raises(TypeError, match="needs an nn.Module"):
            fn(lambda x: x)


# ---------------------------------------------------------------- MACs
def test_count_macs_by_formula_for_course_model() -> None:
    conv1 = 16 * 28 * 28 * (1 * 5 * 5)  # out (16, 28, 28), each 1*5*5 MACs
    conv2 = 32 * 10 * 10 * (16 * 5 * 5)
    fcs = 128 * 800 + 10 * 128
    model = course_model()
    assert count_macs(model, torch.zeros(1, 1, 28, 28)) == conv1 + conv2 + fcs == 1_697_280
    assert count_macs(model, torch.zeros(3, 1, 28, 28)) == 3 * 1_697_280
    assert not any(m._forward_hooks for m in model.modules())  # hooks removed


def test_count_macs_grouped_and_depthwise_conv() -> None:
    x = torch.zeros(1, 8, 5, 5)
    grouped = nn.Conv2d(8, 16, 3, padding=1, groups=4)  # each output sees 8/4 * 3*3 inputs
    depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    assert count_macs(grouped, x) == 16 * 5 * 5 * 2 * 9
    assert count_macs(depthwise, x) == 8 * 5 * 5 * 1 * 9


@pytest.mark.parametrize("model, x", [
    (course_model(), torch.zeros(2, 1, 28, 28)),
    (nn.Sequential(nn.Conv2d(8, 16, 3, groups=4), nn.Flatten(), nn.Linear(16 * 9, 7)),
     torch.zeros(2, 8, 5, 5)),
    (nn.Sequential(nn.Conv1d(3, 6, 4, stride=2), nn.Linear(5, 2)), torch.zeros(2, 3, 12)),
])
def test_count_macs_matches_torch_flop_counter(model: nn.Module, x: torch.Tensor) -> None:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(x)
    assert 2 * count_macs(model, x) == counter.get_total_flops()  # FLOPs = 2 * MACs


def test_count_macs_rejects_model_without_conv_or_linear() -> None:
    with pytest.raises(ValueError, match="counts Conv1d/2d/3d and Linear layers"):
        count_macs(nn.Sequential(nn.ReLU()), torch.zeros(1, 4))


# ---------------------------------------------------------------- peak memory
def _mlp(inplace: bool) -> nn.Module:
    return nn.Sequential(nn.Linear(100, 50), nn.ReLU(inplace=inplace), nn.Linear(50, 10))


def test_peak_memory_of_mlp_by_hand() -> None:
    x = torch.zeros(4, 100)
    mem = peak_memory(_mlp(False), x)
    assert mem["weights_bytes"] == 4 * (100 * 50 + 50 + 50 * 10 + 10)
    assert mem["input_bytes"] == 4 * 4 * 100
    # hidden (4, 50) and its ReLU copy alive together; both freed before... the logits exist
    assert mem["activations_peak_bytes"] == 2 * 4 * 50 * 4
    assert mem["peak_bytes"] == mem["weights_bytes"] + mem["input_bytes"] + 1600
    # in-place ReLU: the hidden tensor plus the (4, 10) logits
    assert peak_memory(_mlp(True), x)["activations_peak_bytes"] == 4 * 50 * 4 + 4 * 10 * 4


def test_peak_memory_grows_with_batch_and_restores_mode() -> None:
    model = course_model().train()
    small = peak_memory(model, torch.zeros(8, 1, 28, 28))["activations_peak_bytes"]
    big = peak_memory(model, torch.zeros(32, 1, 28, 28))["activations_peak_bytes"]
    conv1_out = 8 * 16 * 28 * 28 * 4
    assert small >= conv1_out  # the largest single activation must be alive at some time
    assert big == pytest.approx(4 * small, rel=0.02) and model.training
    with pytest.raises(TypeError, match="nn.Module or a callable"):
        peak_memory("model", torch.zeros(1))


# ---------------------------------------------------------------- table and CLI
def test_format_table_aligns_columns() -> None:
    text = format_table([{"name": "fp32", "size": 468_000, "acc": 0.98765},
                         {"name": "int8", "size": 120_000, "acc": 0.9812}])
    lines = text.splitlines()
    assert lines[0] == "| name |   size |    acc |"
    assert lines[1] == "| ---- | -----: | -----: |"
    assert lines[2] == "| fp32 | 468000 | 0.9877 |"
    assert len({len(line) for line in lines}) == 1
    with pytest.raises(ValueError, match="at least one row"):
        format_table([])


def test_format_table_gives_a_column_one_number_of_decimals() -> None:
    """Notebook 00's tables printed 0.984 above 0.9841 (4 significant digits, trailing zero
    dropped); a column now shares its decimals, so the digits line up."""
    rows = [{"acc": 0.984, "ppl": 12.5, "tiny": 0.5, "wide": 2.0e7},
            {"acc": 0.9841, "ppl": 3.14159, "tiny": 2e-9, "wide": float("nan")}]
    body = [[c.strip() for c in line.split("|")[1:-1]] for line in format_table(rows).splitlines()[2:]]
    assert body == [["0.9840", "12.50", "0.5000", "2e+07"],
                    ["0.9841", "3.14", "2e-09", "nan"]]   # too small for 4 decimals: %g, not 0.0000


def test_old_bench_deploy_spelling_still_works() -> None:
    """``python -m qlib.bench deploy`` is an alias of ``python -m qlib deploy``."""
    import subprocess

    res = subprocess.run([sys.executable, "-m", "qlib.bench", "deploy", "--rounds", "0"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "rounds" in res.stderr


def test_interleaved_latency_pools_runs_per_model():
    import time as _time

    from qlib.bench import interleaved_latency

    def slow(x):
        _time.sleep(0.002)
        return x

    r = interleaved_latency({"fast": torch.relu, "slow": slow}, torch.zeros(4), rounds=3,
                            seconds=0.3)
    assert set(r) == {"fast", "slow"}
    assert r["slow"]["median_ms"] >= 2.0 > r["fast"]["median_ms"]
    assert len(r["fast"]["runs"]) >= 3 and len(r["slow"]["runs"]) >= 3
    with pytest.raises(ValueError, match="at least one model"):
        interleaved_latency({}, torch.zeros(1))


# ----- paired (A-B-A) timing against a reference, with a fake clock (notebook 08) ----------

from qlib.measure.latency import paired_latency  # noqa: E402


class _FakeClock:
    """A deterministic clock: time moves only when a fake model 'runs'."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def model(self, ms: float):
        def run(x):
            self.t += ms / 1000
            return x
        return run


def test_paired_latency_ratios_with_a_fake_clock() -> None:
    clock = _FakeClock()
    ref, fast = clock.model(1.0), clock.model(0.5)
    r = paired_latency(fast, ref, torch.zeros(1), rounds=5, repeats=3, clock=clock)
    assert r["speedup"] == pytest.approx([2.0] * 5) and r["self"] == pytest.approx([1.0] * 5)
    assert r["median_ms"] == pytest.approx(0.5) and r["reference_median_ms"] == pytest.approx(1.0)
    assert len(r["fn_ms"]) == 5 and len(r["reference_ms"]) == 10 and len(r["runs"]) == 15
    same = paired_latency(ref, ref, torch.zeros(1), rounds=3, repeats=2, clock=clock)
    assert same["speedup"] == pytest.approx([1.0] * 3)


def test_paired_latency_round_order_is_reference_model_reference() -> None:
    calls: list[str] = []
    paired_latency(lambda x: calls.append("m"), lambda x: calls.append("r"), torch.zeros(1),
                   rounds=2, repeats=1, warmup=0)
    assert "".join(calls) == "rmrrmr"
