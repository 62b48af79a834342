"""Integer-only models: a PTQ'd fake-quant model converted to run on integers end to end.

Introduced in notebook 03. :func:`to_integer` turns a BN-folded, calibrated, frozen
fake-quant model (:func:`~qlib.quant.ptq.ptq`) into an :class:`IntegerModel`: the float
image is quantized once (uint8), every Conv2d / Linear runs as int8 x uint8 products with an
int32 accumulator and a fixed-point requantization (:mod:`qlib.quant.kernels`), ReLU is
the clamp of that requantization, max pooling and flatten move integers, and only the
logits are dequantized. The activation quantizer of fake-quant layer k+1 sets the output
scale of layer k (it quantizes its input); the last layer's output scale is calibrated here.

    S_x, z_x = act qparams of layer k,   S_w[c] its weight scales (symmetric, z_w = 0)
    S_y, z_y = act qparams of layer k+1 (or the calibrated output qparams)
    b_q[c] = round(b[c] / (S_x S_w[c])),  M[c] = S_x S_w[c] / S_y = M0[c] 2^-n[c]

The model's state dict is the shipped file: int8 weights, int32 biases (zero-point terms
folded in), int32 multipliers M0, int8 shifts n, zero points, and the input / output
scales. The kernels are re-exported here.

>>> model, data = qlib.get_baseline()                                  # doctest: +SKIP
>>> imodel = to_integer(ptq(model, data, 8, 8), data)                  # doctest: +SKIP
>>> imodel(data.test.tensors[0][:2]).shape                             # doctest: +SKIP
torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ..data import Splits, calibration_batches
from .affine import dequantize, qrange, quantize
from .._util import batch_inputs
from .fakequant import QuantConv2d, QuantLayer
from .kernels import (INT32_MAX, INT32_MIN, accumulate, im2col, int_conv2d, int_linear,
                      int_max_pool2d, quantize_multiplier, requantize, zero_point_offset)
from .observers import MinMaxObserver

__all__ = ["IntLinear", "IntConv2d", "IntMaxPool2d", "IntegerModel", "to_integer",
           "quantize_multiplier", "requantize", "int_linear", "int_conv2d", "int_max_pool2d",
           "zero_point_offset", "im2col", "INT32_MIN", "INT32_MAX"]


class IntLinear(nn.Module):
    """Integer Linear: uint8 (N, K) -> requantized (N, C). Buffers (the shipped numbers):
    ``weight`` int8 (C, K), ``w_zero_point`` int32 (C,), ``bias`` int32 (C,) = b_q with the
    zero-point terms folded in (:func:`zero_point_offset`), ``multiplier`` int32 (C,) = M0,
    ``shift`` int8 (C,) = n, ``x_zero_point`` / ``y_zero_point`` int32. ``relu`` clamps
    at y_zero_point; the output range is [qmin, qmax], the input's [0, x_qmax]."""

    def __init__(self, q_w: Tensor, w_zero_point: Tensor, bias_q: Tensor, x_zero_point: int,
                 x_qmax: int, m: Tensor, y_zero_point: int, qmin: int, qmax: int,
                 relu: bool) -> None:
        super().__init__()
        c = q_w.shape[0]
        m0, n = quantize_multiplier(m.double().expand(c))
        z_w = w_zero_point.to(torch.int32).expand(c).clone()
        offset = zero_point_offset(q_w.reshape(c, -1), x_zero_point, z_w, bias_q)
        self.register_buffer("weight", q_w.to(torch.int8))
        self.register_buffer("w_zero_point", z_w)
        self.register_buffer("bias", _fits_int32(offset, "the folded bias"))
        self.register_buffer("multiplier", m0)
        self.register_buffer("shift", n.to(torch.int8))
        self.register_buffer("x_zero_point", torch.tensor(x_zero_point, dtype=torch.int32))
        self.register_buffer("y_zero_point", torch.tensor(y_zero_point, dtype=torch.int32))
        self.x_qmax, self.qmin, self.qmax, self.relu = x_qmax, qmin, qmax, relu

    def _acc2d(self, q_x: Tensor) -> Tensor:
        """int32 accumulators as rows (M, C): M = N here, N H' W' for a convolution."""
        return accumulate(q_x, self.weight, self.w_zero_point, self.bias.to(torch.int64))

    def _shape(self, rows: Tensor, q_x: Tensor) -> Tensor:
        return rows  # (N, C) already

    def accumulate(self, q_x: Tensor) -> Tensor:
        """int32 accumulators before requantization: (N, C), or (N, C, H', W') for a conv."""
        return self._shape(self._acc2d(q_x), q_x)

    def forward(self, q_x: Tensor) -> Tensor:
        z_y = int(self.y_zero_point)
        # requantize the rows (channel last = dim 1 of (M, C)), then lay them out: cheaper
        q_y = requantize(self._acc2d(q_x), self.multiplier, self.shift.to(torch.int64), z_y,
                         max(self.qmin, z_y) if self.relu else self.qmin, self.qmax)
        return self._shape(q_y, q_x).contiguous()

    def quantized_bias(self) -> Tensor:
        """b_q = round(b / (S_x S_w)) (C,) int64: the folded ``bias`` minus its zero-point
        terms."""
        w = self.weight.reshape(self.weight.shape[0], -1)
        return self.bias.to(torch.int64) - zero_point_offset(w, int(self.x_zero_point),
                                                             self.w_zero_point)

    def accumulator_bound(self) -> int:
        """Worst case |acc| over all inputs in [0, x_qmax]: K max|q_x - z_x| max|q_w - z_w|
        + max|b_q|, with K the products per output. Must stay below 2^31."""
        z_x = int(self.x_zero_point)
        w = self.weight.reshape(self.weight.shape[0], -1).to(torch.int64)
        dw = int((w - self.w_zero_point.to(torch.int64)[:, None]).abs().max())
        return w.shape[1] * max(z_x, self.x_qmax - z_x) * dw + \
            int(self.quantized_bias().abs().max())

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, relu={self.relu}, out=[{self.qmin}, {self.qmax}]"


