import pytest
import torch
import torch.nn.functional as F

from qlib.gpt import GPT, GPTConfig, KVCache, causal_attention, generate

CFG = GPTConfig(vocab_size=50, block_size=32, n_layer=2, n_head=4, d_model=32)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPT(CFG).eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases, as after training
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def test_attention_matches_sdpa():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 9, 8).unbind(0)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(causal_attention(q, k, v), ref, atol=1e-6, rtol=1e-5)
    # 3 new queries against 9 keys (6 of them cached): the last rows of the full result
    torch.testing.assert_close(causal_attention(q[:, :, -3:], k, v), ref[:, :, -3:],
                               atol=1e-6, rtol=1e-5)


def test_names_and_shapes(model):
    names = dict(model.named_modules())
    for n in ("blocks.0.ln1", "blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.1.ln2",
              "blocks.1.mlp.fc", "blocks.1.mlp.proj", "ln_f", "lm_head", "tok_emb", "pos_emb"):
        assert n in names, n
    assert model.blocks[0].attn.qkv.weight.shape == (3 * 32, 32)
    assert model.lm_head.weight.data_ptr() != model.tok_emb.weight.data_ptr()
    assert model(torch.zeros(2, 7, dtype=torch.long)).shape == (2, 7, 50)
    c = CFG.d_model
    expected = CFG.n_layer * (12 * c * c + 13 * c) + (50 + 32) * c + 2 * c + 50 * c
    assert model.num_params() == expected


def test_cached_decoding_matches_full_forward(model):
    idx = torch.randint(0, 50, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(idx)
        cache = KVCache()
        steps = [model(idx[:, :5], cache)]                # prefill, then one token at a time
        steps += [model(idx[:, t: t + 1], cache) for t in range(5, 20)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    assert len(cache) == 20
    assert cache.nbytes() == 2 * CFG.n_layer * 2 * 20 * CFG.d_model * 4


def test_quantized_cache_can_subclass():
    class HalfCache(KVCache):
        def store(self, layer, k, v):
            super().store(layer, k.half(), v.half())

        def load(self, layer):
            k, v = super().load(layer)
            return k.float(), v.float()

    torch.manual_seed(0)
    m = GPT(CFG).eval()
    idx = torch.randint(0, 50, (1, 10))
    with torch.no_grad():
        full = m(idx)
        cache = HalfCache()
        steps = torch.cat([m(idx[:, t: t + 1], cache) for t in range(10)], 1)
    torch.testing.assert_close(steps, full, atol=1e-2, rtol=1e-2)
    assert cache.nbytes() == 2 * CFG.n_layer * 10 * CFG.d_model * 2


def test_generate_is_seeded_and_runs_past_block_size(model):
    start = torch.zeros(2, 3, dtype=torch.long)
    a = generate(model, start, 40, seed=0, top_k=5)
    b = generate(model, start, 40, seed=0, top_k=5)
    c = generate(model, start, 40, seed=1, top_k=5)
    assert a.shape == (2, 43) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[:, :3], start)
    greedy = generate(model, start, 5, temperature=0)
    with torch.no_grad():
        assert greedy[0, 3] == model(start)[0, -1].argmax()


def test_bad_input_raises(model):
    with pytest.raises(ValueError, match="d_model must be divisible by n_head"):
        GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=3, d_model=16)
    with pytest.raises(ValueError, match="block_size must be an int >= 1, got 0"):
        GPTConfig(vocab_size=10, block_size=0, n_layer=1, n_head=1, d_model=16)
    with pytest.raises(ValueError, match="block_size=32"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="top_k"):
        generate(model, torch.zeros(1, 1, dtype=torch.long), 2, top_k=0)
    with pytest.raises(ValueError, match="k and v"):
        KVCache().update(0, torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3))
