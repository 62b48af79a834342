"""Fake-quant modules: Conv2d / Linear that compute with quantized weights and inputs.

Introduced in notebook 02. A wrapper keeps the float layer and, in its forward pass, uses
``fake_quantize(weight)`` (symmetric, signed, per output channel or per tensor) and, if
``act_bits`` is set, ``fake_quantize(input)`` (asymmetric, unsigned, one range per
tensor set by an observer). The arithmetic stays float, but every value it sees is one a
``bits``-bit integer kernel would see: this is how accuracy after quantization is measured.

Life of a quantized model (the PTQ flow of :mod:`qlib.quant.ptq`)::

    model = fold_batchnorm(model)                       # conv + BN -> one conv (fold.py)
    qmodel = quantize_model(model, 8, act_bits=8)       # swap layers, insert observers
    calibrate(qmodel, batches)                          # observers watch float activations
    freeze(qmodel)                                      # ranges -> scale, zero point

Weight-only models (``act_bits=None``) come back frozen and ready to use.

>>> from qlib.models import mlp
>>> q = quantize_model(mlp(), 4)
>>> type(q[1]).__name__, q[1].weight_bits
('QuantLinear', 4)
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._util import batch_inputs, check_bits, set_submodule, warn_other_convs, weight_layers
from .affine import fake_quantize, quantize
from .fold import fold_batchnorm  # re-exported: folding is step 1 of the PTQ flow
from .observers import ObserverSpec, make_observer

__all__ = ["QuantLayer", "QuantConv2d", "QuantLinear", "quantize_model", "quant_layers",
           "fold_batchnorm", "calibrate", "freeze", "SUPPORTED", "supported_layers",
           "wrapper_for"]


class QuantLayer(nn.Module):
    """Base of :class:`QuantConv2d` and :class:`QuantLinear`: wraps ``layer`` (kept float).

    ``weight_bits`` in 1..16: weights are quantized symmetric signed, per output channel
    (axis 0) if ``per_channel`` else per tensor, with ranges from ``weight_observer``.
    ``act_bits`` (None: float inputs): inputs are quantized asymmetric unsigned with a
    range from ``observer`` (a name in OBSERVERS, a class or a factory). While
    ``calibrating`` the layer records its input and computes in float; :meth:`freeze`
    fixes the qparams (buffers ``weight_scale, weight_zero_point, act_scale,
    act_zero_point``) and switches to fake quantization.
    """

    def __init__(self, layer: nn.Module, weight_bits: int = 8, act_bits: int | None = None,
                 *, per_channel: bool = True, observer: ObserverSpec = "minmax",
                 weight_observer: ObserverSpec = "minmax") -> None:
        super().__init__()
        self.layer = layer
        self.weight_bits = check_bits(weight_bits)
        self.act_bits = None if act_bits is None else check_bits(act_bits)
        self.per_channel = per_channel
        self.weight_observer = weight_observer
        self.act_observer = None if act_bits is None else make_observer(observer, act_bits)
        for name in ("weight_scale", "weight_zero_point", "act_scale", "act_zero_point"):
            self.register_buffer(name, None)
        self.calibrating = act_bits is not None
        if not self.calibrating:
            self.freeze()

    @property
    def weight(self) -> Tensor:
        """The float weight (out, ...) of the wrapped layer."""
        return self.layer.weight

    @property
    def bias(self) -> Tensor | None:
        return self.layer.bias

    @property
    def frozen(self) -> bool:
        return not self.calibrating and self.weight_scale is not None

    def _axis(self) -> int | None:
        return 0 if self.per_channel else None

    def freeze(self) -> None:
        """Compute the weight qparams from the current weight and the activation qparams
        from the observer (ValueError if it saw no calibration batch); start fake-quant."""
        obs = make_observer(self.weight_observer, self.weight_bits, symmetric=True,
                            signed=True, axis=self._axis())
        obs(self.weight.detach())
        self.weight_scale, self.weight_zero_point = obs.calculate_qparams()
        if self.act_observer is not None:
            self.act_scale, self.act_zero_point = self.act_observer.calculate_qparams()
        self.calibrating = False

    def quantized_weight(self) -> tuple[Tensor, Tensor, Tensor]:
        """(q int32 weight, scale, zero_point): what an integer kernel (or a file) stores."""
        self._check_frozen()
        return (quantize(self.weight.detach(), self.weight_scale, self.weight_zero_point,
                         self.weight_bits, axis=self._axis()),
                self.weight_scale, self.weight_zero_point)

    def fake_weight(self) -> Tensor:
        """dequantize(quantize(weight)), with the straight-through gradient."""
        self._check_frozen()
        return fake_quantize(self.weight, self.weight_scale, self.weight_zero_point,
                             self.weight_bits, axis=self._axis())

    def _check_frozen(self) -> None:
        if self.weight_scale is None:
            raise RuntimeError("this layer is not frozen yet: run calibrate(model, batches) "
                               "and freeze(model) first")

    def _compute(self, x: Tensor, weight: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        if self.calibrating:
            if self.act_observer is not None:
                self.act_observer(x)
            return self.layer(x)
        if self.act_bits is not None:
            x = fake_quantize(x, self.act_scale, self.act_zero_point, self.act_bits,
                              signed=False)
        return self._compute(x, self.fake_weight())

    def extra_repr(self) -> str:
        gran = "per-channel" if self.per_channel else "per-tensor"
        return f"weight_bits={self.weight_bits} ({gran}), act_bits={self.act_bits}"


class QuantConv2d(QuantLayer):
    """Fake-quant ``nn.Conv2d``: (N, C_in, H, W) -> (N, C_out, H', W'); see QuantLayer."""

    def _compute(self, x: Tensor, weight: Tensor) -> Tensor:
        return self.layer._conv_forward(x, weight, self.layer.bias)


class QuantLinear(QuantLayer):
    """Fake-quant ``nn.Linear``: (N, in) -> (N, out); see QuantLayer."""

    def _compute(self, x: Tensor, weight: Tensor) -> Tensor:
        return F.linear(x, weight, self.layer.bias)


#: Float layer type -> its fake-quant wrapper.
SUPPORTED: dict[type[nn.Module], type[QuantLayer]] = {nn.Conv2d: QuantConv2d,
                                                      nn.Linear: QuantLinear}


def supported_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers :func:`quantize_model` can wrap (instances of SUPPORTED's keys), by name."""
    return weight_layers(model, tuple(SUPPORTED))


