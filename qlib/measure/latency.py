"""Latency and throughput, measured properly.

Introduced in notebook 00, used by every later notebook and by the report:

    latency      how long one call takes: warm-up, then ``repeats`` timed calls with
                 ``time.perf_counter``; report median, p90 and min (means hide outliers)
    interleaved  several candidates timed round-robin, so machine noise hits all alike
    paired       one model against its reference in A-B-A rounds: per-round speed ratios and
                 the reference-against-itself ratios that size the noise (the report)
    throughput   items per second = batch / median seconds
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._util import Inputs, as_args, check_int, inference

__all__ = ["measure_latency", "interleaved_latency", "paired_latency", "throughput"]


def measure_latency(fn_or_model: nn.Module | Callable[..., Any], example_input: Inputs, *,
                    warmup: int = 10, repeats: int = 50, threads: int | None = None,
                    clock: Callable[[], float] = time.perf_counter) -> dict:
    """Time ``fn_or_model(*inputs)``: ``warmup`` untimed calls, then ``repeats`` timed ones.

    Introduced in notebook 00. Each run is ``(perf_counter() after - before) * 1000`` ms;
    returns ``{"median_ms", "p90_ms", "min_ms", "runs"}`` (``runs``: list of ``repeats``
    floats; p90 by linear interpolation, as ``np.percentile``). Calls run under
    ``torch.no_grad`` with a module in eval mode (its mode is restored afterwards) and the
    garbage collector paused. ``threads`` pins ``torch.set_num_threads`` for the
    measurement and the previous count is always restored; it does not change the
    threads of another runtime (give an ONNX Runtime session its own ``intra_op_num_threads``).
    ``example_input``: a tensor/array, or a tuple/list passed as positional arguments.
    ``clock`` (seconds, default ``time.perf_counter``) is swappable so that tests can use a
    deterministic fake clock.
    Why not one bare ``time.time()`` loop: the first calls pay one-off costs (allocation,
    kernel selection) and single runs are noisy, so warm up and report robust statistics.

    >>> measure_latency(lambda x: x + 1, torch.zeros(3), warmup=0, repeats=3)["runs"].__len__()
    3
    """
    if not callable(fn_or_model):
        raise TypeError(f"fn_or_model must be an nn.Module or a callable, got "
                        f"{type(fn_or_model).__name__}")
    check_int(warmup, "warmup", 0)
    check_int(repeats, "repeats", 1)
    if threads is not None:
        check_int(threads, "threads", 1)
    args = as_args(example_input)
    cuda = any(isinstance(a, Tensor) and a.is_cuda for a in args)
    sync = torch.cuda.synchronize if cuda else (lambda: None)  # GPU calls are asynchronous
    runs: list[float] = []
    gc_was_enabled = gc.isenabled()
    with inference(fn_or_model, threads):
        try:
            gc.disable()  # a collection in the middle of a run is noise, not model time
            for _ in range(warmup):
                fn_or_model(*args)
            sync()
            for _ in range(repeats):
                start = clock()
                fn_or_model(*args)
                sync()
                runs.append((clock() - start) * 1000.0)
        finally:
            if gc_was_enabled:
                gc.enable()
    a = np.asarray(runs)
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)),
            "min_ms": float(a.min()), "runs": runs}


def interleaved_latency(fns: dict[str, Callable[..., Any]], example_input: Inputs, *,
                        rounds: int = 5, seconds: float = 10.0, threads: int | None = 1,
                        warmup: int = 1, progress: Callable[[], None] | None = None
                        ) -> dict[str, dict]:
    """Time several models round-robin on one input: per name, :func:`measure_latency`'s dict
    over all pooled runs.

    Introduced in notebook 03 (used again in 07). One timed call each estimates ``t``; then
    each of ``rounds`` rounds visits every model (starting one later each round) for
    ``k = clamp(seconds / (rounds * len(fns)) / t, 1, 50)`` timed calls. A slow spell on
    the machine thus lands on every model alike, so *ratios* hold on a noisy machine.

    >>> r = interleaved_latency({"a": torch.relu, "b": torch.sigmoid}, torch.zeros(9), seconds=0.1)
    >>> sorted(r), len(r["a"]["runs"]) >= 5
    (['a', 'b'], True)
    """
    check_int(rounds, "rounds", 1)
    if seconds <= 0 or not fns:
        raise ValueError(f"need seconds > 0 and at least one model, got seconds={seconds}, "
                         f"{len(fns)} models")
    names = list(fns)
    per_call = {n: measure_latency(fns[n], example_input, warmup=warmup, repeats=1,
                                   threads=threads)["min_ms"] / 1000 for n in names}
    slot = seconds / (rounds * len(names))
    calls = {n: int(min(50, max(1, slot // max(per_call[n], 1e-6)))) for n in names}
    runs: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            fast = per_call[n] < 0.05  # re-warm caches after a switch when that is cheap
            runs[n] += measure_latency(fns[n], example_input, warmup=int(fast),
                                       repeats=calls[n], threads=threads)["runs"]
            if progress:
                progress()  # one tick per (round, model), e.g. a tqdm bar's update
    return {n: {"median_ms": float(np.median(v)), "p90_ms": float(np.percentile(v, 90)),
                "min_ms": float(min(v)), "runs": v} for n, v in runs.items()}


def paired_latency(fn: nn.Module | Callable[..., Any], reference: nn.Module | Callable[..., Any],
                   example_input: Inputs, *, rounds: int = 7, repeats: int = 20,
                   warmup: int = 3, threads: int | None = 1,
                   clock: Callable[[], float] = time.perf_counter) -> dict:
    """Time ``fn`` against ``reference`` in ``rounds`` A-B-A rounds: per-round ratios.

    Introduced in notebook 08 (the report's speed verdicts). Round r times the reference
    (a_r), then ``fn`` (b_r), then the reference again (a'_r), each the *fastest* of
    ``repeats`` calls after ``warmup`` (the call least disturbed by other processes, as
    ``timeit`` advises for comparisons; a median is hit when a busy machine preempts half a
    slot); averaging a_r and a'_r cancels a drift that is linear within the round.
    Returns, as lists over rounds,

        speedup_r = ((a_r + a'_r) / 2) / b_r     (> 1: fn is faster than its reference)
        self_r    = a_r / a'_r                    (the reference against itself: noise)

    plus ``median_ms`` and ``reference_median_ms`` (the medians of all of ``fn``'s and all
    of the reference's timed calls), ``runs`` (all of ``fn``'s calls, ms) and the per-round
    ``fn_ms`` / ``reference_ms`` (each slot's fastest call).
    :func:`qlib.measure.stats.speed_verdict` reads them. Passing the same model twice gives speedups that scatter around 1 by the noise.

    >>> r = paired_latency(torch.relu, torch.relu, torch.zeros(9), rounds=3, repeats=2)
    >>> len(r["speedup"]), len(r["self"])
    (3, 3)
    """
    check_int(rounds, "rounds", 1)
    check_int(repeats, "repeats", 1)
    fn_ms, ref_ms, speedup, self_ratio = [], [], [], []
    fn_runs: list[float] = []
    ref_runs: list[float] = []
    kw = dict(warmup=warmup, repeats=repeats, threads=threads, clock=clock)
    for _ in range(rounds):
        slots = [measure_latency(m, example_input, **kw) for m in (reference, fn, reference)]
        a, b, a2 = (slot["min_ms"] for slot in slots)
        fn_runs += slots[1]["runs"]
        ref_runs += slots[0]["runs"] + slots[2]["runs"]
        fn_ms.append(b)
        ref_ms += [a, a2]
        speedup.append((a + a2) / 2 / max(b, 1e-12))
        self_ratio.append(a / max(a2, 1e-12))
    return {"speedup": speedup, "self": self_ratio, "fn_ms": fn_ms, "reference_ms": ref_ms,
            "runs": fn_runs, "median_ms": float(np.median(fn_runs)),
            "reference_median_ms": float(np.median(ref_runs))}


def throughput(fn_or_model: nn.Module | Callable[..., Any], example_input: Inputs,
               **kwargs: Any) -> float:
    """Images per second: ``batch / (median_ms / 1000)``, batch = first dim of the first input.

    Introduced in notebook 07. Keyword arguments are those of :func:`measure_latency`.
    Larger batches usually raise throughput while each call takes longer (latency).

    >>> throughput(torch.nn.Identity(), torch.zeros(8, 3), repeats=3) > 0
    True
    """
    first = as_args(example_input)[0]
    if getattr(first, "ndim", 0) < 1 or first.shape[0] < 1:
        raise ValueError("throughput needs a batched first input (dim 0 = batch size >= 1), "
                         f"got shape {tuple(getattr(first, 'shape', ()))}")
    median_ms = measure_latency(fn_or_model, example_input, **kwargs)["median_ms"]
    return first.shape[0] / max(median_ms / 1000.0, 1e-12)
