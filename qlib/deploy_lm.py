"""The "lm" deploy suite: weight-only int4 / int8 (MatMulNBits) against fp32 on LLM layers.

Introduced in notebook 09. One linear layer ``y = x @ W^T`` of a 7B-class language model
(W (N, K) = 4096 x 4096, an attention projection, and 11008 x 4096, an MLP projection;
random weights: speed does not depend on their values) runs as

    torch  fp32  torch.nn.functional.linear (what nn.Linear calls)
    ort    fp32  ONNX Runtime MatMul
    ort    int4  MatMulNBits, block 128, accuracy_level 0 (fp32 math) and 4 (int8 A)
    ort    int8  MatMulNBits, 8-bit weights, same accuracy levels

at batch 1 (one decode step) up to 64 (prefill / batched serving). Each row has median and
p90 ms, ``size_bytes`` (the ONNX model; torch: the fp32 tensor), ``weight_gbs`` = bytes /
median (compare with ``qlib.measure.roofline.memory_bandwidth``), ``rel_error``
= ||y - y_fp32|| / ||y_fp32|| and ``speedup_vs_fp32`` = (fastest fp32 median of the same
shape and batch) / (this median).

Timing: all candidates of one (shape, batch) are timed interleaved, one call each per
round, order rotated each round, so a burst of load elsewhere hits all alike; before each
timed call a 64 MiB buffer is read, so the weights come from memory as in a real decoder
(every layer's weights are read once per token and do not stay in cache). Threads are
pinned (1 by default). Each candidate gets ``repeats`` timed runs, fewer (at least 1)
where they would take more than ``budget_s`` seconds: 8-bit weights at accuracy level 0
have no fast CPU kernel in ORT 1.32 (measured 20-40x slower than fp32; 8-bit at level 4
is fast). Medians come from one run on
a shared machine: read the ratios, not the milliseconds.

End to end, :func:`generation_rows` times the course LM generating text (torch fp32, KV
cache) in tokens per second; ``python -m qlib deploy --suite lm`` appends its rows.

>>> rows = lm_suite(((64, 128),), (1,), repeats=2, bits=(4,), block_size=32, progress=False)
>>> sorted(r["precision"] for r in rows), rows[0]["speedup_vs_fp32"] > 0
(['fp32', 'fp32', 'int4', 'int4'], True)
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .gpt import GPT, generate
from .measure.roofline import pinned_threads
from .runtime.nbits import (matmul_fp32_model, matmul_nbits_model, ort_session,
                            quantize_blockwise)

__all__ = ["lm_suite", "lm_summary", "generation_rows", "LM_SHAPES", "LM_BATCHES", "LM_COLUMNS"]

#: (N out, K in): Llama-7B's q/k/v/o projection and its MLP up/gate projection.
LM_SHAPES: tuple[tuple[int, int], ...] = ((4096, 4096), (11008, 4096))
LM_BATCHES: tuple[int, ...] = (1, 4, 16, 64)
LM_COLUMNS = ("model", "runtime", "precision", "accuracy_level", "batch", "median_ms",
              "p90_ms", "speedup_vs_fp32", "size_bytes", "weight_gbs", "rel_error")
_FLUSH_BYTES = 64 * 2 ** 20
_MATH = {0: "fp32 math", 1: "fp32 math", 2: "fp16 math", 3: "bf16 math", 4: "int8 activations"}


def _check_ints(values: object, name: str, low: int) -> tuple[int, ...]:
    vals = tuple(values) if isinstance(values, (list, tuple)) else (values,)
    if not vals or any(isinstance(v, bool) or not isinstance(v, int) or v < low
                       for v in vals):
        raise ValueError(f"{name} must be a non-empty sequence of ints >= {low}, got "
                         f"{values!r}")
    return vals


def _candidates(n: int, k: int, *, threads: int, bits: Sequence[int],
                accuracy_levels: Sequence[int], block_size: int, seed: int) -> dict:
    """{key: dict(runtime, precision, accuracy_level, size_bytes, fn(x_torch, x_numpy))}."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) / math.sqrt(k)
    out = {"torch fp32": dict(runtime="torch", precision="fp32", accuracy_level=None,
                              size_bytes=w.numel() * 4,
                              fn=lambda x, a: torch.nn.functional.linear(x, w))}
    models = {"ort fp32": ("fp32", None, matmul_fp32_model(w))}
    for b in bits:
        q = quantize_blockwise(w, bits=b, block_size=block_size)
        for level in accuracy_levels:
            models[f"ort int{b} acc{level}"] = (f"int{b}", level, matmul_nbits_model(
                q, accuracy_level=level))
        del q
    for key, (precision, level, model) in models.items():
        sess = ort_session(model, threads=threads)
        out[key] = dict(runtime="ort", precision=precision, accuracy_level=level,
                        size_bytes=model.ByteSize(),
                        fn=lambda x, a, s=sess: s.run(None, {"A": a})[0])
    out["_weight"] = w
    return out


