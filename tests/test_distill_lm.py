"""Distilling the course LM (notebook 10): the loss, the cache, the refusals; tiny settings."""

import pytest
import torch

from qlib.distill import distillation_loss
from qlib.distill_lm import get_lm_student, lm_kd_loss_fn
from qlib.gpt import GPT, GPTConfig
from qlib.text import load_text

TINY = dict(d_model=16, n_layer=1, n_head=2, steps=6, batch_size=4)


@pytest.fixture(scope="module")
def text():
    return load_text()


def test_kd_loss_is_the_hinton_loss_on_every_token(text):
    torch.manual_seed(0)
    t = GPT(GPTConfig(vocab_size=text.vocab_size, block_size=16, n_layer=1, n_head=2, d_model=16))
    s = GPT(GPTConfig(vocab_size=text.vocab_size, block_size=16, n_layer=1, n_head=1, d_model=8))
    x, y = text.train[:32].view(2, 16), text.train[1:33].view(2, 16)
    got = lm_kd_loss_fn(t, temperature=2.0, alpha=0.3)(s, x, y)
    want = distillation_loss(s(x).flatten(0, 1), t(x).flatten(0, 1).detach(), y.flatten(),
                             temperature=2.0, alpha=0.3)
    assert torch.allclose(got, want)
    got.backward()                                   # gradients reach the student only
    assert s.lm_head.weight.grad is not None and t.lm_head.weight.grad is None


def test_students_are_cached_seeded_and_differ_only_by_the_loss(text, tmp_path):
    teacher = GPT(GPTConfig(vocab_size=text.vocab_size, block_size=64, n_layer=1, n_head=2,
                            d_model=16))
    a = get_lm_student("scratch", text, seed=0, cache_dir=tmp_path, progress=False, **TINY)
    again = get_lm_student("scratch", text, seed=0, cache_dir=tmp_path, progress=False, **TINY)
    kd = get_lm_student("kd", text, teacher, seed=0, cache_dir=tmp_path, progress=False, **TINY)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(),
                                                 again.state_dict().values()))
    assert not torch.equal(a.lm_head.weight, kd.lm_head.weight)
    assert len(list(tmp_path.glob("gpt-student-*.pt"))) == 2
    other = GPT(GPTConfig(vocab_size=text.vocab_size, block_size=64, n_layer=1, n_head=2,
                          d_model=16))      # another teacher: another cache entry
    get_lm_student("kd", text, other, seed=0, cache_dir=tmp_path, progress=False, **TINY)
    assert len(list(tmp_path.glob("gpt-student-kd-*.pt"))) == 2


@pytest.mark.parametrize("args, kw, match", [
    (("distill",), {}, "'scratch' or 'kd'"), (("kd",), {}, "teacher"),
    (("scratch",), {"width": 3}, "unknown student setting"),
])
def test_bad_arguments(text, args, kw, match):
    with pytest.raises(ValueError, match=match):
        get_lm_student(args[0], text, **kw)


def test_course_students_SLOW_FIRST_RUN(text):
    """The six students of notebook 10 and the report (3 seeds x scratch / KD): trained on first
    use (a few minutes on 2 cores), then loaded from the cache, so the notebook stays fast."""
    from qlib.lm import evaluate_lm, get_lm
    from qlib.recipes.lm_compress import STUDENT_SEEDS

    lm, data = get_lm(progress=False)
    teacher = evaluate_lm(lm, data, "val", max_windows=100)["perplexity"]
    for mode in ("scratch", "kd"):
        for seed in STUDENT_SEEDS:
            s = get_lm_student(mode, data, lm if mode == "kd" else None, seed=seed, progress=False)
            assert s.num_params() < lm.num_params() / 4
            ppl = evaluate_lm(s, data, "val", max_windows=100)["perplexity"]
            assert teacher < ppl < data.vocab_size / 5, (mode, seed, ppl)
