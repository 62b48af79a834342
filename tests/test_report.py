import json

import pytest
import torch

from qlib.__main__ import main
from qlib.evaluate import baseline_variant, evaluate_variant, run_recipe
from qlib.plots import pareto_front
from qlib.recipes import Recipe, Variant, catalog, load_recipes
from qlib.report import build_report, write_report


def _halved(baseline, data):
    """fp16 weights: half the file, same predictions (a stand-in recipe for the tests)."""
    import copy

    model = copy.deepcopy(baseline).half().float()
    v = Variant.from_module("fp16-test", "fp16", model)
    v.size_bytes //= 2
    return v


def _broken(baseline, data):
    raise RuntimeError("this recipe is broken on purpose")


@pytest.fixture
def fake_recipes(monkeypatch):
    fake = {"fp16-test": Recipe("fp16-test", "fp16", "fp16 weights", _halved),
            "broken-test": Recipe("broken-test", "none", "raises", _broken)}
    monkeypatch.setattr(catalog, "RECIPES", fake)
    return fake


KEYS = {"name", "technique", "accuracy", "precision", "recall", "f1", "size_bytes",
        "latency_ms", "params", "nonzeros", "agreement"}


def test_evaluate_variant_row(baseline, data):
    row = evaluate_variant(baseline_variant(baseline), data, latency_repeats=5)
    assert KEYS <= row.keys()
    assert 0.98 <= row["accuracy"] <= 1 and row["agreement"] == 1.0
    lo, hi = row["accuracy_ci"]
    assert lo < row["accuracy"] < hi and 0 <= row["ece"] < 0.1
    same = evaluate_variant(baseline_variant(baseline), data, row, latency_repeats=5)
    assert same["agreement"] == 1.0 and same["mcnemar_p"] == 1.0 and same["output_kl"] == 0
    assert row["params"] == 117_114 and 0 < row["latency_ms"] < 1000
    assert row["size_bytes"] > 4 * row["params"]


def test_report_files_and_failures(fake_recipes, tmp_path):
    report = build_report(progress=False, latency_repeats=5)
    assert [v["name"] for v in report["variants"]] == ["fp16-test"]
    assert report["failed"][0]["name"] == "broken-test"
    assert "broken on purpose" in report["failed"][0]["error"]
    paths = write_report(report, tmp_path)
    assert {p.name for p in paths} == {"report.json", "report.md", "accuracy_vs_size.png",
                                       "accuracy_vs_latency.png"}
    back = json.loads((tmp_path / "report.json").read_text())
    assert KEYS <= back["baseline"].keys() and KEYS <= back["variants"][0].keys()
    v = back["variants"][0]
    assert v["agreement"] > 0.99 and v["size_bytes"] * 2 <= back["baseline"]["size_bytes"] + 1
    assert abs(v["compression"] - 2) < 0.01 and v["mcnemar_p"] > 0.5
    assert "2.0x smaller" in v["verdict"] and "within noise" in v["verdict"]
    assert "fp16-test" in back["pareto"]["size_bytes"]  # smaller, (about) as accurate
    assert back["meta"]["dataset"] == "embedded" and back["meta"]["model"] == "course"
    md = (tmp_path / "report.md").read_text()
    assert "| baseline " in md and "| fp16-test " in md and "broken-test" in md
    assert v["verdict"] in md and "## Pareto fronts" in md
    assert (tmp_path / "accuracy_vs_size.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_report_and_list(fake_recipes, tmp_path, capsys):
    assert main(["report", "--out", str(tmp_path), "--only", "fp16-test",
                 "--no-progress"]) == 0
    assert (tmp_path / "report.json").exists() and (tmp_path / "report.md").exists()
    assert main(["report", "--out", str(tmp_path / "b"), "--only", "broken-test",
                 "--no-progress"]) == 1
    assert main(["list"]) == 0
    assert "fp16-test" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["report", "--out", str(tmp_path), "--only", "no-such-recipe"])
    assert "unknown recipe" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["report", "--out", str(tmp_path), "--dataset", "imagenet"])
    assert "invalid choice" in capsys.readouterr().err
    bad = tmp_path / "entry.bin"
    bad.write_bytes(b"not a qlib file")
    with pytest.raises(SystemExit):
        main(["report", "--out", str(tmp_path / "c"), "--only", "fp16-test", "--no-progress",
              "--challenge", str(bad)])
    assert "is not a qlib.pipeline.save_compressed file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["report", "--out", str(tmp_path / "d"), "--task", "lm", "--challenge", str(bad)])
    assert "--challenge scores vision models" in capsys.readouterr().err


