"""qlib.quant.lsq: the STE, LSQ scale gradients (closed form, finite differences, PyTorch's
learnable fake quant), initialisation, the quantizer module, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from qlib.quant import fake_quantize, qrange
from qlib.quant.lsq import (LSQQuantizer, lsq_fake_quantize, lsq_grad_scale, lsq_init_scale,
                            round_ste, scale_grad)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _lsq_scale_grad_formula(x, s, z, bits, signed, upstream, axis, g):
    """Closed form: sum over values sharing a scale of upstream * dx_hat/ds, times g."""
    qmin, qmax = qrange(bits, signed)
    x, s, up = x.double().numpy(), s.double().numpy(), upstream.double().numpy()
    shape = [1] * x.ndim
    if axis is not None:
        shape[axis] = -1
    u = x / s.reshape(shape)
    r = np.round(u) + z                              # numpy rounds half to even, as torch
    d = np.where(r < qmin, qmin - z, np.where(r > qmax, qmax - z, np.round(u) - u))
    red = tuple(i for i in range(x.ndim) if i != axis) if axis is not None else None
    return g * (up * d).sum(axis=red)


# ----- the STE -----------------------------------------------------------------------------

def test_round_ste_value_and_gradient():
    u = torch.tensor([-1.5, -0.4, 0.5, 1.5, 2.6], requires_grad=True)
    y = round_ste(u)
    y.backward(torch.arange(5.0))
    assert torch.equal(y.detach(), torch.tensor([-2.0, -0.0, 0.0, 2.0, 3.0]))  # half to even
    assert torch.equal(u.grad, torch.arange(5.0))                              # identity


def test_scale_grad_keeps_value_scales_gradient():
    s = torch.tensor([0.3, 2.0], requires_grad=True)
    y = scale_grad(s, 0.25)
    (y * torch.tensor([1.0, -4.0])).sum().backward()
    assert torch.equal(y.detach(), s.detach())
    assert torch.allclose(s.grad, torch.tensor([0.25, -1.0]))


def test_ste_gradient_for_x_is_one_inside_zero_where_clipped():
    x = torch.tensor([-5.0, -0.9, 0.2, 0.74, 0.76, 3.0], requires_grad=True)
    s = torch.tensor(0.5)
    lsq_fake_quantize(x, s, torch.tensor(0), 2).sum().backward()   # q in [-2, 1]
    # round(x/s) = [-10, -2, 0, 1, 2, 6]: inside for -2..1 (the rounded value decides)
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0, 0.0]))


# ----- forward values --------------------------------------------------------------------

@pytest.mark.parametrize("bits,signed,zp", [(8, True, 0), (4, True, 0), (2, True, 0),
                                            (4, False, 0), (4, False, 3), (8, False, 40)])
def test_values_equal_fake_quantize(bits, signed, zp):
    x = torch.randn(64, generator=_gen(1)) * 2
    s = torch.tensor(0.3)
    ref = fake_quantize(x, s, torch.tensor(zp), bits, signed=signed)
    got = lsq_fake_quantize(x, s, torch.tensor(zp), bits, signed=signed)
    assert torch.equal(got, ref)


def test_per_channel_values_equal_fake_quantize():
    w = torch.randn(6, 3, 3, 3, generator=_gen(2))
    s = lsq_init_scale(w, 3, axis=0)
    z = torch.zeros(6, dtype=torch.int64)
    assert torch.equal(lsq_fake_quantize(w, s, z, 3, axis=0), fake_quantize(w, s, z, 3, axis=0))


# ----- the LSQ scale gradient ----------------------------------------------------------------

@pytest.mark.parametrize("bits,signed,zp", [(4, True, 0), (2, True, 0), (4, False, 0),
                                            (8, False, 17)])
def test_scale_gradient_per_tensor_matches_formula(bits, signed, zp):
    x = torch.randn(500, generator=_gen(3)) * 1.5
    up = torch.randn(500, generator=_gen(4))
    s = torch.tensor(0.2, requires_grad=True)
    g = lsq_grad_scale(500, bits, signed=signed, zero_point=zp)
    (lsq_fake_quantize(x, s, torch.tensor(zp), bits, signed=signed, grad_scale=g) * up
     ).sum().backward()
    want = _lsq_scale_grad_formula(x, s.detach(), zp, bits, signed, up, None, g)
    assert math.isclose(float(s.grad), float(want), rel_tol=1e-5, abs_tol=1e-7)


def test_scale_gradient_per_channel_matches_formula():
    w = torch.randn(8, 4, 3, 3, generator=_gen(5)) * torch.linspace(0.1, 2, 8).view(-1, 1, 1, 1)
    up = torch.randn(w.shape, generator=_gen(6))
    s = lsq_init_scale(w, 4, axis=0).requires_grad_()
    g = lsq_grad_scale(w[0].numel(), 4)
    (lsq_fake_quantize(w, s, torch.zeros(8, dtype=torch.int64), 4, axis=0, grad_scale=g) * up
     ).sum().backward()
    want = _lsq_scale_grad_formula(w, s.detach(), 0, 4, True, up, 0, g)
    assert np.allclose(s.grad.numpy(), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("signed,zp,quant_min,quant_max", [(True, 0, -8, 7), (False, 2, 0, 15)])
def test_matches_torch_learnable_fake_quant_per_tensor(signed, zp, quant_min, quant_max):
    # PyTorch's own LSQ op (used by its _LearnableFakeQuantize); grad_factor is g.
    x = (torch.randn(300, generator=_gen(7)) * 2).requires_grad_()
    up = torch.randn(300, generator=_gen(8))
    s = torch.tensor(0.25, requires_grad=True)
    g = lsq_grad_scale(300, 4, signed=signed, zero_point=zp)
    (lsq_fake_quantize(x, s, torch.tensor(zp), 4, signed=signed, grad_scale=g) * up).sum(
        ).backward()
    x_ref, s_ref = x.detach().clone().requires_grad_(), torch.tensor([0.25], requires_grad=True)
    y_ref = torch._fake_quantize_learnable_per_tensor_affine(
        x_ref, s_ref, torch.tensor([float(zp)]), quant_min, quant_max, g)
    (y_ref * up).sum().backward()
    with torch.no_grad():
        assert torch.allclose(lsq_fake_quantize(x, s, torch.tensor(zp), 4, signed=signed),
                              y_ref, atol=1e-6)
    assert torch.equal(x.grad, x_ref.grad)
    assert torch.allclose(s.grad.reshape(1), s_ref.grad, rtol=1e-4)


def test_matches_torch_learnable_fake_quant_per_channel():
    w = (torch.randn(5, 20, generator=_gen(9)) * torch.linspace(0.2, 3, 5).view(-1, 1)
         ).requires_grad_()
    up = torch.randn(5, 20, generator=_gen(10))
    s = lsq_init_scale(w, 3, axis=0).requires_grad_()
    g = lsq_grad_scale(20, 3)
    (lsq_fake_quantize(w, s, torch.zeros(5, dtype=torch.int64), 3, axis=0, grad_scale=g) * up
     ).sum().backward()
    w_ref, s_ref = w.detach().clone().requires_grad_(), s.detach().clone().requires_grad_()
    y_ref = torch._fake_quantize_learnable_per_channel_affine(
        w_ref, s_ref, torch.zeros(5), 0, -4, 3, g)
    (y_ref * up).sum().backward()
    assert torch.equal(w.grad, w_ref.grad)
    assert torch.allclose(s.grad, s_ref.grad, rtol=1e-4, atol=1e-7)


def test_scale_gradient_exact_where_clipped_finite_differences():
    # Where every value is clipped, x_hat = s * (qmin - z) or s * (qmax - z) is exactly
    # linear in s: the LSQ gradient is the true derivative; central differences agree.
    x = torch.tensor([-9.0, -7.5, 6.0, 8.0, 12.0], dtype=torch.float64)
    up = torch.tensor([0.3, -1.0, 2.0, 0.5, -0.7], dtype=torch.float64)
    s0, h, g = 0.5, 1e-4, lsq_grad_scale(5, 3)

    def loss(s):
        return float((lsq_fake_quantize(x, torch.tensor(s, dtype=torch.float64), torch.tensor(0),
                                        3) * up).sum())

    s = torch.tensor(s0, dtype=torch.float64, requires_grad=True)
    (lsq_fake_quantize(x, s, torch.tensor(0), 3, grad_scale=g) * up).sum().backward()
    fd = (loss(s0 + h) - loss(s0 - h)) / (2 * h)
    assert math.isclose(float(s.grad), g * fd, rel_tol=1e-6)


def test_scale_gradient_matches_finite_differences_of_the_ste_surrogate():
    # Inside the range the STE treats round(u) as u + r with the residual r = round(u) - u
    # held fixed, so x_hat(s) = s * (x / s + r) there (and s * (qmax - z) where clipped).
    # Central differences of that surrogate, written in float64 NumPy, give the LSQ gradient.
    w = torch.randn(4, 50, generator=_gen(11), dtype=torch.float64)
    up = torch.randn(4, 50, generator=_gen(12), dtype=torch.float64)
    bits, (qmin, qmax) = 3, qrange(3)
    s0 = lsq_init_scale(w, bits, axis=0).double()
    g = lsq_grad_scale(50, bits)
    s = s0.clone().requires_grad_()
    (lsq_fake_quantize(w, s, torch.zeros(4, dtype=torch.int64), bits, axis=0, grad_scale=g)
     * up).sum().backward()

    wn, upn, sn = w.numpy(), up.numpy(), s0.numpy()[:, None]
    u0 = wn / sn
    r, q0 = np.round(u0) - u0, np.round(u0)
    low, high = q0 < qmin, q0 > qmax

    def surrogate(scales):
        sc = scales[:, None]
        inside = sc * (wn / sc + r)
        return (upn * np.where(low, sc * qmin, np.where(high, sc * qmax, inside))).sum(1)

    h = 1e-6
    fd = np.array([(surrogate(sn[:, 0] + h * e) - surrogate(sn[:, 0] - h * e))[c] / (2 * h)
                   for c, e in enumerate(np.eye(4))])
    assert np.allclose(s.grad.numpy(), g * fd, rtol=1e-5, atol=1e-8)


def test_grad_scale_and_init_formulas():
    assert math.isclose(lsq_grad_scale(800, 4), 1 / math.sqrt(800 * 7))
    assert math.isclose(lsq_grad_scale(100, 8, signed=False), 1 / math.sqrt(100 * 255))
    assert math.isclose(lsq_grad_scale(100, 8, signed=False, zero_point=55), 1 / math.sqrt(
        100 * 200))
    w = torch.randn(3, 10, generator=_gen(13))
    assert torch.allclose(lsq_init_scale(w, 4, axis=0), 2 * w.abs().mean(1) / math.sqrt(7))
    assert torch.allclose(lsq_init_scale(w, 2), 2 * w.abs().mean() / 1.0)


def test_quantizer_uses_values_per_scale_as_n():
    wq = LSQQuantizer(4, "weight", 6)
    assert math.isclose(wq.grad_scale(torch.zeros(6, 3, 5, 5)), 1 / math.sqrt(75 * 7))
    aq = LSQQuantizer(4, "activation", zero_point=2)
    assert math.isclose(aq.grad_scale(torch.zeros(32, 16, 14, 14)), 1 / math.sqrt(3136 * 13))
    assert isinstance(wq.magnitude, nn.Parameter)
    assert not isinstance(LSQQuantizer(4, "weight", 6, learn=False).magnitude, nn.Parameter)
    wq.initialise(torch.full((6, 10), -0.5))            # scale = magnitude * 2 / sqrt(Q_P)
    assert torch.allclose(wq.magnitude, torch.full((6,), 0.5))
    assert torch.allclose(wq.scale, torch.full((6,), 1 / math.sqrt(7)))


# ----- bad input ------------------------------------------------------------------------------

def test_bad_input():
    x, s, z = torch.randn(4), torch.tensor(0.1), torch.tensor(0)
    for bits in (0, 17, 2.0, True):
        with pytest.raises(ValueError, match="bits"):
            lsq_fake_quantize(x, s, z, bits)
    with pytest.raises(ValueError, match="positive"):
        lsq_fake_quantize(x, torch.tensor(0.0), z, 4)
    with pytest.raises(ValueError, match="positive"):
        lsq_fake_quantize(x, torch.tensor(-0.1), z, 4)
    with pytest.raises(TypeError, match="float tensor"):
        lsq_fake_quantize(x, 0.1, z, 4)
    with pytest.raises(ValueError, match="NaN"):
        lsq_fake_quantize(torch.tensor([1.0, float("nan")]), s, z, 4)
    with pytest.raises(ValueError, match="zero_point"):
        lsq_fake_quantize(x, s, torch.tensor(20), 4, signed=False)
    with pytest.raises(ValueError, match="per-channel"):
        lsq_fake_quantize(torch.randn(3, 4), torch.ones(4), torch.zeros(4), 4, axis=0)
    with pytest.raises(ValueError, match="Q_P"):
        lsq_grad_scale(10, 1)                       # signed 1-bit: no positive level
    with pytest.raises(ValueError, match="positive int"):
        lsq_grad_scale(0, 4)
    with pytest.raises(ValueError, match="kind"):
        LSQQuantizer(4, "bias")
    with pytest.raises(ValueError, match="channels"):
        LSQQuantizer(4, "weight")
