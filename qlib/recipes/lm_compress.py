"""The language-model recipes of notebook 10: W8A8 with SmoothQuant, KV cache, LLM pruning and
distilled students.

Each is ``(lm, data) -> Variant`` like :mod:`qlib.recipes.lm`, on the trained course LM.
Calibration is :func:`~qlib.recipes.lm.lm_calibration` (training windows, never the test
split). What each variant's model computes is what the stored form gives back (fake
quantization, pruned float weights); ``size_bytes`` is that stored form:

    W8A8      int8 weights per output channel + an fp32 scale per channel, the rest as saved
    KV cache  the weights are untouched (fp32 file); the cache's own bytes are in ``extra``
    pruned    the sparse file of :func:`qlib.prune.sparse.save_sparse` (bitmask + fp32 values)
    students  the student's fp32 state dict; the row is the mean over :data:`STUDENT_SEEDS`
              (``extra["seeds"]`` holds each seed's numbers, ``perplexity_std`` the spread)

None of these rows is faster on this CPU: the latency column of the report is the fp32
model's with fake quantization or zeros, not int8 or 2:4 kernels.
"""

from __future__ import annotations

import copy

from torch import Tensor, nn

import io
import statistics

import torch

from ..distill_lm import LM_STUDENT, get_lm_student
from ..gpt import GPT, KVCache
from ..lm import evaluate_lm
from ..measure import count_nonzeros, count_parameters
from ..prune.llm import prune_linear_layers
from ..prune.sparse import sparse_size_bytes
from ..quant.kvcache import fake_quantize_kv, kv_cache_bytes
from ..quant.smoothquant import W8A8Linear, quantize_linears_w8a8, smooth_model
from ..quant.weightonly import packed_bytes
from ..text import TextSplits
from .lm import lm_calibration, lm_packed_size
from .registry import Variant

__all__ = ["smoothing_pairs", "QuantizedKVCache", "KVQuantGPT", "lm_w8a8", "lm_w8a8_naive",
           "lm_w8a8_smooth", "lm_kv", "lm_kv8", "lm_kv4", "lm_pruned", "lm_magnitude_50",
           "lm_wanda_50", "lm_sparsegpt_50", "lm_wanda_2of4", "STUDENT_SEEDS", "lm_student",
           "lm_scratch_student", "lm_kd_student"]

#: The seeds every student recipe trains (mean and spread are over these).
STUDENT_SEEDS = (0, 1, 2)

#: SmoothQuant's migration strength for the course LM (the paper's default for OPT).
SMOOTH_ALPHA = 0.5


def smoothing_pairs(model: GPT) -> dict[str, list[str]]:
    """{LayerNorm: [the Linear it feeds]}: each block's ln1 -> attn.qkv and ln2 -> mlp.fc."""
    return {f"blocks.{i}.{ln}": [f"blocks.{i}.{lin}"] for i in range(len(model.blocks))
            for ln, lin in (("ln1", "attn.qkv"), ("ln2", "mlp.fc"))}


def lm_w8a8(name: str, lm: nn.Module, data: TextSplits, *, smooth: bool,
            alpha: float = SMOOTH_ALPHA) -> Variant:
    """Int8 weights per channel and int8 activations with one static scale per tensor
    (calibrated max |x|, SmoothQuant's O3 setting), after smoothing if ``smooth``. The
    ``lm_head`` stays float (as in the papers)."""
    calibration = lm_calibration(data)
    model = copy.deepcopy(lm).eval()
    if smooth:
        smooth_model(model, smoothing_pairs(model), calibration, alpha)
    qmodel = quantize_linears_w8a8(model, "static", batches=calibration)
    layers = [n for n, m in qmodel.named_modules() if isinstance(m, W8A8Linear)]
    modules = dict(qmodel.named_modules())
    packed = sum(packed_bytes(modules[n].out_features, modules[n].in_features, 8, None,
                              symmetric=True) for n in layers)
    size = lm_packed_size(qmodel, {"layers": [{"name": n} for n in layers],
                                   "packed_bytes": packed})
    return Variant(name, "W8A8 quantization", qmodel, size, count_parameters(lm),
                   count_nonzeros(lm), dict(activations="int8 per-tensor static",
                                            weights="int8 per-channel", smooth=smooth,
                                            alpha=alpha if smooth else None,
                                            quantized_layers=len(layers), simulated=True))


def lm_w8a8_naive(lm: nn.Module, data: TextSplits) -> Variant:
    return lm_w8a8("lm-w8a8-naive", lm, data, smooth=False)


def lm_w8a8_smooth(lm: nn.Module, data: TextSplits) -> Variant:
    return lm_w8a8("lm-w8a8-smooth", lm, data, smooth=True)


class QuantizedKVCache(KVCache):
    """A KV cache that gives back keys and values after a ``bits``-bit round trip.

    Keys and values are quantized per token and head (one asymmetric scale and offset per
    head_dim values of one token): causal, so a token's cached values never depend on
    later tokens. Stored here in float (fake quantization); :meth:`nbytes` is therefore the
    float size, and :func:`qlib.quant.kvcache.kv_cache_bytes` gives the packed one.
    """

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits

    def load(self, layer: int) -> tuple[Tensor, Tensor]:
        k, v = super().load(layer)
        return fake_quantize_kv(k, v, self.bits, "per-token", "per-token")


