"""qlib.quant.affine against PyTorch's reference quantizers, plus formulas and bad input."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from qlib.quant import (choose_qparams, dequantize, fake_quantize, fixed_point_qparams,
                        float_roundtrip, minmax, qrange, quantize, sqnr_db)

# (signed, symmetric, torch dtype, torch qscheme): the 8-bit cases PyTorch has.
CASES = [
    (False, False, torch.quint8, torch.per_tensor_affine),
    (True, True, torch.qint8, torch.per_tensor_symmetric),
    (True, False, torch.qint8, torch.per_tensor_affine),
    (False, True, torch.quint8, torch.per_tensor_symmetric),
]


def _torch_minmax(x, dtype, qscheme, per_channel=False, axis=0):
    """PyTorch's (deprecated) observers, used here only as a test reference."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import MinMaxObserver, PerChannelMinMaxObserver
        if per_channel:
            qs = {torch.per_tensor_affine: torch.per_channel_affine,
                  torch.per_tensor_symmetric: torch.per_channel_symmetric}[qscheme]
            obs = PerChannelMinMaxObserver(ch_axis=axis, dtype=dtype, qscheme=qs)
        else:
            obs = MinMaxObserver(dtype=dtype, qscheme=qscheme)
        obs(x)
        return obs.calculate_qparams()


def test_qrange():
    assert qrange(8) == (-128, 127) and qrange(8, signed=False) == (0, 255)
    assert qrange(1) == (-1, 0) and qrange(1, False) == (0, 1)
    assert qrange(16) == (-32768, 32767) and qrange(16, False) == (0, 65535)


@pytest.mark.parametrize("bad", [0, 17, -3, 2.0, True, "8"])
def test_bits_outside_1_to_16(bad):
    with pytest.raises(ValueError, match="bits must be an int in 1..16"):
        qrange(bad)
    with pytest.raises(ValueError, match="1..16"):
        quantize(torch.ones(3), torch.tensor(1.0), torch.tensor(0), bad)


@pytest.mark.parametrize("signed,symmetric,dtype,qscheme", CASES)
def test_choose_qparams_matches_minmax_observer(signed, symmetric, dtype, qscheme):
    g = torch.Generator().manual_seed(1)
    for shift in (-2.0, 0.0, 3.0):  # mixed, and all-positive / all-negative (widened to 0)
        x = torch.randn(1000, generator=g) * 2 + shift
        ref_s, ref_z = _torch_minmax(x, dtype, qscheme)
        s, z = choose_qparams(x.min(), x.max(), 8, symmetric=symmetric, signed=signed)
        assert torch.equal(s.reshape(1), ref_s) and torch.equal(z.reshape(1), ref_z.long())


@pytest.mark.parametrize("signed,symmetric,dtype,qscheme", CASES[:2])
@pytest.mark.parametrize("axis", [0, 1])
def test_per_channel_qparams_match_per_channel_observer(signed, symmetric, dtype, qscheme, axis):
    x = torch.randn(6, 5, 4, generator=torch.Generator().manual_seed(2)) * torch.arange(
        1.0, 7.0).view(6, 1, 1)
    ref_s, ref_z = _torch_minmax(x, dtype, qscheme, per_channel=True, axis=axis)
    rows = x.movedim(axis, 0).reshape(x.shape[axis], -1)
    s, z = choose_qparams(rows.amin(1), rows.amax(1), 8, symmetric=symmetric, signed=signed)
    assert torch.equal(s, ref_s.float()) and torch.equal(z, ref_z.long())


def test_scale_never_below_eps():
    s, z = choose_qparams(torch.tensor(0.0), torch.tensor(0.0), 8)
    assert s.item() == torch.finfo(torch.float32).eps and z.item() == -128