class IntConv2d(IntLinear):
    """Integer Conv2d: uint8 (N, C_in, H, W) -> requantized (N, C_out, H', W'), im2col with
    z_x padding + the :class:`IntLinear` arithmetic (``weight`` int8 (C_out, C_in, kh, kw))."""

    def __init__(self, *args, stride: tuple[int, int], padding: tuple[int, int]) -> None:
        super().__init__(*args)
        self.stride, self.padding = stride, padding

    def _acc2d(self, q_x: Tensor) -> Tensor:
        w = self.weight
        cols = im2col(q_x.to(torch.int64), tuple(w.shape[2:]), self.stride, self.padding,
                      int(self.x_zero_point))                             # (N H' W', K)
        return accumulate(cols, w.reshape(w.shape[0], -1), self.w_zero_point,
                           self.bias.to(torch.int64))

    def _shape(self, rows: Tensor, q_x: Tensor) -> Tensor:
        """(N H' W', C) -> (N, C, H', W')."""
        w = self.weight
        h2 = (q_x.shape[2] + 2 * self.padding[0] - w.shape[2]) // self.stride[0] + 1
        return rows.view(q_x.shape[0], h2, -1, w.shape[0]).permute(0, 3, 1, 2)


class IntMaxPool2d(nn.Module):
    """:func:`int_max_pool2d` as a module."""

    def __init__(self, kernel_size: tuple[int, int], stride: tuple[int, int]) -> None:
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, q: Tensor) -> Tensor:
        return int_max_pool2d(q, self.kernel_size, self.stride)