def test_run_recipe(fake_recipes, baseline, data):
    variant, row = run_recipe("fp16-test", baseline, data)
    assert variant.name == "fp16-test" and row["agreement"] > 0.99
    with pytest.raises(ValueError, match="unknown recipe 'nope'"):
        run_recipe("nope", baseline, data)


def test_catalog_rejects_a_second_recipe_under_one_name():
    with pytest.raises(ValueError, match="listed twice"):
        catalog.index_recipes([Recipe("a", "x", "", _broken), Recipe("a", "y", "", _halved)])


def test_every_registered_recipe_has_unique_name_and_technique():
    recipes = load_recipes()
    for name, r in recipes.items():
        assert r.name == name and r.technique and callable(r.fn)


def test_pareto_front():
    assert pareto_front([1, 2, 3, 4], [0.5, 0.9, 0.8, 0.95]) == [0, 1, 3]
    assert pareto_front([1, 1], [0.5, 0.5]) == [0, 1]
    with pytest.raises(ValueError):
        pareto_front([1], [1, 2])


# ----- speed against the right reference, simulated rows, the challenge (notebook 08) -----

import copy  # noqa: E402

from qlib import pipeline  # noqa: E402
from qlib.measure.stats import SAME_SPEED  # noqa: E402
from qlib.plots import plot_tradeoff  # noqa: E402
from qlib.prune import prunable_layers  # noqa: E402
from qlib.quant import ptq  # noqa: E402
from qlib.recipes import packed_variant  # noqa: E402
from qlib.report import (SIMULATED, SPEED_REFERENCES, challenge_entry,  # noqa: E402
                         challenge_standings)


class _StepClock:
    """A deterministic fake clock: each reading is 2^-10 s after the last (a power of two, so
    the differences are exact in floating point), so every timed call of every model takes
    exactly the same time and nothing can look faster by chance."""

    def __init__(self) -> None:
        self.ticks = 0

    def __call__(self) -> float:
        self.ticks += 1
        return self.ticks * 2.0 ** -10


class _Counted:
    """Calls ``model`` and counts the calls (to see which reference a row was timed against)."""

    def __init__(self, model) -> None:
        self.model, self.calls = model, 0

    def __call__(self, x):
        self.calls += 1
        return self.model(x)


REFERENCE_CALLS: dict = {}


def _copy_recipe(baseline, data):
    """The baseline itself under another name (as the 'teacher' recipe is)."""
    return Variant.from_module("copy-test", "none", copy.deepcopy(baseline))


def _fake_quant_recipe(baseline, data):
    torch.manual_seed(0)
    return packed_variant("fq-test", ptq(baseline, data, 8, 8))


def _ort_like_recipe(baseline, data):
    ref = REFERENCE_CALLS["ref"] = _Counted(copy.deepcopy(baseline).eval())
    return Variant("ort-test", "quantization", _Counted(copy.deepcopy(baseline).eval()),
                   1000, 1, 1, execution="ort", reference=ref)


@pytest.fixture
def speed_recipes(monkeypatch):
    fake = {n: Recipe(n, "x", "", fn) for n, fn in (("copy-test", _copy_recipe),
                                                     ("fq-test", _fake_quant_recipe),
                                                     ("ort-test", _ort_like_recipe))}
    monkeypatch.setattr(catalog, "RECIPES", fake)
    return fake


@pytest.fixture
def entry_file(baseline, tmp_path):
    """A challenge entry: the baseline with 6-bit shared weights, saved as the pipeline does."""
    model = copy.deepcopy(baseline)
    books = pipeline.share_weights(model, {n: 6 for n in prunable_layers(model)})
    path = tmp_path / "my-entry.qdc"
    path.write_bytes(pipeline.save_compressed(model, books))
    return path