@pytest.mark.parametrize("signed,symmetric,dtype,qscheme", CASES[:2])
def test_fake_quantize_matches_torch_per_tensor(signed, symmetric, dtype, qscheme):
    x = torch.randn(4000, generator=torch.Generator().manual_seed(3)) * 3
    s, z = choose_qparams(x.min() * 0.7, x.max() * 0.7, 8, symmetric=symmetric, signed=signed)
    qmin, qmax = qrange(8, signed)
    ref = torch.fake_quantize_per_tensor_affine(x, s.item(), int(z), qmin, qmax)
    assert torch.equal(fake_quantize(x, s, z, 8, signed=signed), ref)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_q = torch.quantize_per_tensor(x, s.item(), int(z), dtype).int_repr().int()
    assert torch.equal(quantize(x, s, z, 8, signed=signed), ref_q)


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("signed,symmetric", [(False, False), (True, True)])
def test_fake_quantize_matches_torch_per_channel(axis, signed, symmetric):
    x = torch.randn(5, 6, 7, generator=torch.Generator().manual_seed(4)) * 2
    rows = x.movedim(axis, 0).reshape(x.shape[axis], -1)
    s, z = choose_qparams(rows.amin(1) * 0.8, rows.amax(1) * 0.8, 8, symmetric=symmetric,
                          signed=signed)
    qmin, qmax = qrange(8, signed)
    ref = torch.fake_quantize_per_channel_affine(x, s, z.int(), axis % 3, qmin, qmax)
    assert torch.equal(fake_quantize(x, s, z, 8, signed=signed, axis=axis), ref)
    # per-channel really is per channel: channel c uses scale[c]
    q = quantize(x, s, z, 8, signed=signed, axis=axis)
    c = 2
    qc = quantize(x.select(axis, c), s[c], z[c], 8, signed=signed)
    assert torch.equal(q.select(axis, c), qc)


def test_ste_gradient_is_one_inside_zero_outside():
    x = torch.linspace(-3, 3, 601, requires_grad=True)
    s, z = torch.tensor(0.02), torch.tensor(0)
    fake_quantize(x, s, z, 8).sum().backward()
    xr = x.detach().clone().requires_grad_(True)
    torch.fake_quantize_per_tensor_affine(xr, 0.02, 0, -128, 127).sum().backward()
    assert torch.equal(x.grad, xr.grad)
    inside = (torch.round(x.detach() / s) >= -128) & (torch.round(x.detach() / s) <= 127)
    assert torch.equal(x.grad, inside.float())
    assert x.grad[0] == 0 and x.grad[300] == 1 and x.grad[-1] == 0


def test_ste_per_channel_gradient():
    x = torch.tensor([[0.1, 5.0], [0.1, 5.0]], requires_grad=True)
    fake_quantize(x, torch.tensor([0.01, 1.0]), torch.tensor([0, 0]), 8, axis=0).sum().backward()
    assert x.grad.tolist() == [[1.0, 0.0], [1.0, 1.0]]


def test_round_half_to_even():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5])
    q = quantize(x, torch.tensor(1.0), torch.tensor(0), 8)
    assert q.tolist() == [0, 2, 2, 0, -2, -2] and q.dtype == torch.int32


def test_clamp_and_dequantize_formula():
    x = torch.tensor([-100.0, -1.0, 0.0, 1.0, 100.0])
    s, z = torch.tensor(0.1), torch.tensor(3)
    q = quantize(x, s, z, 4, signed=True)
    assert q.tolist() == [-8, -7, 3, 7, 7]
    assert torch.allclose(dequantize(q, s, z), 0.1 * (q.float() - 3))
    # 16-bit unsigned values survive (clamped in float, then int32: no wrap-around)
    q16 = quantize(torch.tensor([1e9]), torch.tensor(1.0), torch.tensor(0), 16, signed=False)
    assert q16.item() == 65535


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_non_positive_or_bad_scale(scale):
    with pytest.raises(ValueError, match="scale"):
        quantize(torch.ones(3), torch.tensor(scale), torch.tensor(0), 8)
    with pytest.raises(ValueError, match="scale"):
        fake_quantize(torch.ones(3), torch.tensor(scale), torch.tensor(0), 8)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_inf_rejected(bad):
    x = torch.tensor([1.0, bad])
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantize(x, torch.tensor(1.0), torch.tensor(0), 8)
    with pytest.raises(ValueError, match="NaN or Inf"):
        fake_quantize(x, torch.tensor(1.0), torch.tensor(0), 8)
    with pytest.raises(ValueError, match="NaN or Inf"):
        choose_qparams(torch.tensor(0.0), torch.tensor(bad), 8)


def test_bad_zero_point_and_shapes():
    with pytest.raises(ValueError, match="zero_point must lie in"):
        quantize(torch.ones(3), torch.tensor(1.0), torch.tensor(300), 8, signed=False)
    with pytest.raises(ValueError, match="per-channel"):
        quantize(torch.ones(3, 4), torch.ones(4), torch.zeros(4), 8, axis=0)
    with pytest.raises(ValueError, match="one value"):
        quantize(torch.ones(3, 4), torch.ones(3), torch.zeros(3), 8)
    with pytest.raises(ValueError, match="out of range"):
        quantize(torch.ones(3, 4), torch.ones(3), torch.zeros(3), 8, axis=2)
    with pytest.raises(ValueError, match="must not exceed"):
        choose_qparams(torch.tensor(1.0), torch.tensor(0.5), 8)


