"""FP8 (E4M3 / E5M2) round trips against torch's casts, and the OCP MX block formats."""

from __future__ import annotations

import pytest
import torch

from qlib.quant.formats import sqnr_db
from qlib.quant.fp8 import (E2M1_VALUES, FORMATS, bits_per_value, e2m1_round, float_round,
                            fp8_dequantize, fp8_fake_quantize, fp8_quantize, mx_dequantize,
                            mx_fake_quantize, mx_quantize)


def _all_values(dtype: torch.dtype) -> torch.Tensor:
    """Every finite value of a float8 dtype, ascending, unique."""
    v = torch.arange(256, dtype=torch.uint8).view(dtype).float()
    return v[torch.isfinite(v)].unique()


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_formula_rounding_equals_torch_cast(fmt):
    dtype = FORMATS[fmt].dtype
    vals = _all_values(dtype)
    assert float(vals.max()) == FORMATS[fmt].max
    mids = (vals[1:] + vals[:-1]) / 2                       # exact ties: round half to even
    g = torch.Generator().manual_seed(0)
    rand = (torch.rand(20000, generator=g) * 2 - 1) * FORMATS[fmt].max
    tiny = torch.randn(2000, generator=g) * 2.0 ** (1 - FORMATS[fmt].bias)  # subnormals
    x = torch.cat([vals, mids, rand, tiny])
    assert torch.equal(float_round(x, fmt), x.to(dtype).float())


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
@pytest.mark.parametrize("axis", [None, 0])
def test_fp8_round_trip_is_torch_cast_with_amax_scale(fmt, axis):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 64, generator=g) * torch.logspace(-3, 2, 16)[:, None]
    x8, scale = fp8_quantize(x, fmt, axis=axis)
    assert x8.dtype == FORMATS[fmt].dtype
    amax = x.abs().amax() if axis is None else x.abs().amax(1)
    assert torch.equal(scale, amax / FORMATS[fmt].max)
    s = scale if axis is None else scale[:, None]
    ref = (x / s).to(FORMATS[fmt].dtype).float() * s
    assert torch.equal(fp8_fake_quantize(x, fmt, axis=axis), ref)
    assert torch.equal(fp8_dequantize(x8, scale, axis=axis), ref)
    assert bool(torch.isfinite(x8.float()).all())


def _e2m1_brute_force(x: torch.Tensor) -> torch.Tensor:
    """Nearest of ±E2M1_VALUES, a tie going to the even code (mantissa bit 0)."""
    pos = E2M1_VALUES
    out = torch.empty_like(x)
    for i, v in enumerate(x.tolist()):
        a = min(abs(v), 6.0)
        d = (pos - a).abs()
        best = [c for c in range(8) if d[c] == d.min()]
        code = best[0] if len(best) == 1 else next(c for c in best if c % 2 == 0)
        out[i] = pos[code] if v >= 0 else -pos[code]
    return out


def test_e2m1_lookup_exhaustive_on_a_grid():
    # step 1/64 hits every decision point (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5) exactly
    x = torch.arange(-8 * 64, 8 * 64 + 1) / 64.0
    ref = _e2m1_brute_force(x)
    assert torch.equal(e2m1_round(x), ref)
    assert torch.equal(float_round(x, "e2m1"), ref)          # the formula agrees
    assert e2m1_round(torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])).tolist() == \
        [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0]


@pytest.mark.parametrize("fmt,emax,fmax", [("mxfp8", 8, 448.0), ("mxfp4", 2, 6.0)])
def test_mx_scale_is_a_power_of_two_from_the_block_amax(fmt, emax, fmax):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 128, generator=g) * torch.logspace(-4, 3, 8)[:, None]
    x[0, :32] = 0.0                                          # an all-zero block
    elements, exps = mx_quantize(x, fmt)
    assert exps.shape == (8, 4) and exps.dtype == torch.int32
    scale = torch.ldexp(torch.ones(exps.shape), exps)
    assert torch.equal(torch.log2(scale), exps.float())     # exactly 2^k
    amax = x.reshape(8, 4, 32).abs().amax(-1)
    nz = amax > 0
    assert torch.equal(exps[nz], torch.floor(torch.log2(amax[nz])).int() - emax)
    assert int(exps[0, 0]) == -127 and bool((elements[0, :32] == 0).all())
    assert float(elements.abs().max()) <= fmax
    if fmt == "mxfp4":
        assert bool(torch.isin(elements.abs(), E2M1_VALUES).all())
    else:
        assert torch.equal(elements.to(torch.float8_e4m3fn).float(), elements)
    assert torch.equal(mx_dequantize(elements, exps),
                       (elements.reshape(8, 4, 32) * scale[..., None]).reshape(8, 128))


def test_mx_saturates_the_top_of_the_block():
    x = torch.full((32,), 0.1)
    x[0] = 7.9                                               # 7.9 / 2^0 > 6: clamps to 6
    elements, exps = mx_quantize(x, "mxfp4")
    assert int(exps[0]) == 0 and float(elements[0]) == 6.0


def test_sqnr_orderings_on_gaussian_data():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 1024, generator=g)
    mx8, mx4 = (sqnr_db(x, mx_fake_quantize(x, f)) for f in ("mxfp8", "mxfp4"))
    e4m3, e5m2 = (sqnr_db(x, fp8_fake_quantize(x, f)) for f in ("e4m3", "e5m2"))
    assert mx8 > mx4 + 10
    assert e4m3 > e5m2 + 3                                   # one more mantissa bit
    assert 28 < e4m3 < 34 and 15 < mx4 < 22                  # measured: 31.5 and 18.8 dB


def test_bits_per_value_and_bad_input():
    assert bits_per_value("mxfp4") == 4.25 and bits_per_value("mxfp8") == 8.25
    with pytest.raises(ValueError, match="format must be one of"):
        bits_per_value("fp4")
    with pytest.raises(ValueError, match="format must be one of"):
        fp8_quantize(torch.ones(3), "e2m1")
    with pytest.raises(ValueError, match="NaN or Inf"):
        fp8_quantize(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="multiple of the MX block size"):
        mx_quantize(torch.ones(4, 48))
