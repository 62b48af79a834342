"""`python -m qlib prepare`: it asks for exactly the models the notebooks load (so they find
them cached), one after the other, and prints the seconds each took. Recorded calls stand in
for the training here; `make test` runs the real command first."""

from __future__ import annotations

import pytest

import qlib.__main__
import qlib.distill_lm
import qlib.evaluate
import qlib.lm
import qlib.train
from qlib.__main__ import TRAINED_RECIPES, main
from qlib.recipes import load_recipes
from qlib.recipes.lm_compress import STUDENT_SEEDS


def test_prepare_loads_the_cnn_its_recipes_the_lm_and_notebook_10s_students(monkeypatch,
                                                                             capsys):
    calls: list[tuple] = []
    lm, data = object(), object()
    monkeypatch.setattr(qlib.train, "get_baseline",
                        lambda **kw: calls.append(("cnn", kw)) or ("cnn", "mnist"))
    monkeypatch.setattr(qlib.evaluate, "run_recipe",
                        lambda *a, **kw: calls.append(("recipe", *a, kw)) or (None, None))
    monkeypatch.setattr(qlib.lm, "get_lm", lambda **kw: calls.append(("lm", kw)) or (lm, data))

    def student(mode, d, teacher=None, *, seed=0, **kw):
        calls.append(("student", mode, d, teacher, seed, kw))

    monkeypatch.setattr(qlib.distill_lm, "get_lm_student", student)
    monkeypatch.setattr(qlib.__main__, "PROBE_STEPS", 2)   # the probe itself runs, briefly
    assert main(["prepare", "--no-progress"]) == 0
    n = len(TRAINED_RECIPES)
    assert calls[0] == ("cnn", {"progress": False})
    assert calls[1:n + 1] == [("recipe", name, "cnn", "mnist", {"evaluate": False})
                              for name in TRAINED_RECIPES]      # as the report calls them
    assert calls[n + 1] == ("lm", {"progress": False})
    # notebook 10: get_lm_student(mode, data, lm if mode == "kd" else None, seed=s)
    assert calls[n + 2:] == [("student", mode, data, lm if mode == "kd" else None, seed,
                          {"progress": False})
                         for mode in ("scratch", "kd") for seed in STUDENT_SEEDS]
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 + n + 2 * len(STUDENT_SEEDS)  # speed, one per model, the total
    assert "speed probe" in lines[0] and float(lines[0].split()[0]) > 0
    assert all(line.split()[1] == "s" for line in lines) and "in all" in lines[-1]


def test_prepare_refuses_an_unwritable_data_folder(monkeypatch, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    monkeypatch.setattr("qlib.data.DATA_DIR", afile / "data")
    with pytest.raises(SystemExit) as exit_:
        main(["prepare"])
    assert exit_.value.code == 2 and "data folder" in capsys.readouterr().err


def test_the_prepared_recipes_are_registered_vision_recipes():
    recipes = load_recipes()
    assert all(recipes[name].task == "vision" for name in TRAINED_RECIPES)