def _interleaved(fns: dict[str, Callable[[], object]], counts: dict[str, int],
                 flush: Callable[[], object]) -> dict[str, list[float]]:
    """Round-robin timing: round r visits every name still short of ``counts`` (order
    rotated by r), calling ``flush`` untimed before each timed call. Seconds per call."""
    names = list(fns)
    runs: dict[str, list[float]] = {name: [] for name in names}
    enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(max(counts.values())):
            for name in names[r % len(names):] + names[:r % len(names)]:
                if len(runs[name]) < counts[name]:
                    flush()
                    start = time.perf_counter()
                    fns[name]()
                    runs[name].append(time.perf_counter() - start)
    finally:
        if enabled:
            gc.enable()
    return runs


def lm_suite(shapes: Sequence[tuple[int, int]] = LM_SHAPES,
             batches: Sequence[int] = LM_BATCHES, *, threads: int = 1, repeats: int = 7,
             accuracy_levels: Sequence[int] = (0, 4), bits: Sequence[int] = (4, 8),
             block_size: int = 128, budget_s: float = 1.0, flush: bool = True,
             seed: int = 0, progress: bool = True) -> list[dict]:
    """Time fp32 and MatMulNBits linear layers; one row per (shape, batch, candidate).

    Introduced in notebook 09 (``python -m qlib deploy --suite lm``). See the module
    docstring for the candidates, the columns (:data:`LM_COLUMNS` plus ``shape``,
    ``scheme``, ``block_size``, ``runs``) and the timing protocol. The default run takes
    under a minute on 2 cores; :func:`lm_summary` puts the result in sentences.

    >>> rows = lm_suite(((64, 128),), (1,), repeats=2, bits=(4,), block_size=32,
    ...                 progress=False)
    >>> sorted({(r["runtime"], r["precision"], r["accuracy_level"]) for r in rows},
    ...        key=str)
    [('ort', 'fp32', None), ('ort', 'int4', 0), ('ort', 'int4', 4), ('torch', 'fp32', None)]
    """
    for shape in shapes:
        _check_ints(tuple(shape), "each shape (N, K)", 1)
        if len(shape) != 2:
            raise ValueError(f"each shape must be (N out, K in), got {shape!r}")
    batches = _check_ints(tuple(batches), "batches", 1)
    _check_ints(threads, "threads", 1)
    _check_ints(repeats, "repeats", 1)
    if not budget_s > 0:
        raise ValueError(f"budget_s must be > 0 seconds, got {budget_s!r}")
    buf = torch.ones(_FLUSH_BYTES // 4)
    do_flush = (lambda: buf.sum()) if flush else (lambda: None)
    rows: list[dict] = []
    bar = tqdm(total=len(shapes) * (1 + len(batches)), disable=not progress, desc="lm suite")
    try:
        for n, k in shapes:
            bar.set_postfix_str(f"quantize {n}x{k}")
            cands = _candidates(n, k, threads=threads, bits=bits,
                                accuracy_levels=accuracy_levels, block_size=block_size,
                                seed=seed)
            w = cands.pop("_weight")
            bar.update(1)
            for batch in batches:
                bar.set_postfix_str(f"{n}x{k} batch {batch}")
                rows += _measure(n, k, batch, cands, w, repeats, budget_s, threads,
                                 block_size, do_flush, seed)
                bar.update(1)
            del cands, w
    finally:
        bar.close()
    return rows


def _measure(n: int, k: int, batch: int, cands: dict, w: torch.Tensor, repeats: int,
             budget_s: float, threads: int, block_size: int, flush: Callable[[], object],
             seed: int) -> list[dict]:
    x = torch.randn(batch, k, generator=torch.Generator().manual_seed(seed + batch))
    a = x.numpy()
    fns = {key: (lambda f=c["fn"]: f(x, a)) for key, c in cands.items()}
    with pinned_threads(threads), torch.no_grad():
        ref = torch.nn.functional.linear(x, w)
        first = {}
        for key, fn in fns.items():  # warm-up; its time sets the number of runs
            start = time.perf_counter()
            y = torch.as_tensor(fn())
            first[key] = (time.perf_counter() - start, float((y - ref).norm() / ref.norm()))
        counts = {key: min(repeats, max(1, int(budget_s / first[key][0]))) for key in fns}
        runs = _interleaved(fns, counts, flush)
    med = {key: float(np.median(v)) for key, v in runs.items()}
    best = min(med[key] for key, c in cands.items() if c["precision"] == "fp32")
    rows = []
    for key, c in cands.items():
        quant = c["precision"] != "fp32"
        rows.append(dict(
            model=f"linear {n}x{k}", shape=[n, k], runtime=c["runtime"],
            precision=c["precision"], accuracy_level=c["accuracy_level"],
            scheme=f"MatMulNBits block {block_size}, {_MATH[c['accuracy_level']]}"
            if quant else None, block_size=block_size if quant else None, batch=batch,
            median_ms=round(med[key] * 1e3, 4),
            p90_ms=round(float(np.percentile(runs[key], 90)) * 1e3, 4),
            runs=len(runs[key]), speedup_vs_fp32=round(best / med[key], 3),
            size_bytes=int(c["size_bytes"]),
            weight_gbs=round(c["size_bytes"] / med[key] / 1e9, 2),
            rel_error=float(f"{first[key][1]:.3g}")))
    return rows


def lm_summary(rows: list[dict]) -> list[str]:
    """Per shape: the smallest batch's speed-up of each int4 row over the fastest fp32, and
    the batches at which the best int4 row beats the fastest fp32.

    >>> lm_summary([dict(model="m", precision="fp32", runtime="ort", accuracy_level=None,
    ...                  batch=1, median_ms=4.0),
    ...             dict(model="m", precision="int4", runtime="ort", accuracy_level=4,
    ...                  batch=1, median_ms=1.0)])
    ... # doctest: +NORMALIZE_WHITESPACE
    ['m batch 1: fastest fp32 (ort) 4 ms; int4 acc4 1 ms = 4.00x;
      int4 faster than fp32 at batch 1']
    """
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        if "tokens_per_s" in mine[0]:          # a generation_rows model: speed, no int4 rows
            lines.append(f"{model} generating, {mine[0]['runtime']} {mine[0]['precision']}: " +
                         ", ".join(f"batch {r['batch']} {r['tokens_per_s']:g} tokens/s "
                                   f"({r['median_ms']:.3g} ms per step)" for r in mine))
            continue
        wins, parts = [], []
        for batch in sorted({r["batch"] for r in mine}):
            at = [r for r in mine if r["batch"] == batch]
            fp = min((r for r in at if r["precision"] == "fp32"), key=lambda r: r["median_ms"])
            q4 = [r for r in at if r["precision"] == "int4"]
            if q4 and min(r["median_ms"] for r in q4) < fp["median_ms"]:
                wins.append(batch)
            if batch == min(r["batch"] for r in mine):
                parts = [f"{model} batch {batch}: fastest fp32 ({fp['runtime']}) "
                         f"{fp['median_ms']:.3g} ms"] + [
                    f"int4 acc{r['accuracy_level']} {r['median_ms']:.3g} ms = "
                    f"{fp['median_ms'] / r['median_ms']:.2f}x" for r in q4]
        ahead = (f"int4 faster than fp32 at batch {', '.join(map(str, wins))}" if wins
                 else "int4 never faster than fp32")
        lines.append("; ".join(parts + [ahead]))
    return lines


def generation_rows(model: GPT, *, batches: Sequence[int] = (1, 8), new_tokens: int = 48,
                    repeats: int = 5, threads: int = 1, seed: int = 0) -> list[dict]:
    """End-to-end generation speed of a GPT (the course LM): one row per batch size.

    Greedy decoding of ``new_tokens`` tokens after a one-token prompt, through the KV cache
    (:func:`qlib.gpt.generate`), ``repeats`` times after one warm-up, threads pinned.
    ``median_ms`` / ``p90_ms`` are per generated token (one decode step for the whole batch);
    ``tokens_per_s`` = batch * 1000 / median_ms; ``size_bytes`` the fp32 weights;
    ``weight_gbs`` the weight bytes read per second if every step reads them once.
    fp32 in torch only: the course LM's int4 gain is shown by its roofline (notebook 09), not
    measured here. Used by ``python -m qlib deploy --suite lm`` (notebook 09 runs
    :func:`lm_suite` and shows the report's LM rows; it does not call this itself).

    >>> from qlib.gpt import GPTConfig
    >>> tiny = GPT(GPTConfig(vocab_size=10, block_size=16, n_layer=1, n_head=2, d_model=8))
    >>> [r["batch"] for r in generation_rows(tiny, batches=(1, 2), new_tokens=4, repeats=2)]
    [1, 2]
    """
    batches = _check_ints(tuple(batches), "batches", 1)
    for value, name in ((new_tokens, "new_tokens"), (repeats, "repeats"), (threads, "threads")):
        _check_ints(value, name, 1)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    rows = []
    with pinned_threads(threads):
        for batch in batches:
            prompt = torch.zeros(batch, 1, dtype=torch.long)
            run = lambda: generate(model, prompt, new_tokens, temperature=0.0, seed=seed)  # noqa: E731
            run()                                                       # warm-up
            per_token = []
            for _ in range(repeats):
                start = time.perf_counter()
                run()
                per_token.append((time.perf_counter() - start) / new_tokens * 1e3)
            med = float(np.median(per_token))
            rows.append(dict(model=f"course LM ({model.num_params() / 1e6:.1f}M)", runtime="torch",
                             precision="fp32", accuracy_level=None, batch=batch,
                             median_ms=round(med, 4),
                             p90_ms=round(float(np.percentile(per_token, 90)), 4),
                             speedup_vs_fp32=1.0, size_bytes=size,
                             weight_gbs=round(size / med / 1e6, 2), rel_error=0.0,
                             tokens_per_s=round(batch * 1e3 / med, 1), new_tokens=new_tokens))
    return rows
