"""A small decoder-only transformer (GPT) with a KV cache, readable in one sitting.

Introduced in notebook 09. Shapes: ``B`` batch, ``T`` new tokens, ``S`` cached + new
tokens, ``C = d_model``, ``H = n_head``, ``hd = C / H``, ``V = vocab_size``::

    idx (B, T) -> tok_emb + pos_emb -> x (B, T, C)
    n_layer x   x = x + attn.proj(attention(attn.qkv(ln1(x))))   # pre-norm blocks
                x = x + mlp.proj(gelu(mlp.fc(ln2(x))))           # C -> 4C -> C
    ln_f(x) -> lm_head -> logits (B, T, V)

    attention(q, k, v) = softmax(q k^T / sqrt(hd) + causal mask) v    q (B,H,T,hd), k, v (B,H,S,hd)

Module names, stable because later notebooks rely on them (SmoothQuant folds ``ln1``
into ``attn.qkv`` and ``ln2`` into ``mlp.fc``; KV-cache quantization subclasses
:class:`KVCache`; weight-only quantization swaps every ``nn.Linear``):

    ``tok_emb``, ``pos_emb``            nn.Embedding (V, C) and (block_size, C)
    ``blocks[i].ln1``, ``.ln2``          nn.LayerNorm(C)
    ``blocks[i].attn.qkv``               nn.Linear(C, 3C): q, k, v in that order
    ``blocks[i].attn.proj``              nn.Linear(C, C)
    ``blocks[i].mlp.fc``, ``.mlp.proj``  nn.Linear(C, 4C), nn.Linear(4C, C); nn.GELU between
    ``ln_f``, ``lm_head``                nn.LayerNorm(C), nn.Linear(C, V, bias=False), untied

Parameters: ``12 C^2 + 13 C`` per block, plus ``(V + block_size) C`` embeddings,
``2 C`` for ``ln_f`` and ``V C`` for the head:

>>> cfg = GPTConfig(vocab_size=100, block_size=64, n_layer=2, n_head=4, d_model=64)
>>> model = GPT(cfg)
>>> print(f"{model.num_params():,} parameters")
116,992 parameters
>>> 2 * (12 * 64**2 + 13 * 64) + (100 + 64) * 64 + 2 * 64 + 100 * 64
116992
>>> model(torch.zeros(2, 5, dtype=torch.long)).shape
torch.Size([2, 5, 100])
>>> generate(model, torch.zeros(1, 3, dtype=torch.long), max_new_tokens=4).shape
torch.Size([1, 7])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GPTConfig", "GPT", "Block", "CausalSelfAttention", "MLP", "KVCache",
           "causal_attention", "generate"]


@dataclass(frozen=True)
class GPTConfig:
    """Everything that fixes the architecture (and the number of parameters)."""

    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    d_model: int
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "d_model"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model must be divisible by n_head, got d_model={self.d_model}, "
                             f"n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


class KVCache:
    """Keys and values of every layer, for decoding one token at a time.

    ``update(layer, k, v)`` stores the new ``k, v`` (each ``(B, H, T, hd)``) and returns all
    keys and values of that layer so far, ``(B, H, S, hd)``. Storage goes through a pair a
    subclass may override: ``store(layer, k, v)`` keeps the new tokens in any form (here:
    fp32, concatenated along the time axis, in ``self.state[layer]``, a dict of tensors)
    and ``load(layer)`` gives back float ``(k, v)``. A quantized cache stores integers and
    scales in ``state`` and dequantizes in ``load``; :meth:`nbytes` counts every tensor in
    ``state``, so its memory accounting needs no override.

    >>> cache = KVCache()
    >>> k, v = cache.update(0, torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4))
    >>> k.shape, len(cache), cache.nbytes()
    (torch.Size([1, 2, 3, 4]), 3, 192)
    """

    def __init__(self) -> None:
        self.state: dict[int, dict[str, Tensor]] = {}
        self.lengths: dict[int, int] = {}

    def __len__(self) -> int:
        """Positions cached so far (of layer 0): where the next token's position starts."""
        return self.lengths.get(0, 0)

    def store(self, layer: int, k: Tensor, v: Tensor) -> None:
        """Keep the new keys / values ``(B, H, T, hd)`` of ``layer``. Override to compress."""
        old = self.state.get(layer)
        if old is not None:
            k, v = torch.cat([old["k"], k], dim=2), torch.cat([old["v"], v], dim=2)
        self.state[layer] = {"k": k, "v": v}

    def load(self, layer: int) -> tuple[Tensor, Tensor]:
        """All keys and values of ``layer``, ``(B, H, S, hd)`` each, as float tensors."""
        entry = self.state[layer]
        return entry["k"], entry["v"]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if k.shape != v.shape or k.dim() != 4:
            raise ValueError(f"k and v must both be (B, H, T, head_dim), got {tuple(k.shape)} "
                             f"and {tuple(v.shape)}")
        self.store(layer, k.detach(), v.detach())
        self.lengths[layer] = self.lengths.get(layer, 0) + k.shape[2]
        return self.load(layer)

    def nbytes(self) -> int:
        """Bytes held by the cache: every tensor in ``state``."""
        return sum(t.numel() * t.element_size() for entry in self.state.values()
                   for t in entry.values())

    def clear(self) -> None:
        self.state.clear()
        self.lengths.clear()


