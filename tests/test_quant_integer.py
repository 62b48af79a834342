"""qlib.quant.kernels / qlib.quant.integer: integer-only kernels and the integer course model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qlib.models import mlp
from qlib.quant import (calibrate, dequantize, freeze, quant_layers, quantize,
                        quantize_model)
from qlib.quant.integer import (INT32_MAX, IntConv2d, IntegerModel, IntLinear, im2col,
                                int_conv2d, int_linear, int_max_pool2d, quantize_multiplier,
                                requantize, to_integer, zero_point_offset)
from qlib.quant.packing import serialized_size
from qlib.quant.ptq import ptq
from qlib.recipes import RECIPES

G = torch.Generator().manual_seed(0)


def _rand_int(lo, hi, shape, dtype=torch.int64):
    return torch.randint(lo, hi + 1, shape, generator=G).to(dtype)


# ----- quantize_multiplier / requantize --------------------------------------------------

def test_quantize_multiplier_round_trip():
    ms = torch.logspace(-9, 9, 400, base=2.0, dtype=torch.float64).tolist() + [1e-6, 0.1, 1.0]
    for m in ms:
        m0, n = quantize_multiplier(m)
        assert isinstance(m0, int) and (1 << 30) <= m0 < (1 << 31) and 1 <= n <= 62
        assert abs(m0 * 2.0 ** -n - m) / m <= 2.0 ** -31
    assert quantize_multiplier(0.5) == (1 << 30, 31)
    assert quantize_multiplier(1.0 - 2 ** -40) == (1 << 30, 30)  # M0 rounds up to 2^31
    m0, n = quantize_multiplier(torch.tensor([0.25, 3.0]))
    assert m0.dtype == torch.int32 and m0.tolist() == [1 << 30, 3 << 29] and n.tolist() == [32, 29]


@pytest.mark.parametrize("bad", [0.0, -0.5, math.nan, math.inf, 2.0 ** 31, 1e-12, "1"])
def test_quantize_multiplier_bad_input(bad):
    with pytest.raises(ValueError):
        quantize_multiplier(bad)


def test_requantize_matches_float_reference():
    acc = _rand_int(-(1 << 24), 1 << 24, (64, 6), torch.int32)
    m = torch.tensor([3e-5, 1e-4, 7.7e-4, 0.013, 0.21, 1.7], dtype=torch.float64)
    m0, n = quantize_multiplier(m)
    z = torch.tensor([0, 3, 128, 200, 255, 17])
    out = requantize(acc, m0, n, z, -(1 << 25), 1 << 25)   # wide: no clamping
    assert out.dtype == torch.int32
    # exact reference with Python integers: round half up of acc M0 2^-n
    exact = torch.tensor([[(int(a) * int(m0[c]) + (1 << (int(n[c]) - 1)) >> int(n[c])) + int(z[c])
                           for c, a in enumerate(row)] for row in acc])
    assert torch.equal(out.long(), exact)
    # float reference round(acc M) + z: equal except where acc M lies within the 2^-31
    # relative error of M0 2^-n of a tie (x.5)
    real = acc.double() * m
    ref = torch.round(real) + z
    near_tie = ((real - real.floor() - 0.5).abs() <= real.abs() * 2.0 ** -30 + 1e-9)
    assert (out.double() - ref).abs().max() <= 1
    assert bool(((out.double() == ref) | near_tie).all())
    assert float((out.double() == ref).float().mean()) > 0.98


def test_requantize_rounding_clamp_relu_and_dtypes():
    m0, n = quantize_multiplier(0.5)
    acc = torch.tensor([[-3, -1, 1, 3, 1000, -1000]])
    # half up: -1.5 -> -1, -0.5 -> 0, 0.5 -> 1, 1.5 -> 2; clamped to [0, 255] around z = 10
    assert requantize(acc, m0, n, 10, 0, 255).tolist() == [[9, 10, 11, 12, 255, 0]]
    assert requantize(acc, m0, n, 10, 10, 255).tolist() == [[10, 10, 11, 12, 255, 10]]  # ReLU
    assert requantize(acc, m0, n, 0, -128, 127).dtype == torch.int8
    with pytest.raises(TypeError, match="integer tensor"):
        requantize(acc.float(), m0, n, 0, 0, 255)
    with pytest.raises(ValueError, match="2\\^30"):
        requantize(acc, 5, n, 0, 0, 255)
    with pytest.raises(ValueError, match="zero_point"):
        requantize(acc, m0, n, 300, 0, 255)
    with pytest.raises(ValueError, match="per channel"):
        requantize(acc, torch.tensor([m0, m0]), n, 0, 0, 255)


# ----- int_linear / int_conv2d / max pool against PyTorch --------------------------------

def _qparams(c):
    s_x, z_x = torch.tensor(0.02), 77
    s_w = torch.rand(c, generator=G, dtype=torch.float64).float() * 0.01 + 1e-3
    z_w = _rand_int(-5, 5, (c,))           # non-zero weight zero points exercise every term
    return s_x, z_x, s_w, z_w


def test_int_linear_exact_and_against_f_linear():
    n, k, c = 9, 50, 7
    s_x, z_x, s_w, z_w = _qparams(c)
    q_x, q_w = _rand_int(0, 255, (n, k), torch.uint8), _rand_int(-128, 127, (c, k), torch.int8)
    b_q = _rand_int(-5000, 5000, (c,), torch.int32)
    acc = int_linear(q_x, q_w, z_x, z_w, b_q)
    assert acc.dtype == torch.int32 and acc.shape == (n, c)
    naive = ((q_x.long() - z_x)[:, None, :] * (q_w.long() - z_w[:, None])[None]).sum(-1) + b_q
    assert torch.equal(acc.long(), naive)
    # against torch on the dequantized values, in float64
    x = (q_x.double() - z_x) * s_x.double()
    w = (q_w.double() - z_w[:, None]) * s_w.double()[:, None]
    ref = F.linear(x, w, b_q.double() * s_x.double() * s_w.double())
    assert torch.allclose(acc.double() * s_x.double() * s_w.double(), ref, rtol=1e-9, atol=1e-9)
    off = zero_point_offset(q_w, z_x, z_w, b_q)
    assert torch.equal(off, b_q - z_x * q_w.long().sum(1) + k * z_x * z_w)


@pytest.mark.parametrize("stride,padding", [(1, 2), (2, 1), ((1, 2), (0, 1))])
def test_int_conv2d_against_f_conv2d(stride, padding):
    c_in, c_out = 3, 5
    s_x, z_x, s_w, z_w = _qparams(c_out)
    q_x = _rand_int(0, 255, (2, c_in, 11, 9), torch.uint8)
    q_w = _rand_int(-127, 127, (c_out, c_in, 3, 5), torch.int8)
    b_q = _rand_int(-999, 999, (c_out,), torch.int32)
    acc = int_conv2d(q_x, q_w, z_x, z_w, b_q, stride=stride, padding=padding)
    x = (q_x.double() - z_x) * s_x.double()          # padding z_x <-> real zero padding
    w = (q_w.double() - z_w.view(-1, 1, 1, 1)) * s_w.double().view(-1, 1, 1, 1)
    ref = F.conv2d(x, w, b_q.double() * s_x.double() * s_w.double(), stride, padding)
    assert acc.dtype == torch.int32 and acc.shape == ref.shape
    scale = (s_x.double() * s_w.double()).view(1, -1, 1, 1)
    assert torch.allclose(acc.double() * scale, ref, rtol=1e-9, atol=1e-9)


def test_im2col_matches_f_unfold():
    x = torch.randn(2, 3, 7, 6, generator=G)
    cols = im2col(x, (3, 2), (2, 1), (1, 0))
    ref = F.unfold(x, (3, 2), stride=(2, 1), padding=(1, 0))      # (N, C kh kw, L)
    assert torch.equal(cols, ref.transpose(1, 2).reshape(-1, ref.shape[1]))


def test_int_max_pool2d_against_torch():
    q = _rand_int(0, 255, (2, 3, 9, 8), torch.uint8)
    assert torch.equal(int_max_pool2d(q, 2), F.max_pool2d(q, 2))
    assert torch.equal(int_max_pool2d(q, (3, 2), (2, 1)), F.max_pool2d(q, (3, 2), (2, 1)))
    with pytest.raises(TypeError):
        int_max_pool2d(q.float(), 2)


def test_kernels_bad_input():
    q_x, q_w = torch.zeros(2, 4, dtype=torch.uint8), torch.zeros(3, 4, dtype=torch.int8)
    with pytest.raises(TypeError, match="integer tensor"):
        int_linear(q_x.float(), q_w, 0)
    with pytest.raises(ValueError, match="same K"):
        int_linear(q_x, torch.zeros(3, 5, dtype=torch.int8), 0)
    with pytest.raises(ValueError, match="bias must have shape"):
        int_linear(q_x, q_w, 0, 0, torch.zeros(4, dtype=torch.int32))
    with pytest.raises(ValueError, match="overflows int32"):
        int_linear(torch.full((1, 4), 1 << 20), torch.full((1, 4), 1 << 20), 0)
    with pytest.raises(ValueError, match="same C_in"):
        int_conv2d(torch.zeros(1, 2, 5, 5, dtype=torch.uint8), q_w.view(3, 4, 1, 1), 0)
    with pytest.raises(ValueError, match="larger than"):
        int_conv2d(torch.zeros(1, 4, 2, 2, dtype=torch.uint8), torch.zeros(1, 4, 3, 3,
                                                                         dtype=torch.int8), 0)
    with pytest.raises(ValueError, match="stride"):
        int_conv2d(torch.zeros(1, 4, 5, 5, dtype=torch.uint8), q_w.view(3, 4, 1, 1), 0, stride=0)


# ----- the integer course model ----------------------------------------------------------

@pytest.fixture(scope="module")
def pair(baseline, data):
    torch.manual_seed(0)
    qmodel = ptq(baseline, data, 8, 8)
    return qmodel, to_integer(qmodel, data)


@torch.no_grad()
def test_integer_model_matches_fake_quant(pair, data):
    qmodel, imodel = pair
    x, y = data.test.tensors
    fq, iq = qmodel(x), imodel(x)
    steps = (iq - fq).abs() / imodel.output_scale        # logits in units of the output scale
    within = float((steps <= 1).float().mean())
    acc_fq, acc_int = float((fq.argmax(1) == y).float().mean()), \
        float((iq.argmax(1) == y).float().mean())
    print(f"within one step: {within:.4%}, max {float(steps.max()):.2f} steps; "
          f"accuracy fake-quant {acc_fq:.4f}, integer {acc_int:.4f}")
    assert within >= 0.999
    assert abs(acc_fq - acc_int) <= 0.001
    assert float((iq.argmax(1) == fq.argmax(1)).float().mean()) >= 0.998


@torch.no_grad()
def test_integer_activations_match_fake_quant_inputs(pair, data):
    """The uint8 tensor entering each integer layer is what fake quant rounds its input to."""
    qmodel, imodel = pair
    x = data.test.tensors[0][:200]
    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, a: seen.append(
        quantize(a[0], m.act_scale, m.act_zero_point, 8, signed=False)))
        for m in quant_layers(qmodel).values()]
    qmodel(x)
    for h in hooks:
        h.remove()
    q, k = imodel.quantize_input(x), 0
    for lay in imodel.layers:
        if isinstance(lay, IntLinear):
            assert q.dtype == torch.uint8
            # int32 biases round b to S_x S_w: pre-activations move by <= M / 2 steps
            # (~1e-3), which flips the rare near-ties; those flips propagate a little.
            diff = (q.int() - seen[k].view(q.shape)).abs()
            assert diff.max() <= 1 and float((diff == 0).float().mean()) >= 0.995, k
            k += 1
        q = lay(q)
    assert k == 4


@torch.no_grad()
def test_int32_accumulators_do_not_overflow(pair, data):
    _, imodel = pair
    assert [type(m).__name__ for m in imodel.layers] == [
        "IntConv2d", "IntMaxPool2d", "IntConv2d", "IntMaxPool2d", "Flatten", "IntLinear",
        "IntLinear"]
    assert [m.relu for m in imodel.int_layers()] == [True, True, True, False]
    q = imodel.quantize_input(data.test.tensors[0][:256])
    for lay in imodel.layers:
        if isinstance(lay, IntLinear):
            bound = lay.accumulator_bound()
            assert bound < INT32_MAX // 50          # course model: at most ~2.6e7 << 2^31
            acc = lay.accumulate(q)
            assert acc.dtype == torch.int32 and int(acc.abs().max()) <= bound
        q = lay(q)


def test_integer_model_state_is_the_shipped_file(pair, baseline):
    _, imodel = pair
    state = imodel.state_dict()
    for lay_name, lay in imodel.layers.named_children():
        if isinstance(lay, IntLinear):
            assert state[f"layers.{lay_name}.weight"].dtype == torch.int8
            assert state[f"layers.{lay_name}.bias"].dtype == torch.int32
            assert state[f"layers.{lay_name}.multiplier"].dtype == torch.int32
    assert all(not v.is_floating_point() or v.ndim == 0 for v in state.values())
    fp32 = serialized_size(baseline.state_dict())
    assert serialized_size(state) < fp32 / 3


def test_single_layer_model_against_f_conv2d():
    """A one-conv model: the integer layer's dequantized accumulator is F.conv2d of the
    dequantized input and weight, and the requantized output its rounding."""
    torch.manual_seed(3)
    q = quantize_model(nn.Sequential(nn.Conv2d(2, 4, 3, padding=1)), 8, 8)
    x = torch.randn(8, 2, 6, 6)
    calibrate(q, [x])
    freeze(q)
    imodel = to_integer(q, [x])
    lay, fq = imodel.layers[0], q[0]
    assert isinstance(lay, IntConv2d)
    q_x = imodel.quantize_input(x)
    q_w, s_w, _ = fq.quantized_weight()
    ref = F.conv2d(dequantize(q_x, fq.act_scale, fq.act_zero_point),
                   dequantize(q_w, s_w, torch.zeros(4, dtype=torch.long), axis=0),
                   fq.layer.bias.detach(), padding=1)
    b_q = torch.round(fq.layer.bias.detach().double() / (fq.act_scale.double() * s_w.double()))
    assert torch.equal(lay.quantized_bias(), b_q.long())
    with torch.no_grad():
        assert torch.allclose(q(x), ref, atol=1e-5)
        s_acc = (fq.act_scale * s_w).view(1, -1, 1, 1)
        # b_q is the bias rounded to the accumulator scale: at most half a step off
        assert ((lay.accumulate(q_x) * s_acc - ref).abs() <= 0.5 * s_acc + 1e-5).all()
        steps = (imodel(x) - ref).abs() / imodel.output_scale
    assert float(steps.max()) <= 0.51


def test_mlp_and_per_tensor_weights(data):
    torch.manual_seed(0)
    float_model = mlp().eval()
    q = ptq(float_model, data, 8, 8, per_channel=False, num_images=128)
    imodel = to_integer(q, data, num_images=256)
    x = data.test.tensors[0][:300]
    with torch.no_grad():
        steps = (imodel(x) - q(x)).abs() / imodel.output_scale
    assert type(imodel.layers[0]).__name__ == "Flatten"
    assert float((steps <= 1).float().mean()) >= 0.999


def test_to_integer_bad_input(data):
    x = data.train.tensors[0][:16]
    calibrating = quantize_model(mlp(), 8, 8)
    with pytest.raises(ValueError, match="frozen"):
        to_integer(calibrating, [x])
    with pytest.raises(ValueError, match="frozen"):
        to_integer(quantize_model(mlp(), 8), [x])                  # weight-only
    with pytest.raises(ValueError, match="float layer"):
        to_integer(mlp(), [x])
    with pytest.raises(ValueError, match="no fake-quant layer"):
        to_integer(nn.Sequential(nn.Flatten(), nn.ReLU()), [x])
    calibrate(calibrating, [x])
    freeze(calibrating)
    with pytest.raises(ValueError, match="no integer version"):
        to_integer(nn.Sequential(calibrating, nn.Sigmoid()), [x])
    with pytest.raises(ValueError, match="before the first"):
        to_integer(nn.Sequential(nn.ReLU(), calibrating), [x])

    class Skip(nn.Module):                                         # not a plain sequence
        def __init__(self):
            super().__init__()
            self.body = calibrating

        def forward(self, t):
            return self.body(t) + 1.0

    with pytest.raises(ValueError, match="registration order"):
        to_integer(Skip(), [x])
    with pytest.raises(ValueError, match="no data"):
        to_integer(calibrating, [])
    with pytest.raises(TypeError, match="nn.Module"):
        to_integer("model", [x])
    with pytest.raises(TypeError, match="float images"):
        to_integer(calibrating, [x]).quantize_input(torch.zeros(1, 784, dtype=torch.uint8))


def test_recipe_registered_and_deterministic(baseline, data, pair):
    """The recipe rebuilds, from scratch, exactly the fixture's integer model."""
    assert RECIPES["int8-integer"].technique == "quantization"
    before = {k: v.clone() for k, v in baseline.state_dict().items()}
    v = RECIPES["int8-integer"].fn(baseline, data)
    assert all(torch.equal(before[k], t) for k, t in baseline.state_dict().items())
    assert isinstance(v.model, IntegerModel)
    state, ref = v.model.state_dict(), pair[1].state_dict()
    assert state.keys() == ref.keys() and all(torch.equal(state[k], ref[k]) for k in state)
    assert v.size_bytes == serialized_size(state)
    assert v.params == sum(p.numel() for n, p in baseline.named_parameters()
                           if "features.1" not in n and "features.5" not in n) + 16 + 32
    print(f"int8-integer: {v.size_bytes} B, {v.params} params, fp32 "
          f"{serialized_size(baseline.state_dict())} B")


def test_to_integer_names_the_layer_it_cannot_convert() -> None:
    """A depthwise conv has no integer version here: the error names it, and says why."""
    from torch import nn

    from qlib.quant import freeze, quantize_model

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=4),
                          nn.Flatten(), nn.Linear(4 * 24 * 24, 10)).eval()
    q = quantize_model(model, 8, 8)
    q(torch.randn(2, 1, 28, 28))
    freeze(q)
    with pytest.raises(ValueError, match=r"layer '2': integer conv supports groups=1"):
        to_integer(q, [torch.randn(2, 1, 28, 28)])
