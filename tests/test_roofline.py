"""qlib.measure.roofline: the arithmetic exactly, the measurements only for sanity (no timings
are asserted: the machine is shared)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qlib.measure.roofline import (bytes_per_weight, matvec_cost, matvec_point,
                                   memory_bandwidth, peak_flops, pinned_threads, ridge_point,
                                   roofline)


def positive(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_bytes_per_weight():
    assert bytes_per_weight() == 4.0 and bytes_per_weight(16) == 2.0
    assert bytes_per_weight(8, 32) == 1 + (4 + 1) / 32
    assert bytes_per_weight(4, 128) == 0.5 + 4.5 / 128  # MatMulNBits int4: ~7.5x below fp32
    assert bytes_per_weight(4, 128, scale_bytes=2) == 0.5 + 2.5 / 128
    with pytest.raises(ValueError, match="block_size must be an int >= 1, got 0"):
        bytes_per_weight(4, 0)


@pytest.mark.parametrize("n,k,batch,bpw", [(4096, 4096, 1, 4.0), (11008, 4096, 16, 0.5),
                                           (3, 5, 7, 2.0)])
def test_matvec_cost(n, k, batch, bpw):
    c = matvec_cost(n, k, batch, bpw)
    assert c["flops"] == 2 * n * k * batch and c["bytes"] == n * k * bpw
    assert c["intensity"] == pytest.approx(2 * batch / bpw)  # independent of the shape


def test_matvec_cost_rejects_bad_sizes():
    with pytest.raises(ValueError, match="batch must be an int >= 1, got 0"):
        matvec_cost(4, 4, 0)
    with pytest.raises(ValueError, match="bytes_per_weight must be > 0"):
        matvec_cost(4, 4, 1, 0.0)


def test_roofline_formula_and_ridge():
    assert roofline(0.5, 20.0, 100.0) == 10.0  # memory-bound: I * bandwidth
    assert roofline(50.0, 20.0, 100.0) == 100.0  # compute-bound: the peak
    assert ridge_point(20.0, 100.0) == 5.0
    assert roofline(ridge_point(20.0, 100.0), 20.0, 100.0) == 100.0  # the roofs meet there
    grid = np.array([0.0, 1.0, 5.0, 9.0])
    assert roofline(grid, 20.0, 100.0).tolist() == [0.0, 20.0, 100.0, 100.0]
    with pytest.raises(ValueError, match="bandwidth_gbs must be a finite number > 0"):
        roofline(1.0, 0.0, 100.0)
    with pytest.raises(ValueError, match="peak_gflops must be a finite number > 0"):
        ridge_point(20.0, float("inf"))
    with pytest.raises(ValueError, match="intensity must be finite and >= 0"):
        roofline(-1.0, 20.0, 100.0)


def test_pinned_threads_restores_even_on_error():
    old = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        with pinned_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError("boom")
    assert torch.get_num_threads() == old
    with pinned_threads(None):
        assert torch.get_num_threads() == old
    with pytest.raises(ValueError, match="threads must be an int >= 1, got 0"):
        with pinned_threads(0):
            pass


def test_memory_bandwidth_tiny():
    r = memory_bandwidth(2 ** 20, repeats=3)
    assert r["nbytes"] == 2 ** 20 and r["bytes_moved"] == 2 * 2 ** 20 and r["threads"] == 1
    assert positive(r["gbs"]) and positive(r["median_s"])
    assert r["gbs"] == pytest.approx(r["bytes_moved"] / r["median_s"] / 1e9)


@pytest.mark.parametrize("dtype,size", [(torch.float32, 4), (torch.bfloat16, 2)])
def test_matvec_point_tiny(dtype, size):
    p = matvec_point(48, 32, batch=3, dtype=dtype, repeats=3)
    assert p["flops"] == 2 * 48 * 32 * 3 and p["bytes"] == 48 * 32 * size
    assert p["intensity"] == pytest.approx(2 * 3 / size)
    assert all(positive(p[key]) for key in ("median_s", "gbs", "gflops"))
    assert p["gflops"] == pytest.approx(p["flops"] / p["median_s"] / 1e9)
    assert p["gbs"] == pytest.approx(p["bytes"] / p["median_s"] / 1e9)
    with pytest.raises(ValueError, match="dtype must be a floating torch.dtype"):
        matvec_point(4, 4, dtype=torch.int8)


def test_peak_flops_tiny():
    r = peak_flops(64, repeats=3, threads=1)
    assert r["flops"] == 2 * 64 ** 3 and positive(r["gflops"])
    assert r["gflops"] == pytest.approx(r["flops"] / r["median_s"] / 1e9)
    with pytest.raises(ValueError, match="repeats must be an int >= 1, got 0"):
        peak_flops(8, repeats=0)
