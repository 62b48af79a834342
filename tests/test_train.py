import time

import pytest
import torch
from torch import nn

import qlib
from qlib import train as qtrain
from qlib.train import (evaluate, fit, get_trained, load_checkpoint, random_shift,
                        save_checkpoint)

FAST = dict(model="student", epochs=1, progress=False)  # a ~7k-parameter net, one epoch


def test_baseline_reaches_98_percent(baseline, data):
    r = evaluate(baseline, data.loader("test", 500))
    assert r["accuracy"] >= 0.98, r["accuracy"]
    assert r["f1"] >= 0.98


def test_same_seed_same_weights(tmp_path):
    a, _ = get_trained(cache_dir=tmp_path / "a", **FAST)
    b, _ = get_trained(cache_dir=tmp_path / "b", **FAST)
    c, _ = get_trained(cache_dir=tmp_path / "c", seed=1, **FAST)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert not torch.equal(a.features[0].weight, c.features[0].weight)


def test_cache_is_used_then_corrupt_cache_rebuilt(tmp_path, capsys):
    model, _ = get_trained(cache_dir=tmp_path, **FAST)
    (path,) = tmp_path.glob("*.pt")
    stamp = path.stat().st_mtime_ns
    again, _ = get_trained(cache_dir=tmp_path, **FAST)
    assert path.stat().st_mtime_ns == stamp  # loaded, not retrained
    assert torch.equal(model.features[0].weight, again.features[0].weight)
    path.write_bytes(b"this is not a checkpoint")
    rebuilt, _ = get_trained(cache_dir=tmp_path, **FAST)
    assert "unusable" in capsys.readouterr().out
    assert torch.equal(model.features[0].weight, rebuilt.features[0].weight)
    assert load_checkpoint(path)["recipe"]["model"] == "student"


def test_mismatched_cache_rebuilt(tmp_path, capsys):
    get_trained(cache_dir=tmp_path, **FAST)
    (path,) = tmp_path.glob("*.pt")
    ckpt = load_checkpoint(path)
    # a checkpoint whose weights do not fit the architecture (wrong shapes)
    ckpt["state_dict"] = {k: v[:1] if v.ndim else v for k, v in ckpt["state_dict"].items()}
    save_checkpoint(ckpt, path)
    model, _ = get_trained(cache_dir=tmp_path, **FAST)
    assert "unusable" in capsys.readouterr().out
    assert model.features[0].weight.shape[0] == 4
    # a checkpoint written under another recipe is not trusted either
    ckpt = load_checkpoint(path)
    ckpt["recipe"] = {**ckpt["recipe"], "epochs": 99}
    save_checkpoint(ckpt, path)
    get_trained(cache_dir=tmp_path, **FAST)
    assert "unusable" in capsys.readouterr().out


def test_checkpoint_round_trip_and_weights_only(tmp_path):
    obj = {"state_dict": qlib.models.course_model().state_dict(), "recipe": {"a": 1}}
    path = save_checkpoint(obj, tmp_path / "sub" / "m.pt")
    back = load_checkpoint(path)
    assert back["recipe"] == {"a": 1}
    assert all(torch.equal(obj["state_dict"][k], v) for k, v in back["state_dict"].items())
    assert [p.name for p in path.parent.iterdir()] == ["m.pt"]  # no temp file left
    # arbitrary pickled objects are refused by weights_only=True
    torch.save({"fn": print}, tmp_path / "evil.pt")
    with pytest.raises(Exception):
        load_checkpoint(tmp_path / "evil.pt")