def causal_attention(q: Tensor, k: Tensor, v: Tensor, dropout: float = 0.0,
                     training: bool = False) -> Tensor:
    """softmax(q k^T / sqrt(hd) + mask) v, by hand. q (B,H,T,hd), k and v (B,H,S,hd), S >= T.

    The ``T`` queries are the last ``T`` of ``S`` positions, so query ``i`` may look at keys
    ``0 .. S - T + i`` (the whole past, itself, nothing later).
    """
    t, s = q.shape[2], k.shape[2]
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])          # (B, H, T, S)
    allowed = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(diagonal=s - t)
    att = att.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
    att = F.dropout(att, dropout, training)
    return att @ v                                                     # (B, H, T, hd)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim, self.dropout = cfg.n_head, cfg.head_dim, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)                             # 3 x (B, T, C)
        q, k, v = (z.view(b, t, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
                   for z in (q, k, v))
        if cache is not None:
            k, v = cache.update(layer, k, v)                              # (B, H, S, hd)
        y = causal_attention(q, k, v, self.dropout, self.training)        # (B, H, T, hd)
        y = y.transpose(1, 2).reshape(b, t, c)                            # (B, T, C)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.act = nn.GELU()
        self.proj = nn.Linear(4 * cfg.d_model, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C) -> (B, T, 4C) -> (B, T, C)
        return self.drop(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        x = x + self.attn(self.ln1(x), cache, layer)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """The decoder: ``forward(idx (B, T), cache=None) -> logits (B, T, V)``.

    With a :class:`KVCache`, ``idx`` holds only the new tokens; their positions continue
    after the ``len(cache)`` cached ones, and ``len(cache) + T`` may not exceed
    ``block_size``.
    """

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init)
        for block in self.blocks:  # GPT-2: scale the residual branches' last layers down
            for proj in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: Tensor, cache: KVCache | None = None) -> Tensor:
        b, t = idx.shape
        past = len(cache) if cache is not None else 0
        if past + t > self.config.block_size:
            raise ValueError(f"sequence length (cached {past} + new {t}) must be at most "
                             f"block_size={self.config.block_size}")
        pos = torch.arange(past, past + t, device=idx.device)               # (T,)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))                 # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        return self.lm_head(self.ln_f(x))                                    # (B, T, V)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self.config).items())


@torch.no_grad()
def generate(model: GPT, idx: Tensor, max_new_tokens: int, *,
             temperature: float = 1.0, top_k: int | None = None, seed: int = 0,
             cache_factory: Callable[[], KVCache] = KVCache) -> Tensor:
    """Sample ``max_new_tokens`` after ``idx (B, T0)``, feeding one token at a time through
    a KV cache; returns ``(B, T0 + max_new_tokens)``. Seeded: same seed, same text.

    ``temperature`` divides the logits (-> 0: greedy); ``top_k`` keeps the k likeliest.
    When the cache reaches ``block_size`` it restarts from the last ``block_size // 2``
    tokens (learned positions end at ``block_size``). ``cache_factory`` builds the cache,
    e.g. a quantized subclass of :class:`KVCache`.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be None or >= 1, got {top_k}")
    if idx.dim() != 2 or idx.shape[1] < 1:
        raise ValueError(f"idx must be (B, T0) token ids with T0 >= 1, got {tuple(idx.shape)}")
    block = model.config.block_size
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=idx.device).manual_seed(seed)
    out, cache, new = idx, cache_factory(), idx[:, -block:]
    for _ in range(max_new_tokens):
        if len(cache) + new.shape[1] > block:     # positions used up: restart the cache
            cache, new = cache_factory(), out[:, -(block // 2):]
        logits = model(new, cache)[:, -1]                                  # (B, V)
        if temperature == 0:
            new = logits.argmax(-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k is not None:
                kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            new = torch.multinomial(logits.softmax(-1), 1, generator=gen)   # (B, 1)
        out = torch.cat([out, new], dim=1)
    model.train(was_training)
    return out