def test_report_speed_verdicts_follow_the_rules(speed_recipes, entry_file, tmp_path):
    report = build_report(progress=False, latency_repeats=5, speed_rounds=3,
                          clock=_StepClock(), challenge=[entry_file])
    rows = {r["name"]: r for r in report["variants"]}
    assert not report["failed"], report["failed"]
    # a row identical to the baseline: 'same, within noise', nothing else
    same = rows["copy-test"]
    assert same["speed_verdict"] == SAME_SPEED and same["speedup"] == 1.0
    assert SAME_SPEED in same["verdict"]
    assert "faster" not in same["verdict"] and "slower" not in same["verdict"]
    # an ONNX Runtime row is timed against its own fp32 reference, not the eager baseline
    ort = rows["ort-test"]
    assert ort["speed_reference"] == SPEED_REFERENCES["ort"]
    assert "ONNX Runtime fp32" in ort["verdict"]
    assert REFERENCE_CALLS["ref"].calls >= 2 * 3 * 20  # both reference slots of 3 rounds
    # a fake-quant row: marked simulated, no speed figure, no speed claim, not on the latency plot
    fq = rows["fq-test"]
    assert fq["execution"] == "simulated" and fq["speedup"] is None
    assert fq["speed_verdict"] == SIMULATED and SIMULATED in fq["verdict"]
    assert "faster" not in fq["verdict"] and "slower" not in fq["verdict"]
    assert "fq-test" not in report["pareto"]["latency_ms"]
    assert report["baseline"]["speed_verdict"] == "reference"
    paths = write_report(report, tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    fq_line = next(line for line in md.splitlines() if line.startswith("| fq-test "))
    assert "— (simulated)" in fq_line and "faster" not in fq_line and "slower" not in fq_line
    assert SAME_SPEED in next(line for line in md.splitlines() if line.startswith("| copy-test "))
    assert "## Compression challenge" in md and "entry:my-entry.qdc" in md
    assert {p.name for p in paths} >= {"accuracy_vs_latency.png", "accuracy_vs_size.png"}
    # the challenge: the entry is ranked among the rows within one point
    ch = report["challenge"]
    entry = next(s for s in ch["standings"] if s["entry"])
    assert entry["name"] == "entry:my-entry.qdc" and entry["rank"] is not None
    assert ch["course_best"] in {"baseline", "copy-test", "fq-test", "ort-test"}


def test_challenge_standings_rank_by_size_within_the_budget():
    base = dict(name="base", accuracy=0.99, size_bytes=1000, accuracy_ci=[0.98, 1.0])
    rows = [base, dict(base, name="small-ok", size_bytes=50, accuracy=0.981),
            dict(base, name="tiny-bad", size_bytes=10, accuracy=0.979),
            dict(base, name="mid", size_bytes=200, accuracy=0.995)]
    s = challenge_standings(rows, base)
    assert [(r["name"], r["rank"]) for r in s] == [("small-ok", 1), ("mid", 2), ("base", 3),
                                                   ("tiny-bad", None)]
    assert s[0]["drop_points"] == pytest.approx(0.9) and s[0]["compression"] == 20
    assert [r["name"] for r in challenge_standings(rows, base, points=2.0)][0] == "tiny-bad"
    with pytest.raises(ValueError, match="points"):
        challenge_standings(rows, base, points=-1)


def test_challenge_entry_rejects_a_file_that_is_not_a_compressed_model(baseline, data,
                                                                       tmp_path):
    bad = tmp_path / "bad.qdc"
    bad.write_bytes(b"not a model")
    ref = evaluate_variant(baseline_variant(baseline), data, latency_repeats=2)
    with pytest.raises(ValueError, match="save_compressed"):
        challenge_entry(bad, baseline, data, ref)
    with pytest.raises(ValueError, match="no challenge file"):
        challenge_entry(tmp_path / "missing.qdc", baseline, data, ref)


def test_recipes_declare_how_they_run(baseline, data, tmp_path, monkeypatch):
    from qlib import data as qdata
    from qlib.recipes import quant, runtime
    from qlib.runtime.onnx import OrtModel

    assert _fake_quant_recipe(baseline, data).execution == "simulated"
    assert quant.kmeans_w4(baseline, data).execution == "eager"   # decoded to plain float layers
    assert _copy_recipe(baseline, data).execution == "eager"
    monkeypatch.setattr(qdata, "DATA_DIR", tmp_path)
    v = runtime.int8_ort(baseline, data)
    # int8-ort's speed reference: the same model exported to ONNX Runtime fp32
    assert v.execution == "ort" and isinstance(v.reference, OrtModel)
    assert v.reference.path.name == "int8-ort-fp32.onnx" and v.reference.threads == 1
    x = data.test.tensors[0][:4]
    with torch.no_grad():
        assert torch.allclose(v.reference(x), baseline.eval()(x), atol=1e-4)
    with pytest.raises(ValueError, match="execution must be one of"):
        Variant("x", "y", baseline, 1, 1, 1, execution="gpu")
    with pytest.raises(ValueError, match="no reference"):
        Variant("x", "y", baseline, 1, 1, 1, execution="ort")


def test_tradeoff_plot_numbers_points_in_a_legend():
    rows = [dict(name="baseline", size_bytes=4000, accuracy=0.99),
            dict(name="twin", size_bytes=4001, accuracy=0.99),
            dict(name="small", size_bytes=400, accuracy=0.98, lat=[300, 500])]
    fig = plot_tradeoff(rows, xerr_key="lat", vlines={"ref": 2000}, note="left out: x")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"1  baseline", "2  twin", "3  small", "ref", "Pareto front"} <= set(labels)
    assert sorted(t.get_text() for t in ax.texts) == ["1,2", "3"]  # the twins share a spot
