"""Quantization-aware training (QAT): fine-tune a model through fake quantization.

Introduced in notebook 04. Every Conv2d / Linear computes with LSQ-quantized weights (per
output channel) and inputs (per tensor), :class:`~qlib.quant.lsq.LSQQuantizer`; the
straight-through estimator carries the gradient through the rounding to the float
weights, and LSQ trains the scales. Training starts from the trained fp32 baseline and
uses :func:`qlib.train.fit`.

Batch norm is *folded into the convolutions before QAT* (:func:`prepare_qat`), with its
running statistics, W' = W * gamma / sqrt(running_var + eps): the shipped integer model has
no BN, so QAT trains exactly the weights that will be quantized, and the fine-tune is short
with a small learning rate from a trained model, where the stabilising effect of batch
statistics is not needed. The other common way keeps BN in the training graph but still
fake-quantizes the *folded* weight at every step (Jacob et al. 2018, section 3.2). PyTorch's
QAT ``torch.ao.nn.intrinsic.qat.ConvBn2d`` does so by default: it scales the weight by
gamma / sigma_running, fake-quantizes it, convolves, divides the output by the same
factor and applies BN, which in training mode normalises with the current batch's
statistics; its slower exact path (Krishnamoorthi 2018) multiplies the output of the
conv with the folded, fake-quantized weight by sigma_running / sigma_B instead.
``freeze_bn_stats`` then switches BN to its running statistics, so that the last steps
train exactly the folded, fake-quantized layer that ships.

Life of a QAT model::

    qmodel = prepare_qat(baseline, data, 4, 4)     # fold BN, LSQ wrappers, scales set
    fit(qmodel, data.loader("train", 64), epochs=4, lr=5e-4)
    frozen = convert_qat(qmodel)                   # plain frozen QuantConv2d / QuantLinear

The recipes ``qat-w4a4`` and ``qat-w2a8`` train once and are cached under ``data/models``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import Splits, calibration_batches
from .._util import check_bits, set_submodule
from ..train import fit
from .affine import EPS, choose_qparams
from .fakequant import QuantLayer, fold_batchnorm, supported_layers, wrapper_for
from .lsq import LSQQuantizer

__all__ = ["QATLayer", "qat_layers", "prepare_qat", "convert_qat", "qat"]


class QATLayer(nn.Module):
    """A Conv2d / Linear computing with LSQ-quantized weights (and inputs, if ``act_bits``).

    ``forward(x) = layer(act_quant(x))`` with ``weight_quant(layer.weight)`` in place of the
    weight; shapes as the wrapped layer. Notebook 04.
    """

    def __init__(self, layer: nn.Module, weight_bits: int, act_bits: int | None = None, *,
                 act_zero_point: int = 0, learn: bool = True) -> None:
        super().__init__()
        try:
            wrapper_for(layer)
        except TypeError:
            raise TypeError(f"QATLayer wraps Conv2d / Linear layers, got "
                            f"{type(layer).__name__}") from None
        self.layer = layer
        self.weight_quant = LSQQuantizer(weight_bits, "weight", layer.weight.shape[0],
                                         learn=learn)
        self.weight_quant.initialise(layer.weight)
        self.act_quant = None if act_bits is None else LSQQuantizer(
            act_bits, "activation", zero_point=act_zero_point, learn=learn)

    def forward(self, x: Tensor) -> Tensor:
        if self.act_quant is not None:
            x = self.act_quant(x)
        w = self.weight_quant(self.layer.weight)
        if isinstance(self.layer, nn.Conv2d):
            return self.layer._conv_forward(x, w, self.layer.bias)
        return F.linear(x, w, self.layer.bias)


def qat_layers(model: nn.Module) -> dict[str, QATLayer]:
    """The QAT wrappers of a model by name (``"features.0"`` ...)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QATLayer)}