def wrapper_for(layer: nn.Module) -> type[QuantLayer]:
    """The fake-quant wrapper class of a float layer (subclasses of Conv2d / Linear too)."""
    for cls, wrapper in SUPPORTED.items():
        if isinstance(layer, cls):
            return wrapper
    raise TypeError(f"no fake-quant wrapper for {type(layer).__name__}; supported: "
                    f"{[t.__name__ for t in SUPPORTED]}")


def quantize_model(model: nn.Module, weight_bits: int | Mapping[str, int],
                   act_bits: int | None = None, per_channel: bool = True,
                   observer: ObserverSpec = "minmax", *, weight_observer: ObserverSpec =
                   "minmax", inplace: bool = False) -> nn.Module:
    """Swap every ``nn.Conv2d`` / ``nn.Linear`` for its fake-quant wrapper (a copy by default).

    ``weight_bits`` is one bit width for all layers or ``{layer name: bits}`` (names as in
    ``model.named_modules()``; layers left out stay float: mixed precision and sensitivity
    analysis). With ``act_bits`` the model comes back calibrating: run :func:`calibrate`
    then :func:`freeze`. ValueError for a model without Conv2d / Linear. Notebook 02.

    >>> from qlib.models import mlp
    >>> q = quantize_model(mlp(), {"3": 2})   # only the last layer, at 2 bits
    >>> [type(m).__name__ for m in q]
    ['Flatten', 'Linear', 'ReLU', 'QuantLinear']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    layers = supported_layers(model)
    warn_other_convs(model, "quantization")
    if not layers:
        raise ValueError(f"{type(model).__name__} has no supported layer to quantize; "
                         f"supported: {[t.__name__ for t in SUPPORTED]}")
    if isinstance(weight_bits, Mapping):
        unknown = sorted(set(weight_bits) - set(layers))
        if unknown:
            raise ValueError(f"unknown layer names {unknown}; quantizable layers: "
                             f"{sorted(layers)}")
        plan = {n: check_bits(b) for n, b in weight_bits.items()}
    else:
        plan = {n: check_bits(weight_bits) for n in layers}
    if act_bits is not None:
        check_bits(act_bits)
    model = model if inplace else copy.deepcopy(model)
    for name, bits in plan.items():
        float_layer = model.get_submodule(name) if name else model
        wrapper = wrapper_for(float_layer)(
            float_layer, bits, act_bits, per_channel=per_channel, observer=observer,
            weight_observer=weight_observer)
        if not name:
            return wrapper
        set_submodule(model, name, wrapper)
    return model


def quant_layers(model: nn.Module) -> dict[str, QuantLayer]:
    """The fake-quant wrappers of a model by name (``"features.0"`` ...)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer)}


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable, *, progress: bool = False) -> int:
    """Run calibration batches (tensors (N, C, H, W) or (x, y) pairs) through a model
    returned by :func:`quantize_model` so that its observers record activation ranges.

    Puts every wrapper back into calibrating mode. Returns the number of images seen;
    ValueError for an empty calibration set or a model without fake-quant layers.
    """
    layers = quant_layers(model)
    if not layers:
        raise ValueError("the model has no fake-quant layer: call quantize_model first")
    for layer in layers.values():
        layer.calibrating = layer.act_observer is not None
    was_training, seen = model.training, 0
    model.eval()
    for batch in tqdm(batches, desc="calibrate", disable=not progress, leave=False):
        x = batch_inputs(batch)
        model(x)
        seen += len(x)
    model.train(was_training)
    if seen == 0:
        raise ValueError("the calibration set is empty: give at least one batch of images "
                         "(e.g. qlib.data.calibration_batches(data, 256))")
    return seen


def freeze(model: nn.Module) -> nn.Module:
    """Fix every wrapper's qparams from its observer (see :meth:`QuantLayer.freeze`)."""
    layers = quant_layers(model)
    if not layers:
        raise ValueError("the model has no fake-quant layer: call quantize_model first")
    for layer in layers.values():
        layer.freeze()
    return model.eval()
