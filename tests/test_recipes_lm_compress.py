"""The notebook-10 LM recipes (W8A8, SmoothQuant, KV cache, LLM pruning) on a tiny GPT."""

from __future__ import annotations

import pytest
import torch

from qlib.gpt import GPT, GPTConfig, KVCache
from qlib.recipes import load_recipes
from qlib.recipes.lm_compress import (KVQuantGPT, lm_kv, lm_pruned, lm_w8a8, smoothing_pairs)
from qlib.text import load_text

NAMES = ["lm-w8a8-naive", "lm-w8a8-smooth", "lm-kv8", "lm-kv4", "lm-magnitude-50",
         "lm-wanda-50", "lm-sparsegpt-50", "lm-wanda-2of4"]


@pytest.fixture(scope="module")
def setup():
    text = load_text()
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=text.vocab_size, block_size=64, n_layer=2, n_head=2,
                          d_model=32)).eval()
    return model, text


def test_the_recipes_are_listed_under_task_lm():
    lm = load_recipes("lm")
    assert all(n in lm and lm[n].task == "lm" for n in NAMES)


def test_smoothing_pairs_name_each_blocks_norm_and_the_linear_it_feeds(setup):
    model, _ = setup
    pairs = smoothing_pairs(model)
    modules = dict(model.named_modules())
    assert pairs == {"blocks.0.ln1": ["blocks.0.attn.qkv"], "blocks.0.ln2": ["blocks.0.mlp.fc"],
                     "blocks.1.ln1": ["blocks.1.attn.qkv"], "blocks.1.ln2": ["blocks.1.mlp.fc"]}
    assert all(n in modules for ln, ls in pairs.items() for n in (ln, *ls))


@pytest.mark.parametrize("smooth", [False, True])
def test_w8a8_variant_is_close_and_leaves_the_model_alone(setup, smooth):
    model, text = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    v = lm_w8a8("x", model, text, smooth=smooth)
    x = text.val[:64].view(1, 64)
    with torch.no_grad():
        ref, out = model(x), v.model(x)
    assert (out - ref).norm() / ref.norm() < 0.05
    assert all(torch.equal(t, model.state_dict()[k]) for k, t in before.items())
    # int8 weights of 4 Linears per block (head float): about a quarter of their fp32 bytes
    assert v.size_bytes < 4 * model.num_params()
    assert v.extra["quantized_layers"] == 8 and v.extra["smooth"] is smooth


def test_kv_quantized_model_is_causal_and_close_at_8_bits(setup):
    model, text = setup
    x = text.val[:64].view(1, 64)
    q8, q2 = KVQuantGPT(model, 8), KVQuantGPT(model, 2)
    with torch.no_grad():
        full, first = q8(x), q8(x[:, :20])
        ref = model(x)
        err8 = (q8(x) - ref).norm() / ref.norm()
        err2 = (q2(x) - ref).norm() / ref.norm()
    # a token's cached K/V are quantized on their own: the first 20 outputs ignore later tokens
    assert torch.allclose(full[:, :20], first, atol=1e-5)
    assert err8 < 0.01 < err2
    assert isinstance(q8.config, GPTConfig)
    with torch.no_grad():   # a given cache is used as it is
        assert torch.allclose(q8(x, KVCache()), ref, atol=1e-5)


def test_kv_variant_counts_the_cache_bytes(setup):
    model, text = setup
    v = lm_kv("lm-kv4", model, text, 4)
    fp16, int4 = v.extra["kv_bytes_fp16_ctx4096"], v.extra["kv_bytes_int4_ctx4096"]
    assert fp16 == 2 * 2 * 4096 * 32 * 2           # k and v, layers, tokens, d_model, 2 bytes
    # per token and head: 16 values of 4 bits plus an fp16 scale and offset = 6 bits a value
    assert int4 * 16 == fp16 * 6


@pytest.mark.parametrize("method, kw", [("magnitude", dict(sparsity=0.5)),
                                        ("wanda", dict(sparsity=0.5)),
                                        ("sparsegpt", dict(sparsity=0.5)),
                                        ("wanda", dict(nm=(2, 4)))])
def test_pruned_variants_are_half_empty_head_kept(setup, method, kw):
    model, text = setup
    v = lm_pruned("x", model, text, method, **kw)
    for name, m in v.model.named_modules():
        if isinstance(m, torch.nn.Linear):
            zeros = float((m.weight == 0).float().mean())
            assert zeros == (0.0 if name == "lm_head" else 0.5), name
            if "nm" in kw and name != "lm_head":
                assert bool(((m.weight.view(-1, 4) != 0).sum(1) == 2).all())
    assert v.nonzeros < model.num_params() and v.size_bytes < 4 * model.num_params()
