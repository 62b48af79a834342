"""Where a quantized model loses signal: SQNR of each layer's weights and input activations.

Introduced in notebook 02 (per-tensor vs per-channel weights, k-means vs linear, observers
compared). Accuracy on a few hundred images moves in coarse steps and hides small errors;
the signal-to-quantization-noise ratio of each quantizer (:func:`~qlib.quant.formats.sqnr_db`)
shows them, layer by layer::

    SQNR = 10 log10( sum x^2 / sum (x - x_hat)^2 )  dB      (about 6 dB per bit)

>>> from qlib.models import mlp
>>> from qlib.quant import quantize_model
>>> sorted(weight_sqnr(quantize_model(mlp(), 8)))
['1', '3']
"""

from __future__ import annotations

from collections.abc import Iterable

import math

import torch
from torch import Tensor, nn

from .affine import fake_quantize
from .fakequant import quant_layers, supported_layers
from .formats import sqnr_db

__all__ = ["weight_sqnr", "activation_sqnr"]


def _float_weights(model: nn.Module) -> dict[str, Tensor]:
    return {n: m.weight.detach() for n, m in supported_layers(model).items()}


def weight_sqnr(model: nn.Module, reference: nn.Module | None = None) -> dict[str, float]:
    """Weight SQNR in dB of each Conv2d / Linear layer, by layer name.

    Without ``reference``: ``model`` comes from :func:`~qlib.quant.fakequant.quantize_model`
    and each fake-quant layer compares its float weight W with ``fake_weight()`` = fq(W).
    With ``reference`` (the float model): each Conv2d / Linear weight of ``model`` (for
    instance k-means shared weights) is compared with the reference's weight of the same
    name, and fake-quant layers of ``model`` contribute their quantized weight. Notebook 02.

    >>> m = nn.Linear(4, 2); m2 = nn.Linear(4, 2); _ = m2.load_state_dict(m.state_dict())
    >>> weight_sqnr(m2, m)
    {'': inf}
    """
    if reference is None:
        layers = quant_layers(model)
        if not layers:
            raise ValueError("model has no fake-quant layer: quantize it with quantize_model, "
                             "or pass the float model as reference=")
        return {n: sqnr_db(m.weight, m.fake_weight()) for n, m in layers.items()}
    ref = _float_weights(reference)
    ours = _float_weights(model)
    ours.update({n: m.fake_weight().detach() for n, m in quant_layers(model).items()})
    missing = sorted(set(ref) - set(ours))
    if not ref or missing:
        raise ValueError(f"model and reference must hold the same Conv2d / Linear layers; "
                         f"reference has {sorted(ref)}, model lacks {missing}")
    for n in ref:
        if ref[n].shape != ours[n].shape:
            raise ValueError(f"layer {n!r}: weight shapes differ, {tuple(ref[n].shape)} in "
                             f"the reference and {tuple(ours[n].shape)} in the model")
    return {n: sqnr_db(ref[n], ours[n]) for n in ref}


@torch.no_grad()
def activation_sqnr(qmodel: nn.Module, batches: Tensor | Iterable[Tensor]) -> dict[str, float]:
    """SQNR in dB of each frozen fake-quant layer's *input* quantizer on the given images.

    For layer l with ``act_bits``, x_l is the input it receives while ``qmodel`` runs on
    the images (upstream layers quantized, as deployed) and the noise is
    x_l - fq(x_l; act_scale, act_zero_point): the error that the observer's range caused,
    rounding and clipping. Use held-out images (the validation split), not the calibration
    set. Weight-only layers are left out. ``batches``: one tensor (N, C, H, W) or an iterable
    of them. Notebook 02 compares observers with it.

    >>> activation_sqnr(ptq(model, data, 8, 4), data.val.tensors[0])  # doctest: +SKIP
    {'features.0': 32.4, 'features.4': 15.9, 'classifier.2': 21.6, 'classifier.4': 22.4}
    """
    layers = {n: m for n, m in quant_layers(qmodel).items() if m.act_bits is not None}
    if not layers:
        raise ValueError("qmodel has no layer with quantized activations (act_bits): build "
                         "it with quantize_model(..., act_bits=...) and calibrate it")
    if not all(m.frozen for m in layers.values()):
        raise ValueError("qmodel is not frozen: run calibrate(qmodel, batches) and "
                         "freeze(qmodel) first")
    signal = {n: 0.0 for n in layers}
    noise = {n: 0.0 for n in layers}

    def hook(name: str):
        def record(module: nn.Module, args: tuple) -> None:
            x = args[0].double()                                  # the layer's float input
            x_hat = fake_quantize(args[0], module.act_scale, module.act_zero_point,
                                  module.act_bits, signed=False).double()
            signal[name] += float((x ** 2).sum())
            noise[name] += float(((x - x_hat) ** 2).sum())
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    was_training = qmodel.training
    qmodel.eval()
    seen = 0
    try:
        for x in [batches] if isinstance(batches, Tensor) else batches:
            qmodel(x)
            seen += len(x)
    finally:
        for h in handles:
            h.remove()
        qmodel.train(was_training)
    if seen == 0:
        raise ValueError("no images given: pass a tensor (N, C, H, W) or batches of them")
    return {n: (10.0 * math.log10(signal[n] / noise[n]) if signal[n] > 0 else -math.inf)
            if noise[n] > 0 else math.inf for n in layers}
