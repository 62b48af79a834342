import math

import pytest
import torch
import torch.nn.functional as F

from qlib.lm import build_lm, evaluate_lm, get_lm, lr_at, train_lm
from qlib.text import eval_windows, load_text

TINY = dict(n_layer=1, n_head=2, d_model=32, block_size=32)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def text():
    return load_text()


@pytest.fixture(scope="module")
def tiny(text):
    model = build_lm(text.vocab_size, **TINY)
    train_lm(model, text, steps=20, lr=3e-3, batch_size=8, progress=False)
    return model


def test_same_seed_same_model(text, tiny):
    again = build_lm(text.vocab_size, **TINY)
    history = train_lm(again, text, steps=20, lr=3e-3, batch_size=8, progress=False)
    other = build_lm(text.vocab_size, seed=1, **TINY)
    train_lm(other, text, steps=20, lr=3e-3, batch_size=8, seed=1, progress=False)
    a, b, c = (evaluate_lm(m, text, "val", max_windows=40)["perplexity"]
               for m in (tiny, again, other))
    assert a == b and a != c
    assert len(history["loss"]) == 20 and history["loss"][-1] < history["loss"][0]
    assert history["lr"][0] == pytest.approx(lr_at(0, 20, 3e-3, 1))


def test_perplexity_is_exp_cross_entropy(text, tiny):
    r = evaluate_lm(tiny, text, "test")
    x, y = eval_windows(text.test, 32)
    with torch.no_grad():
        ce = F.cross_entropy(tiny(x).flatten(0, 1), y.flatten())
    assert r["perplexity"] == pytest.approx(math.exp(ce.item()), rel=1e-5)
    assert r["nll"] == pytest.approx(ce.item(), rel=1e-5)
    assert r["tokens"] == y.numel() and r["preds"].shape == y.shape
    # equal-length windows: the mean of the per-window losses is the overall loss
    assert r["window_nll"].shape == (len(x),)
    assert r["window_nll"].mean().item() == pytest.approx(ce.item(), rel=1e-5)
    assert 1 < r["perplexity"] < text.vocab_size
    assert 0 < r["accuracy"] < 1


def test_agreement(text, tiny):
    r = evaluate_lm(tiny, text, "val", max_windows=20)
    assert r["agreement"] == 1.0
    assert evaluate_lm(tiny, text, "val", max_windows=20, reference=r)["agreement"] == 1.0
    assert evaluate_lm(tiny, text, "val", max_windows=20, reference=tiny)["agreement"] == 1.0

    def noisy(idx):  # any callable idx -> logits works: here a "quantized" model
        logits = tiny(idx)
        return logits + 3 * torch.randn(logits.shape, generator=torch.Generator().manual_seed(0))

    n = evaluate_lm(noisy, text, "val", max_windows=20, block_size=32, reference=r["preds"])
    assert 0 < n["agreement"] < 1 and n["perplexity"] > r["perplexity"]


def test_bad_input_raises(text, tiny):
    with pytest.raises(ValueError, match="split must be one of"):
        evaluate_lm(tiny, text, "dev")
    with pytest.raises(ValueError, match="block_size must be an int >= 1"):
        evaluate_lm(tiny, text, block_size=0)
    with pytest.raises(ValueError, match="reference predictions must have shape"):
        evaluate_lm(tiny, text, "val", max_windows=3,
                    reference=torch.zeros(2, 32, dtype=torch.long))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        train_lm(tiny, text, steps=0, lr=1e-3, batch_size=2)
    with pytest.raises(ValueError, match="unknown LM_RECIPE key"):
        get_lm(epochs=3)
    with pytest.raises(ValueError, match="unknown architecture"):
        build_lm(10, width=3)


def test_get_lm_caches_and_rebuilds(tmp_path, capsys):
    kw = dict(progress=False, cache_dir=tmp_path, steps=3, batch_size=2, warmup=1, **TINY)
    model, data = get_lm(**kw)
    (path,) = tmp_path.glob("gpt-pydoc-*.pt")
    stamp = path.stat().st_mtime_ns
    again, _ = get_lm(**kw)
    assert path.stat().st_mtime_ns == stamp
    assert torch.equal(model.lm_head.weight, again.lm_head.weight)
    path.write_bytes(b"not a checkpoint")
    rebuilt, _ = get_lm(**kw)
    assert "unusable" in capsys.readouterr().out
    assert torch.equal(model.lm_head.weight, rebuilt.lm_head.weight)


def test_course_lm_quality_SLOW_FIRST_RUN(one_thread):
    """The trained course LM: trained on first use (~2 min on 2 cores), then from the cache."""
    torch.set_num_threads(one_thread)  # the course's thread count, as in the notebooks
    try:
        model, data = get_lm(progress=False)
    finally:
        torch.set_num_threads(1)
    assert 1e6 <= model.num_params() <= 5e6
    r = evaluate_lm(model, data, "test")
    assert r["perplexity"] < 4.2 and r["accuracy"] > 0.6, r  # measured: 3.727 and 0.632