class KVQuantGPT(nn.Module):
    """The GPT with a fresh :class:`QuantizedKVCache` on every call: ``forward(idx)`` runs
    the window through the quantized cache, so attention sees only round-tripped K and V."""

    def __init__(self, model: GPT, bits: int) -> None:
        super().__init__()
        self.model, self.bits, self.config = model, bits, model.config

    def forward(self, idx: Tensor, cache: KVCache | None = None) -> Tensor:
        return self.model(idx, cache if cache is not None else QuantizedKVCache(self.bits))


def lm_kv(name: str, lm: GPT, data: TextSplits, bits: int) -> Variant:
    """The LM with its KV cache in ``bits`` bits (per token and head)."""
    cfg = lm.config
    head_dim = cfg.d_model // cfg.n_head
    model = KVQuantGPT(copy.deepcopy(lm).eval(), bits).eval()
    cache = {f"kv_bytes_fp16_ctx{t}": kv_cache_bytes(cfg.n_layer, cfg.n_head, head_dim, t)
             for t in (cfg.block_size, 4096)}
    cache |= {f"kv_bytes_int{bits}_ctx{t}": kv_cache_bytes(
        cfg.n_layer, cfg.n_head, head_dim, t, bits=bits, group_size=head_dim)
        for t in (cfg.block_size, 4096)}
    return Variant(name, "KV-cache quantization", model,
                   lm_packed_size(lm, {"layers": [], "packed_bytes": 0}), count_parameters(lm),
                   count_nonzeros(lm), dict(bits=bits, granularity="per token and head",
                                            simulated=True, **cache))


def lm_kv8(lm: GPT, data: TextSplits) -> Variant:
    return lm_kv("lm-kv8", lm, data, 8)


def lm_kv4(lm: GPT, data: TextSplits) -> Variant:
    return lm_kv("lm-kv4", lm, data, 4)


def lm_pruned(name: str, lm: nn.Module, data: TextSplits, method: str, *,
              sparsity: float | None = None, nm: tuple[int, int] | None = None) -> Variant:
    """Prune every Linear but the head (one-shot, no retraining) with ``method``."""
    model = copy.deepcopy(lm).eval()
    batches = None if method == "magnitude" else lm_calibration(data)
    report = prune_linear_layers(model, method, sparsity=sparsity, nm=nm, batches=batches)
    errors = [r["rel_error"] for r in report.values() if r.get("rel_error") is not None]
    return Variant(name, "LLM pruning", model, sparse_size_bytes(model),
                   count_parameters(model), count_nonzeros(model),
                   dict(method=method, sparsity=sparsity, nm=list(nm) if nm else None,
                        pruned_layers=len(report),
                        mean_layer_rel_error=sum(errors) / len(errors) if errors else None))


def lm_magnitude_50(lm: nn.Module, data: TextSplits) -> Variant:
    return lm_pruned("lm-magnitude-50", lm, data, "magnitude", sparsity=0.5)


def lm_wanda_50(lm: nn.Module, data: TextSplits) -> Variant:
    return lm_pruned("lm-wanda-50", lm, data, "wanda", sparsity=0.5)


def lm_sparsegpt_50(lm: nn.Module, data: TextSplits) -> Variant:
    return lm_pruned("lm-sparsegpt-50", lm, data, "sparsegpt", sparsity=0.5)


def lm_wanda_2of4(lm: nn.Module, data: TextSplits) -> Variant:
    return lm_pruned("lm-wanda-2of4", lm, data, "wanda", nm=(2, 4))


def lm_student(name: str, lm: GPT, data: TextSplits, mode: str) -> Variant:
    """:data:`~qlib.distill_lm.LM_STUDENT` trained with ``mode`` ("scratch" or "kd", the
    course LM as teacher) for each of :data:`STUDENT_SEEDS`; the variant's model is seed 0's,
    its ``extra["seeds"]`` every seed's test perplexity, accuracy and agreement with ``lm``."""
    seeds, first = [], None
    for seed in STUDENT_SEEDS:
        student = get_lm_student(mode, data, lm if mode == "kd" else None, seed=seed)
        r = evaluate_lm(student, data, "test", reference=lm)
        seeds.append(dict(seed=seed, perplexity=r["perplexity"], nll=r["nll"],
                          accuracy=r["accuracy"], agreement=r["agreement"]))
        first = first or student
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    ppl = [s["perplexity"] for s in seeds]
    return Variant(name, "LLM distillation", first.eval(), buffer.getbuffer().nbytes,
                   count_parameters(first), count_nonzeros(first),
                   dict(mode=mode, seeds=seeds, perplexity_mean=statistics.fmean(ppl),
                        perplexity_std=statistics.stdev(ppl), n_seeds=len(seeds),
                        **{k: v for k, v in LM_STUDENT.items()
                           if mode == "kd" or k not in ("temperature", "alpha")}))


def lm_scratch_student(lm: GPT, data: TextSplits) -> Variant:
    return lm_student("lm-scratch-student", lm, data, "scratch")


def lm_kd_student(lm: GPT, data: TextSplits) -> Variant:
    return lm_student("lm-kd-student", lm, data, "kd")