def test_per_group_equals_per_channel_of_reshaped():
    w = torch.randn(4, 12, generator=torch.Generator().manual_seed(5))
    s, z = choose_qparams(*minmax(w, group_size=3), 4, symmetric=True)
    assert s.shape == (4, 4)
    rows = w.reshape(16, 3)
    s_ref, z_ref = choose_qparams(rows.amin(1), rows.amax(1), 4, symmetric=True)
    assert torch.equal(s.reshape(-1), s_ref)
    q = quantize(w, s, z, 4, group_size=3)
    assert torch.equal(q.reshape(16, 3), quantize(rows, s_ref, z_ref, 4, axis=0))
    assert torch.equal(dequantize(q, s, z, group_size=3),
                       dequantize(q.reshape(16, 3), s_ref, z_ref, axis=0).reshape(4, 12))
    assert torch.equal(fake_quantize(w, s, z, 4, group_size=3),
                       dequantize(q, s, z, group_size=3))

    def fq(g: int) -> torch.Tensor:
        sg, zg = choose_qparams(*minmax(w, group_size=g), 4)
        return fake_quantize(w, sg, zg, 4, group_size=g)

    # smaller groups, smaller error
    err = [((fq(g) - w) ** 2).mean() for g in (2, 6, 12)]
    assert err[0] < err[1] < err[2]
    with pytest.raises(ValueError, match="multiple of group_size"):
        minmax(w, group_size=5)
    with pytest.raises(ValueError, match="shape"):
        quantize(w, s[:, :2], z[:, :2], 4, group_size=3)
    with pytest.raises(ValueError, match="not both"):
        quantize(w, s, z, 4, group_size=3, axis=0)


def test_per_group_straight_through_gradient():
    x = torch.tensor([[0.0, 1.0, 10.0, 11.0]], requires_grad=True)
    s, z = choose_qparams(*minmax(x, group_size=2), 2, signed=False)
    y = fake_quantize(x, s, z, 2, signed=False, group_size=2)
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_minmax_granularities():
    x = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    assert [t.tolist() for t in minmax(x)] == [-2.0, 3.0]
    assert [t.tolist() for t in minmax(x, axis=0)] == [[-2.0, 0.5], [1.0, 3.0]]
    assert [t.tolist() for t in minmax(x, axis=1)] == [[1.0, -2.0], [3.0, 0.5]]


def test_bad_inputs_say_what_is_allowed():
    with pytest.raises(TypeError, match="torch.Tensor"):
        quantize([1.0, 2.0], torch.tensor(1.0), torch.tensor(0), 8)
    with pytest.raises(TypeError, match="complex"):
        quantize(torch.ones(2, dtype=torch.complex64), torch.tensor(1.0), torch.tensor(0), 8)
    with pytest.raises(ValueError, match="whole numbers"):
        dequantize(torch.tensor([1.5]), torch.tensor(1.0), torch.tensor(0))
    with pytest.raises(ValueError, match="whole numbers"):
        dequantize(torch.tensor([1]), torch.tensor(1.0), torch.tensor(0.5))


def test_fixed_point_is_scale_power_of_two():
    x = torch.randn(100, generator=torch.Generator().manual_seed(6))
    s, z = fixed_point_qparams(5)
    assert s.item() == 2.0 ** -5 and z.item() == 0
    assert torch.equal(quantize(x, s, z, 12), torch.round(x * 32).clamp(-2048, 2047).int())


def test_float_roundtrip_matches_torch_casts():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(7)) * 100
    assert torch.equal(float_roundtrip(x, "fp16"), x.half().float())
    assert torch.equal(float_roundtrip(x, torch.bfloat16), x.bfloat16().float())
    assert torch.isinf(float_roundtrip(torch.tensor([1e5]), "fp16")).all()
    with pytest.raises(ValueError, match="unknown float format"):
        float_roundtrip(x, "fp12")


def test_sqnr_six_db_per_bit():
    x = torch.rand(200_000, generator=torch.Generator().manual_seed(8)) * 2 - 1
    db = {}
    for b in (4, 6, 8, 10):
        s, z = choose_qparams(x.min(), x.max(), b)
        db[b] = sqnr_db(x, fake_quantize(x, s, z, b))
    slope = (db[10] - db[4]) / 6
    assert abs(slope - 20 * math.log10(2)) < 0.1  # 6.02 dB per bit
    assert sqnr_db(x, x) == math.inf
    assert sqnr_db(torch.tensor([1.0, -1.0]), torch.tensor([0.9, -1.1])) == pytest.approx(20.0)
