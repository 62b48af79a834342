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
