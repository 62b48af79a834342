"""Every recipe, by name, in one explicit list: what ``python -m qlib list`` prints.

Registration happens here and nowhere else, so the registry holds the same names whatever
was imported before it, and importing a technique never registers anything.
"""

from __future__ import annotations

from . import arch, distill, lm, lm_compress, pipeline, prune, quant, runtime
from .registry import Recipe

__all__ = ["RECIPES", "load_recipes", "get_recipe", "index_recipes"]

_ALL = [
    # quantization (notebooks 02-04)
    Recipe("ptq-w8a8", "quantization", "PTQ: 8-bit per-channel weights, 8-bit activations "
           "(min-max, 256 calibration images), BN folded", quant.ptq_w8a8),
    Recipe("ptq-w8a8-per-tensor", "quantization", "PTQ: 8-bit per-tensor weights, 8-bit "
           "activations", quant.ptq_w8a8_per_tensor),
    Recipe("ptq-w4", "quantization", "PTQ: 4-bit per-channel weights (MSE-clipped), float "
           "activations", quant.ptq_w4),
    Recipe("ptq-w4a8", "quantization", "PTQ: 4-bit per-channel weights (MSE-clipped), 8-bit "
           "activations (percentile)", quant.ptq_w4a8),
    Recipe("kmeans-w4", "quantization", "k-means weight sharing: 16-entry codebook per layer, "
           "4-bit indices, BN folded", quant.kmeans_w4),
    Recipe("ptq-mixed", "quantization", "PTQ mixed precision: per-layer weight bits from "
           "validation sensitivity under a 2.5-bit average budget, float activations",
           quant.ptq_mixed),
    Recipe("int8-integer", "quantization", "Integer-only inference (qlib): PTQ w8a8 "
           "per-channel, int8 x uint8 products, int32 accumulators, fixed-point "
           "requantization", quant.int8_integer),
    Recipe("qat-w4a4", "quantization", "QAT (LSQ): 4-bit per-channel weights, 4-bit "
           "activations, learned scales, BN folded, 4 epochs from the baseline", quant.qat_w4a4),
    Recipe("qat-w2a8", "quantization", "QAT (LSQ): 2-bit per-channel weights, 8-bit "
           "activations, learned scales, BN folded, 4 epochs from the baseline", quant.qat_w2a8),
    Recipe("int8-ort", "quantization", "ONNX Runtime static int8 (QDQ, u8 activations, s8 "
           "per-channel weights)", runtime.int8_ort),
    # pruning (notebook 05)
    Recipe("prune-90", "pruning", "90% global magnitude pruning, fine-tuned, stored sparse "
           "(bitmask+fp32)", prune.prune_90),
    Recipe("channel-50", "pruning", "half the conv channels removed by L1 norm, fine-tuned "
           "(dense, smaller)", prune.channel_50),
    # distillation (notebook 06)
    Recipe("teacher", "distillation", "the teacher of kd-student: the fp32 course baseline",
           distill.teacher_recipe),
    Recipe("scratch-student", "distillation", "narrow student (7.7k params) trained on 10 "
           "labels per class alone; mean of 3 seeds", distill.scratch_student_recipe),
    Recipe("kd-student", "distillation", "the same student, same steps, distilled from the "
           "baseline on every training image (10 labels per class, the rest labelled only by "
           "the teacher); mean of 3 seeds", distill.kd_student_recipe),
    # the whole pipeline (notebook 08)
    Recipe("deep-compression", "pipeline", "Deep Compression: 92% pruning + k-means sharing "
           "(bits per layer) + Huffman", pipeline.deep_compression),
    # efficient architectures (notebook 11)
    Recipe("lowrank-fc1", "low rank", "fc1 (800x128) factored by truncated SVD to rank 16 "
           "(two Linear layers), fine-tuned 2 epochs", arch.lowrank_fc1),
    Recipe("mobile-fp32", "architecture", "different architecture: MobileNet-style "
           "depthwise-separable CNN trained from scratch (not derived from the baseline)",
           arch.mobile_fp32),
    Recipe("mobile-w8-per-tensor", "architecture", "mobile-fp32, BN folded, 8-bit weights "
           "with one scale per tensor, float activations", arch.mobile_w8_per_tensor),
    Recipe("mobile-w8-per-channel", "architecture", "mobile-fp32, BN folded, 8-bit weights "
           "with one scale per output channel, float activations", arch.mobile_w8_per_channel),
    # the course language model, weight-only (notebook 09)
    Recipe("lm-w8-rtn", "weight-only", "LM: 8-bit per-channel weights, round to nearest",
           lm.lm_w8_rtn, "lm"),
    Recipe("lm-w4g128-rtn", "weight-only", "LM: 4-bit weights, groups of 128, round to "
           "nearest", lm.lm_w4g128_rtn, "lm"),
    Recipe("lm-w4g128-gptq", "weight-only", "LM: 4-bit weights, groups of 128, GPTQ (128 "
           "calibration windows)", lm.lm_w4g128_gptq, "lm"),
    Recipe("lm-w4g128-awq", "weight-only", "LM: 4-bit weights, groups of 128, AWQ scale "
           "search (128 calibration windows)", lm.lm_w4g128_awq, "lm"),
    Recipe("lm-w3g128-rtn", "weight-only", "LM: 3-bit weights, groups of 128, round to "
           "nearest", lm.lm_w3g128_rtn, "lm"),
    Recipe("lm-w3g128-gptq", "weight-only", "LM: 3-bit weights, groups of 128, GPTQ",
           lm.lm_w3g128_gptq, "lm"),
    Recipe("lm-nf4g64", "weight-only", "LM: NF4 (QLoRA's normal-float codebook), absmax "
           "blocks of 64", lm.lm_nf4g64, "lm"),
    # the course language model: activations, KV cache, pruning (notebook 10)
    Recipe("lm-w8a8-naive", "W8A8", "LM: int8 per-channel weights, int8 activations with one "
           "static scale per tensor", lm_compress.lm_w8a8_naive, "lm"),
    Recipe("lm-w8a8-smooth", "W8A8", "LM: the same after SmoothQuant (alpha 0.5) on each "
           "LayerNorm -> Linear pair", lm_compress.lm_w8a8_smooth, "lm"),
    Recipe("lm-kv8", "KV cache", "LM: keys and values cached in int8 (per token and head)",
           lm_compress.lm_kv8, "lm"),
    Recipe("lm-kv4", "KV cache", "LM: keys and values cached in int4 (per token and head)",
           lm_compress.lm_kv4, "lm"),
    Recipe("lm-magnitude-50", "LLM pruning", "LM: 50% of each row's weights by magnitude, "
           "no retraining", lm_compress.lm_magnitude_50, "lm"),
    Recipe("lm-wanda-50", "LLM pruning", "LM: 50% by Wanda (|W| x input norm per row)",
           lm_compress.lm_wanda_50, "lm"),
    Recipe("lm-sparsegpt-50", "LLM pruning", "LM: 50% by SparseGPT (OBS reconstruction with "
           "the calibration Hessian)", lm_compress.lm_sparsegpt_50, "lm"),
    Recipe("lm-wanda-2of4", "LLM pruning", "LM: 2:4 semi-structured sparsity by Wanda",
           lm_compress.lm_wanda_2of4, "lm"),
    Recipe("lm-scratch-student", "LLM distillation", "LM student (half width, 2 blocks) "
           "trained on the text alone; mean of 3 seeds", lm_compress.lm_scratch_student, "lm"),
    Recipe("lm-kd-student", "LLM distillation", "the same student, same budget, distilled "
           "from the course LM (T 2, alpha 0.5); mean of 3 seeds", lm_compress.lm_kd_student,
           "lm"),
]


def index_recipes(recipes: list[Recipe]) -> dict[str, Recipe]:
    out: dict[str, Recipe] = {}
    for r in recipes:
        if r.name in out:
            raise ValueError(f"recipe name {r.name!r} is listed twice")
        out[r.name] = r
    return out


#: All recipes by name, in the order of the list above.
RECIPES: dict[str, Recipe] = index_recipes(_ALL)


def load_recipes(task: str | None = None) -> dict[str, Recipe]:
    """The registry (all recipes, or those of one ``task``: "vision" or "lm")."""
    if task is None:
        return dict(RECIPES)
    tasks = sorted({r.task for r in RECIPES.values()})
    if task not in tasks:
        raise ValueError(f"unknown task {task!r}; tasks: {tasks}")
    return {n: r for n, r in RECIPES.items() if r.task == task}


def get_recipe(name: str) -> Recipe:
    """One recipe by name; ValueError listing the names when there is no such recipe."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; registered: {sorted(RECIPES)}")
    return RECIPES[name]