class IntegerModel(nn.Module):
    """Float images in, float logits out, integers in between.

    ``forward(x)`` = dequantize(forward_int(quantize_input(x))): x (N, C, H, W) float ->
    uint8 with (``input_scale``, ``input_zero_point``) -> ``layers`` on integers -> integer
    logits (N, classes) -> S_out (q - z_out) with (``output_scale``, ``output_zero_point``).
    """

    def __init__(self, layers: list[nn.Module], input_qparams: tuple[Tensor, Tensor, int],
                 output_qparams: tuple[Tensor, Tensor, int]) -> None:
        super().__init__()
        self.layers = nn.Sequential(*layers)
        self.input_bits, self.output_bits = input_qparams[2], output_qparams[2]
        for name, (s, z, _) in (("input", input_qparams), ("output", output_qparams)):
            self.register_buffer(f"{name}_scale", s.detach().float().clone())
            self.register_buffer(f"{name}_zero_point", z.to(torch.int32).clone())

    def quantize_input(self, x: Tensor) -> Tensor:
        """q_x = clamp(round(x / S_in) + z_in, 0, 2^b - 1) as uint8 (x's shape)."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"IntegerModel takes float images (N, C, H, W), got "
                            f"{x.dtype if isinstance(x, Tensor) else type(x).__name__}")
        return quantize(x, self.input_scale, self.input_zero_point, self.input_bits,
                        signed=False).to(torch.uint8)

    def forward_int(self, q_x: Tensor) -> Tensor:
        """Integer logits (N, classes) in [0, 2^output_bits - 1] from integer images.

        At most 256 images at a time: the int64 im2col rows of the second course conv take
        320 kB per image."""
        return torch.cat([self.layers(chunk) for chunk in q_x.split(256)])

    def forward(self, x: Tensor) -> Tensor:
        return dequantize(self.forward_int(self.quantize_input(x)), self.output_scale,
                          self.output_zero_point)

    def int_layers(self) -> list[IntLinear]:
        """The integer Conv2d / Linear layers, in order."""
        return [m for m in self.layers if isinstance(m, IntLinear)]


def _fits_int32(v: Tensor, what: str) -> Tensor:
    if v.numel() and (int(v.min()) < INT32_MIN or int(v.max()) > INT32_MAX):
        raise ValueError(f"{what} does not fit int32 (range [{int(v.min())}, {int(v.max())}])")
    return v.to(torch.int32)


def _leaves(model: nn.Module) -> list[nn.Module]:
    """Modules in registration order, containers expanded, fake-quant layers kept whole."""
    kids = list(model.children())
    if isinstance(model, QuantLayer) or not kids:
        return [model]
    return [leaf for k in kids for leaf in _leaves(k)]


_PASS = (nn.Identity, nn.Dropout)          # no-ops in eval mode
_MOVE = (nn.MaxPool2d, nn.Flatten)         # commute with a monotone quantizer


def _check_leaf(m: nn.Module) -> None:
    if isinstance(m, QuantLayer):
        if not m.frozen or m.act_bits is None or m.act_bits > 8 or m.weight_bits > 8:
            raise ValueError("every Conv2d / Linear must be a frozen fake-quant layer with "
                             "weight_bits <= 8 and act_bits <= 8 (run ptq(model, data, 8, 8))")
        conv = m.layer
        if isinstance(m, QuantConv2d) and (conv.groups != 1 or conv.dilation != (1, 1) or
                                           isinstance(conv.padding, str) or
                                           conv.padding_mode != "zeros"):
            raise ValueError("integer conv supports groups=1, dilation=1 and numeric zero "
                             "padding only")
    elif isinstance(m, nn.MaxPool2d):
        if m.padding not in (0, (0, 0)) or m.dilation not in (1, (1, 1)) or m.ceil_mode:
            raise ValueError("integer max pooling supports padding=0, dilation=1, "
                             "ceil_mode=False only")
    elif isinstance(m, (nn.Conv2d, nn.Linear)):
        raise ValueError(f"{type(m).__name__} is a float layer: run ptq(model, data, 8, 8) "
                         "first (every Conv2d / Linear must be a frozen fake-quant layer)")
    elif not isinstance(m, (nn.ReLU, *_PASS, *_MOVE)):
        raise ValueError(f"{type(m).__name__} has no integer version; supported: QuantConv2d, "
                         "QuantLinear, ReLU, MaxPool2d, Flatten, Identity, Dropout")


@torch.no_grad()
def to_integer(qmodel: nn.Module, calibration: Splits | Iterable, *, output_bits: int = 8,
               num_images: int | None = None) -> IntegerModel:
    """Convert a frozen w8a8 fake-quant model (BN folded) into an :class:`IntegerModel`.

    ``qmodel``'s forward must be its modules in registration order (an ``nn.Sequential``,
    or containers of them like :class:`~qlib.models.SmallCNN`; checked on a batch). The
    output qparams (asymmetric, unsigned, ``output_bits``) come from a min-max observer
    on its logits over ``calibration``: a Splits (its first ``num_images`` training images,
    all of them by default: extreme logits are rare; on the course data 256 images clip 1%
    of the test logits, all 3500 clip 0.01%) or batches. ValueError for an unsupported
    model, a layer that is not frozen w8a8, a ReLU before the first layer or an int32
    overflow risk. Notebook 03.
    """
    if not isinstance(qmodel, nn.Module):
        raise TypeError(f"qmodel must be an nn.Module, got {type(qmodel).__name__}")
    qmodel.eval()
    leaves = [m for m in _leaves(qmodel) if not isinstance(m, _PASS)]
    names = {id(m): name for name, m in qmodel.named_modules()}
    for m in leaves:
        try:
            _check_leaf(m)
        except ValueError as err:  # the same reason, with the layer it is about
            raise ValueError(f"layer {names.get(id(m), '?')!r}: {err}") from None
    qidx = [i for i, m in enumerate(leaves) if isinstance(m, QuantLayer)]
    if not qidx:
        raise ValueError("the model has no fake-quant layer: run ptq(model, data, 8, 8) first")
    if any(isinstance(m, nn.ReLU) for m in leaves[:qidx[0]]):
        raise ValueError("a ReLU before the first Conv2d / Linear cannot be fused")
    if isinstance(calibration, Splits):
        calibration = calibration_batches(calibration, num_images or len(calibration.train),
                                          batch_size=500)
    obs = MinMaxObserver(output_bits, signed=False)
    for i, b in enumerate(calibration):
        x = batch_inputs(b)
        y = qmodel(x)
        if i == 0 and not torch.allclose(nn.Sequential(*leaves)(x), y, atol=1e-5):
            raise ValueError("the model's forward is not its layers in registration order; "
                             "pass an nn.Sequential (or SmallCNN-like containers of them)")
        obs(y)
    out_s, out_z = obs.calculate_qparams()          # ValueError if no batch was seen
    first = leaves[qidx[0]]
    layers: list[nn.Module] = []
    for j, i in enumerate(qidx):
        m = leaves[i]
        nxt = leaves[qidx[j + 1]] if j + 1 < len(qidx) else None
        s_y, z_y, y_bits = (nxt.act_scale, nxt.act_zero_point, nxt.act_bits) if nxt else \
            (out_s, out_z, output_bits)
        between = leaves[i + 1: qidx[j + 1] if nxt else len(leaves)]
        layers += [_integer_layer(m, s_y, int(z_y), qrange(y_bits, signed=False),
                                  any(isinstance(b, nn.ReLU) for b in between))]
        layers += [_move(b) for b in between if not isinstance(b, nn.ReLU)]
    layers = [_move(b) for b in leaves[:qidx[0]]] + layers
    for lay in layers:
        if isinstance(lay, IntLinear) and lay.accumulator_bound() > INT32_MAX:
            raise ValueError(f"{lay}: worst-case accumulator {lay.accumulator_bound()} "
                             "overflows int32")
    return IntegerModel(layers, (first.act_scale, first.act_zero_point, first.act_bits),
                        (out_s, out_z, output_bits)).eval()


def _move(m: nn.Module) -> nn.Module:
    if isinstance(m, nn.MaxPool2d):
        k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size,) * 2
        s = m.stride if isinstance(m.stride, tuple) else (m.stride or k[0],) * 2
        return IntMaxPool2d(k, s)
    return nn.Flatten(m.start_dim, m.end_dim)


def _integer_layer(m: QuantLayer, s_y: Tensor, z_y: int, y_range: tuple[int, int],
                   relu: bool) -> IntLinear:
    q_w, s_w, z_w = m.quantized_weight()
    c = q_w.shape[0]
    s_x, z_x = m.act_scale.double(), int(m.act_zero_point)
    s_acc = s_x * s_w.double().expand(c)                            # scale of acc, (C,)
    b = m.bias.detach().double() if m.bias is not None else torch.zeros(c, dtype=torch.float64)
    bias_q = _fits_int32(torch.round(b / s_acc).to(torch.int64), "the quantized bias")
    args = (q_w, z_w, bias_q, z_x, qrange(m.act_bits, signed=False)[1], s_acc / s_y.double(),
            z_y, *y_range, relu)
    if isinstance(m, QuantConv2d):
        return IntConv2d(*args, stride=m.layer.stride, padding=m.layer.padding)
    return IntLinear(*args)
