"""The roofline: is a layer limited by memory bandwidth or by arithmetic?

Introduced in notebook 09. A kernel that does F floating-point operations while moving B
bytes has arithmetic intensity I = F / B (FLOP/byte). On a machine that streams
``bandwidth`` GB/s from memory and computes ``peak`` GFLOP/s, it can reach at most

    attainable(I) = min(peak, I * bandwidth)            GFLOP/s

The two roofs meet at the ridge point I* = peak / bandwidth. A linear layer
``y = x @ W^T`` with W (n, k) and x (batch, k) does F = 2 * n * k * batch FLOPs and reads
n * k * bytes_per_weight bytes of weights (activations are batch * (k + n) values, small
next to W while batch << n, k, and left out here), so

    I = 2 * batch / bytes_per_weight      fp32: 0.5 * batch;  int4 (block 128): ~3.7 * batch

At batch 1 (one decode step of a language model) I is far left of the ridge: time is
bytes / bandwidth, and 7.5x fewer bytes per weight can mean up to 7.5x less time. As the
batch grows, I crosses the ridge and fewer bytes stop helping: the layer is compute-bound.

>>> matvec_cost(4096, 4096, batch=1)["intensity"]
0.5
>>> roofline(0.5, bandwidth_gbs=20.0, peak_gflops=100.0)
10.0
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

from .._util import check_int

__all__ = ["pinned_threads", "bytes_per_weight", "matvec_cost", "memory_bandwidth",
           "matvec_point", "peak_flops", "roofline", "ridge_point"]

MiB = 2 ** 20


@contextmanager
def pinned_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)``; the old count is restored.

    ``None`` leaves the count alone.

    >>> old = torch.get_num_threads()
    >>> with pinned_threads(1): torch.get_num_threads()
    1
    >>> torch.get_num_threads() == old
    True
    """
    if threads is None:
        yield
        return
    check_int(threads, "threads", 1)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _times(fn: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    """Seconds per call of ``fn``: ``warmup`` untimed calls, then ``repeats`` timed ones
    (garbage collector paused)."""
    check_int(warmup, "warmup", 0)
    check_int(repeats, "repeats", 1)
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(warmup):
            fn()
        out = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    finally:
        if enabled:
            gc.enable()
    return out


def bytes_per_weight(bits: int = 32, block_size: int | None = None,
                     scale_bytes: int = 4) -> float:
    """Bytes one weight costs: ``bits / 8``, plus for block quantization a scale
    (``scale_bytes``) and a ``bits``-bit zero point shared by ``block_size`` weights.

    >>> bytes_per_weight(32), bytes_per_weight(4, 128)
    (4.0, 0.53515625)
    """
    check_int(bits, "bits", 1)
    per = bits / 8
    if block_size is not None:
        check_int(block_size, "block_size", 1)
        per += (scale_bytes + bits / 8) / block_size
    return per


def matvec_cost(n: int, k: int, batch: int = 1, bytes_per_weight: float = 4.0) -> dict:
    """FLOPs, weight bytes and intensity of ``x @ W^T``, W (n, k), x (batch, k).

    ``flops = 2 * n * k * batch`` (a multiply and an add per weight and row);
    ``bytes = n * k * bytes_per_weight`` (W read once); ``intensity = flops / bytes``.

    >>> matvec_cost(2, 3, batch=4)
    {'flops': 48, 'bytes': 24.0, 'intensity': 2.0}
    """
    for value, name in ((n, "n"), (k, "k"), (batch, "batch")):
        check_int(value, name, 1)
    if not bytes_per_weight > 0:
        raise ValueError(f"bytes_per_weight must be > 0, got {bytes_per_weight!r}")
    flops = 2 * n * k * batch
    nbytes = n * k * float(bytes_per_weight)
    return {"flops": flops, "bytes": nbytes, "intensity": flops / nbytes}


def memory_bandwidth(nbytes: int = 256 * MiB, *, repeats: int = 5, warmup: int = 1,
                     threads: int | None = 1) -> dict:
    """Measured copy bandwidth: ``dst.copy_(src)`` on two ``nbytes`` buffers.

    ``gbs = 2 * nbytes / median_seconds / 1e9``: bytes read plus bytes written (a copy
    moves each byte twice). Write-allocate traffic (the CPU first reading the lines it
    is about to overwrite) is not counted, so the bus may carry up to 1.5x more. Use
    buffers well above the last-level cache (default 256 MiB each), or this measures cache.
    Returns ``{"gbs", "median_s", "bytes_moved", "nbytes", "threads"}``.

    >>> memory_bandwidth(MiB, repeats=2)["bytes_moved"] == 2 * MiB
    True
    """
    check_int(nbytes, "nbytes", 4)
    src = torch.ones(nbytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    moved = 2 * src.numel() * 4
    with pinned_threads(threads):
        median = float(np.median(_times(lambda: dst.copy_(src), warmup, repeats)))
    return {"gbs": moved / median / 1e9, "median_s": median, "bytes_moved": moved,
            "nbytes": src.numel() * 4, "threads": torch.get_num_threads() if threads is None
            else threads}


def matvec_point(n: int, k: int, batch: int = 1, dtype: torch.dtype = torch.float32, *,
                 threads: int | None = 1, repeats: int = 10, warmup: int = 2) -> dict:
    """Time ``x @ W^T`` (torch, W (n, k) of ``dtype``) and place it on the roofline.

    Returns :func:`matvec_cost`'s ``flops``, ``bytes`` (of W) and ``intensity`` plus
    ``median_s``, achieved ``gbs = bytes / median_s / 1e9`` and ``gflops``. W of 64 MB or
    more keeps it out of cache, as for the layers of a language model.

    >>> p = matvec_point(64, 32, batch=2, repeats=2)
    >>> p["flops"], p["bytes"], p["intensity"]
    (8192, 8192.0, 1.0)
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype (e.g. torch.float32), got "
                         f"{dtype!r}")
    size = torch.empty((), dtype=dtype).element_size()
    cost = matvec_cost(n, k, batch, size)
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(n, k, generator=gen).to(dtype)
    x = torch.randn(batch, k, generator=gen).to(dtype)
    with pinned_threads(threads), torch.no_grad():
        median = float(np.median(_times(lambda: x @ w.T, warmup, repeats)))
    return {"n": n, "k": k, "batch": batch, "dtype": str(dtype).replace("torch.", ""),
            **cost, "median_s": median, "gbs": cost["bytes"] / median / 1e9,
            "gflops": cost["flops"] / median / 1e9}


def peak_flops(n: int = 1024, *, dtype: torch.dtype = torch.float32,
               threads: int | None = 1, repeats: int = 5, warmup: int = 1) -> dict:
    """The compute roof: achieved GFLOP/s of a square (n, n) @ (n, n) matmul (2 n^3 FLOPs).

    Large n is compute-bound (intensity n / 2 FLOP/byte in fp32), so this is close to what
    the BLAS kernels reach on this machine, not the data-sheet peak.

    >>> peak_flops(32, repeats=2)["flops"]
    65536
    """
    check_int(n, "n", 1)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    flops = 2 * n ** 3
    with pinned_threads(threads), torch.no_grad():
        median = float(np.median(_times(lambda: a @ b, warmup, repeats)))
    return {"gflops": flops / median / 1e9, "median_s": median, "flops": flops, "n": n,
            "dtype": str(dtype).replace("torch.", "")}


def roofline(intensity: float | np.ndarray, bandwidth_gbs: float, peak_gflops: float
             ) -> float | np.ndarray:
    """Attainable GFLOP/s: ``min(peak_gflops, intensity * bandwidth_gbs)``.

    ``intensity`` in FLOP/byte (a float or an array, e.g. for a plot).

    >>> roofline(0.5, 20.0, 100.0), roofline(8.0, 20.0, 100.0)
    (10.0, 100.0)
    >>> roofline(np.array([1.0, 10.0]), 20.0, 100.0).tolist()
    [20.0, 100.0]
    """
    for value, name in ((bandwidth_gbs, "bandwidth_gbs"), (peak_gflops, "peak_gflops")):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    arr = np.asarray(intensity, dtype=float)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"intensity must be finite and >= 0 (FLOP/byte), got {intensity!r}")
    out = np.minimum(float(peak_gflops), arr * float(bandwidth_gbs))
    return float(out) if out.ndim == 0 else out


def ridge_point(bandwidth_gbs: float, peak_gflops: float) -> float:
    """The intensity (FLOP/byte) where the roofs meet: ``peak_gflops / bandwidth_gbs``.

    Left of it a kernel is memory-bound, right of it compute-bound.

    >>> ridge_point(20.0, 100.0)
    5.0
    """
    roofline(0.0, bandwidth_gbs, peak_gflops)  # the same argument checks
    return float(peak_gflops) / float(bandwidth_gbs)