def test_failed_write_keeps_old_file(tmp_path, monkeypatch):
    path = save_checkpoint({"v": torch.tensor(1)}, tmp_path / "m.pt")

    def crash(obj, f):
        f.write(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(qtrain.torch, "save", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint({"v": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["v"].item() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_random_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    assert torch.equal(random_shift(x, 0), x)
    y = random_shift(x, 2, g)
    assert y.shape == x.shape
    # every output row is a (clamped) window of the input: values come from the input
    assert set(y.unique().tolist()) <= set(x.unique().tolist())


def test_fit_reduces_loss_and_rejects_bad_input(data):
    qlib.set_seed(0)
    model = qlib.models.student_model()
    hist = fit(model, data.loader("train", 64), epochs=3, progress=False,
               val_loader=data.loader("val", 500))
    assert hist["loss"][-1] < hist["loss"][0]
    assert len(hist["val_accuracy"]) == 3 and hist["val_accuracy"][-1] > 0.8
    with pytest.raises(ValueError, match="epochs"):
        fit(model, data.loader("train"), epochs=0)
    empty = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(
        torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ValueError, match="no batches"):
        fit(model, empty, epochs=1)


def test_evaluate_accepts_callables(baseline, data):
    ev_module = evaluate(baseline, data.loader("test", 256))
    ev_fn = evaluate(lambda x: baseline(x), data.loader("test", 256))
    assert ev_module["accuracy"] == ev_fn["accuracy"]
    assert ev_module["logits"].shape == (1000, 10)


def test_cached_training_and_fingerprint(tmp_path):
    from qlib.train import cached_training, fingerprint

    calls = []

    def build():
        torch.manual_seed(0)
        return torch.nn.Linear(3, 2)

    def train(m):
        calls.append(1)
        with torch.no_grad():
            m.weight.fill_(7.0)

    a = cached_training("lin", {"v": 1}, build, train, cache_dir=tmp_path)
    b = cached_training("lin", {"v": 1}, build, train, cache_dir=tmp_path)
    assert len(calls) == 1 and torch.equal(a.weight, b.weight) and float(b.weight.detach()[0, 0]) == 7
    assert fingerprint(a) == fingerprint(b) != fingerprint(build())
    cached_training("lin", {"v": 2}, build, train, cache_dir=tmp_path)  # another recipe
    assert len(calls) == 2 and len(list(tmp_path.glob("lin-*.pt"))) == 2


_LOCK_DEMO = """
import os, sys, time
import torch
from qlib.train import cached_training

def build():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2)

def train(m):
    with open(sys.argv[2], "a") as f:
        f.write("trained\\n")
    go = sys.argv[2] + ".go"            # hold the lock until the test says the other waits
    for _ in range(1200):
        if os.path.exists(go):
            break
        time.sleep(0.1)
    with torch.no_grad():
        m.weight.fill_(float(sys.argv[3]))

m = cached_training("lin", {"v": 1}, build, train, cache_dir=sys.argv[1])
print("weight", float(m.weight[0, 0]))
"""


def test_two_processes_train_a_model_once(tmp_path):
    """make test's two workers (or two notebooks) asking for one uncached model: the first
    trains it, the second waits on the lock file, says so, and loads the saved weights."""
    import subprocess
    import sys

    script, log = tmp_path / "lock_demo.py", tmp_path / "trained.log"
    script.write_text(_LOCK_DEMO)
    first = subprocess.Popen([sys.executable, str(script), str(tmp_path / "cache"), str(log), "7"],
                             stdout=subprocess.PIPE, text=True)
    time.sleep(0.2)
    while not log.exists() and first.poll() is None:       # the first is inside train()
        time.sleep(0.05)
    # -u: the second's lines arrive as it prints them, whatever the machine's load
    second = subprocess.Popen([sys.executable, "-u", str(script), str(tmp_path / "cache"),
                               str(log), "9"], stdout=subprocess.PIPE, text=True)
    seen = []
    for line in second.stdout:                             # until the second waits on the lock
        seen.append(line)
        if "another process is training lin-" in line:
            break
    (tmp_path / "trained.log.go").touch()                  # now the first may finish
    out2 = "".join(seen) + second.communicate(timeout=120)[0]
    out1, _ = first.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0, out2
    assert log.read_text() == "trained\n"                  # trained once, by the first
    assert "another process is training lin-" in out2
    assert "weight 7.0" in out1 and "weight 7.0" in out2   # the second loaded the first's


# ----- cache keys follow the code a training depends on, not its documentation --------
def _hash_in_copy(root) -> str:
    import subprocess
    import sys

    code = "from qlib.train import source_hash; print(source_hash('qlib.train'))"
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                         text=True, timeout=120, env={"PYTHONPATH": str(root), "PATH": ""})
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.strip()


def test_documentation_edits_retrain_nothing_code_edits_do(tmp_path) -> None:
    import shutil
    from pathlib import Path

    src = Path(qtrain.__file__).resolve().parent
    pkg = tmp_path / "qlib"
    shutil.copytree(src, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    before = _hash_in_copy(tmp_path)

    def edit(rel: str, old: str, new: str) -> None:
        p = pkg / rel
        text = p.read_text()
        assert old in text, (rel, old)
        p.write_text(text.replace(old, new, 1))

    # a docstring anywhere (here the core's own train.py, check.py and report.py) ...
    edit("train.py", '"""Seeded fit', '"""A documentation edit. Seeded fit')
    edit("course/check.py", '"""', '"""Another documentation edit. ')
    # ... and code outside what training depends on (the report, the checkers)
    edit("report.py", "\n__all__", "\nUNUSED_CONSTANT = 1\n__all__")
    edit("course/check.py", "\n__all__", "\nUNUSED_CONSTANT = 1\n__all__")
    assert _hash_in_copy(tmp_path) == before
    # while a code edit in train.py (or anything it imports) changes the key: retrain once
    edit("train.py", "\n__all__", "\nUNUSED_CONSTANT = 1\n__all__")
    assert _hash_in_copy(tmp_path) != before


def test_cached_baseline_does_not_depend_on_the_callers_thread_count(tmp_path):
    """Notebook 00 sets 1 thread, the tests run on 2: whoever trains the baseline first, it is
    the same model (training pins TRAIN_THREADS), so every notebook sees the same numbers."""
    import torch

    from qlib.train import get_trained

    old = torch.get_num_threads()
    models = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            m, _ = get_trained(epochs=1, cache_dir=tmp_path / str(threads), progress=False)
            assert torch.get_num_threads() == threads          # the caller's count is restored
            models.append(m)
    finally:
        torch.set_num_threads(old)
    a, b = (m.state_dict() for m in models)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_unwritable_cache_keeps_the_trained_model_with_one_warning(tmp_path) -> None:
    """A cache folder that cannot be written (its parent is a file; as root, permissions
    would not stop a write) is found before training; the model is trained, returned, used."""
    import warnings

    from qlib.train import cached_training

    (tmp_path / "file").write_text("")
    calls = []

    def build() -> nn.Module:
        torch.manual_seed(0)
        return nn.Linear(3, 2)

    def train(net: nn.Module) -> None:
        calls.append(1)
        with torch.no_grad():
            net.weight.fill_(0.5)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = cached_training("tiny", {"v": 1}, build, train, cache_dir=tmp_path / "file" / "c")
    assert calls == [1] and torch.all(net.weight == 0.5)
    assert len(caught) == 1 and "not saved" in str(caught[0].message)
    assert "QLIB_DATA" in str(caught[0].message)


def test_predict_refuses_a_model_that_outputs_nan() -> None:
    from qlib.train import evaluate

    loader = [(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(ValueError, match="not finite"):
        evaluate(lambda x: torch.full((x.shape[0], 10), float("nan")), loader)


def test_atomic_write_removes_temp_files_of_killed_writes_only_when_stale(tmp_path) -> None:
    import os
    import time

    from qlib._files import STALE_TEMP_S, atomic_write

    stale = tmp_path / ".model.pt.abc123.tmp"      # what a SIGKILLed write leaves
    fresh = tmp_path / ".model.pt.def456.tmp"      # a write still in progress elsewhere
    other = tmp_path / ".other.pt.xyz.tmp"         # another target's: not ours to remove
    for f in (stale, fresh, other):
        f.write_bytes(b"partial")
    old = time.time() - STALE_TEMP_S - 60
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    with atomic_write(tmp_path / "model.pt") as tmp:
        tmp.write_bytes(b"done")
    assert not stale.exists() and fresh.exists() and other.exists()
    assert (tmp_path / "model.pt").read_bytes() == b"done"


def test_random_shift_refuses_inputs_that_are_not_images() -> None:
    with pytest.raises(ValueError, match=r"\(N, C, H, W\).*shape \(4, 784\).*max_shift=0"):
        random_shift(torch.zeros(4, 784), 2)
    with pytest.raises(ValueError, match="max_shift=-1"):
        random_shift(torch.zeros(2, 1, 8, 8), -1)
    assert torch.equal(random_shift(torch.ones(4, 784), 0), torch.ones(4, 784))