@torch.no_grad()
def _input_stats(model: nn.Module, names: list[str], batches: Iterable
                 ) -> dict[str, tuple[float, float, float]]:
    """(min, max, mean |x|) of each named layer's input over the batches (float model)."""
    stats = {n: [math.inf, -math.inf, 0.0, 0] for n in names}
    hooks = []
    for n in names:
        def hook(_mod, args, n=n):
            x, st = args[0].detach().float(), stats[n]
            st[0], st[1] = min(st[0], float(x.min())), max(st[1], float(x.max()))
            st[2], st[3] = st[2] + float(x.abs().sum()), st[3] + x.numel()
        hooks.append(model.get_submodule(n).register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            model(batch[0] if isinstance(batch, (tuple, list)) else batch)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if any(st[3] == 0 for st in stats.values()):
        raise ValueError("the calibration set is empty: give at least one batch of images")
    return {n: (st[0], st[1], st[2] / st[3]) for n, st in stats.items()}


def prepare_qat(model: nn.Module, calibration: Splits | Iterable | None, weight_bits: int = 4,
                act_bits: int | None = 4, *, fold_bn: bool = True, learn_scales: bool = True,
                num_images: int = 256) -> nn.Module:
    """A copy of ``model`` ready for QAT: BN folded, every Conv2d / Linear a :class:`QATLayer`.

    Weight scales start at LSQ's 2 mean|w| / sqrt(Q_P) per output channel. Activation
    scales start at 2 mean|x| / sqrt(Q_P) over the calibration images (the first
    ``num_images`` training images of a Splits, or your batches), with the zero point of
    the min-max range (0 after a ReLU; > 0 for normalised images, which go below 0).
    ``learn_scales=False`` keeps the scales fixed (trained weights only). Notebook 04.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    check_bits(weight_bits)
    model = fold_batchnorm(model) if fold_bn else copy.deepcopy(model)
    names = list(supported_layers(model))
    if not names or "" in names:
        raise ValueError(f"{type(model).__name__} has no Conv2d / Linear inside it to train "
                         "with fake quantization")
    stats = {}
    if act_bits is not None:
        check_bits(act_bits)
        if calibration is None:
            raise ValueError("act_bits needs calibration data: pass the Splits or batches")
        batches = (calibration_batches(calibration, num_images)
                   if isinstance(calibration, Splits) else calibration)
        stats = _input_stats(model, names, batches)
    for n in names:
        zp = 0
        if act_bits is not None:
            lo, hi, _ = stats[n]
            zp = int(choose_qparams(torch.tensor(lo), torch.tensor(hi), act_bits,
                                    signed=False)[1])
        wrapper = QATLayer(model.get_submodule(n), weight_bits, act_bits, act_zero_point=zp,
                           learn=learn_scales)
        if wrapper.act_quant is not None:
            mean_abs = torch.tensor([stats[n][2]])
            wrapper.act_quant.initialise(mean_abs)
        set_submodule(model, n, wrapper)
    return model.train()


@torch.no_grad()
def convert_qat(model: nn.Module) -> nn.Module:
    """A frozen copy with plain :class:`~qlib.quant.fakequant.QuantConv2d` / ``QuantLinear``
    layers holding the learned scales: the same outputs, and what
    :func:`~qlib.quant.ptq.packed_variant` packs and ships. Notebook 04.
    """
    layers = qat_layers(model)
    if not layers:
        raise ValueError("the model has no QATLayer: call prepare_qat first")
    model = copy.deepcopy(model)
    for name, q in qat_layers(model).items():
        a = q.act_quant
        plain: QuantLayer = wrapper_for(q.layer)(q.layer, q.weight_quant.bits,
                                                     None if a is None else a.bits)
        plain.weight_scale = q.weight_quant.scale.detach().clamp(min=EPS).clone()
        plain.weight_zero_point = q.weight_quant.zero_point.clone()
        if a is not None:
            plain.act_scale = a.scale.detach().clamp(min=EPS).clone()
            plain.act_zero_point = a.zero_point.clone()
        plain.calibrating = False
        set_submodule(model, name, plain)
    return model.eval()


def qat(model: nn.Module, data: Splits, weight_bits: int = 4, act_bits: int | None = 4, *,
        epochs: int = 4, lr: float = 5e-4, batch_size: int = 64, learn_scales: bool = True,
        seed: int = 0, progress: bool = True) -> tuple[nn.Module, dict[str, list[float]]]:
    """The whole QAT flow on a copy of ``model``: prepare, fine-tune, convert.

    Trains with :func:`qlib.train.fit` (AdamW, one-cycle, shifts) on ``data``'s training
    split, validating each epoch. Returns (frozen fake-quant model, fit's history).
    Notebook 04.
    """
    qmodel = prepare_qat(model, data, weight_bits, act_bits, learn_scales=learn_scales)
    history = fit(qmodel, data.loader("train", batch_size, seed=seed), epochs=epochs, lr=lr,
                  val_loader=data.loader("val", 500), seed=seed, progress=progress,
                  desc=f"QAT w{weight_bits}a{act_bits}")
    return convert_qat(qmodel), history
