"""NF4: the codebook from normal quantiles, blockwise absmax quantization, packed size."""

from __future__ import annotations

import pytest
import torch

from qlib.quant.affine import choose_qparams, fake_quantize, minmax
from qlib.quant.formats import sqnr_db
from qlib.quant.kmeans import kmeans_codebook
from qlib.quant.nf4 import (NF4_TABLE, nf4_codebook, nf4_dequantize, nf4_fake_quantize,
                            nf4_packed_bytes, nf4_quantize)
from qlib.quant.weightonly import rtn_quantize


def test_codebook_from_quantiles_matches_the_published_table():
    book = nf4_codebook()
    assert book.shape == (16,)
    assert float((book - NF4_TABLE).abs().max()) < 1e-6     # measured 1.9e-7
    assert NF4_TABLE[0] == -1.0 and NF4_TABLE[-1] == 1.0 and NF4_TABLE[7] == 0.0
    assert int((NF4_TABLE > 0).sum()) == 8 and int((NF4_TABLE < 0).sum()) == 7
    assert bool((NF4_TABLE[1:] > NF4_TABLE[:-1]).all())


def test_codebook_levels_are_equally_likely_for_gaussian_weights():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(256, 1024, generator=g)
    codes, _ = nf4_quantize(w, block_size=64)
    share = torch.bincount(codes.flatten().long(), minlength=16).float() / codes.numel()
    # quantile levels: every code is used, none dominates (int4 absmax leaves its tails empty)
    assert float(share.min()) > 0.01 and float(share.max()) < 0.15


def test_quantize_is_nearest_level_times_block_absmax():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 128, generator=g)
    codes, absmax = nf4_quantize(w, block_size=64)
    assert codes.dtype == torch.uint8 and codes.shape == w.shape and absmax.shape == (8, 2)
    assert torch.equal(absmax, w.reshape(8, 2, 64).abs().amax(-1))
    normed = w.reshape(8, 2, 64) / absmax[..., None]
    nearest = (normed[..., None] - NF4_TABLE).abs().argmin(-1)        # brute force
    assert torch.equal(codes.reshape(8, 2, 64).long(), nearest)
    w_hat = nf4_dequantize(codes, absmax, block_size=64)
    assert torch.equal(w_hat, (NF4_TABLE[nearest] * absmax[..., None]).reshape(8, 128))
    assert torch.equal(nf4_fake_quantize(w_hat, block_size=64), w_hat)  # levels are fixed
    zero = nf4_fake_quantize(torch.zeros(2, 64))
    assert bool((zero == 0).all())


def test_nf4_beats_int4_absmax_on_gaussian_weights():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(64, 1024, generator=g) * 0.02
    nf4 = sqnr_db(w, nf4_fake_quantize(w, block_size=64))
    # int4 absmax: symmetric, one scale per block of 64 (the same storage as NF4)
    scale, zp = choose_qparams(*minmax(w, group_size=64), 4, symmetric=True)
    absmax = sqnr_db(w, fake_quantize(w, scale, zp, 4, group_size=64))
    asym = sqnr_db(w, rtn_quantize(w, 4, group_size=64).weight)      # + a zero point per block
    small = w[:, :256]
    book, idx = kmeans_codebook(small, 4, max_iter=100)              # one codebook per tensor
    kmeans = sqnr_db(small, book[idx])
    assert nf4 > absmax + 0.5                                        # measured 20.7 vs 19.8 dB
    assert 19.0 < asym < 22.0 and 19.0 < kmeans < 22.0               # measured 20.8, 20.2 dB


def test_packed_bytes():
    n = 64 * 1024
    assert nf4_packed_bytes(n) * 8 / n == 4.5                        # 4 + 32/64
    assert abs(nf4_packed_bytes(n, double_quant=True) * 8 / n - 4.127) < 1e-3
    assert nf4_packed_bytes(n, 128) * 8 / n == 4.25
    with pytest.raises(ValueError, match="numel must be a positive int"):
        nf4_packed_bytes(0)


def test_bad_input():
    with pytest.raises(ValueError, match="block_size=48 must divide"):
        nf4_quantize(torch.ones(2, 64), block_size=48)
    with pytest.raises(ValueError, match="NaN or Inf"):
        nf4_quantize(torch.tensor([[float("nan")] * 64]))
    with pytest.raises(ValueError, match="absmax must have shape"):
        nf4_dequantize(torch.zeros(2, 64, dtype=torch.uint8), torch.ones(3))
