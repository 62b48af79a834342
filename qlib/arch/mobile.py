"""Depthwise-separable convolutions: a MobileNet-style course model, its cost and training.

Introduced in notebook 11. A standard k×k conv from M to N channels on an F×F output
costs F²·M·N·k² multiply-accumulates (MACs); MobileNet (Howard et al., 2017) splits it
into a *depthwise* k×k conv (one filter per channel, ``groups=M``: F²·M·k² MACs) and a
*pointwise* 1×1 conv (F²·M·N MACs). The ratio is (Howard et al., eq. 5)::

    (F²·M·k² + F²·M·N) / (F²·M·N·k²) = 1/N + 1/k²            (:func:`separable_ratio`)

Shapes of :class:`MobileCNN` with the defaults, on 28×28 digits (each block: depthwise
3×3 -> BN -> ReLU6 -> pointwise 1×1 -> BN -> ReLU6)::

    (N, 1, 28, 28) -stem conv3x3-> (N, 16, 28, 28) -block s2-> (N, 32, 14, 14)
    -block s2-> (N, 64, 7, 7) -block s1-> (N, 64, 7, 7) -avgpool-> (N, 64) -fc-> (N, 10)

:func:`layer_costs` counts, per conv / linear layer and image, the MACs and the bytes a
layer must move at least once (fp32 weights, input and output activations) and their
ratio, the *arithmetic intensity* in MACs per byte: a depthwise layer does k² MACs per
input value, a pointwise or dense layer C_in, so depthwise layers sit far left on a
roofline, memory-bound. :func:`train_mobile` trains the model with :func:`qlib.train.fit`
and caches it like the baseline.

>>> m = mobile_model()
>>> m(torch.zeros(2, 1, 28, 28)).shape, sum(p.numel() for p in m.parameters())
(torch.Size([2, 10]), 9034)
>>> separable_ratio(64, 3)                # 1/64 + 1/9
0.1267...
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .._util import Inputs, as_args, check_int, check_module, inference, set_seed
from ..data import Splits
from ..measure import layer_macs
from ..measure.roofline import pinned_threads
from ..train import TRAIN_THREADS, cached_training, fit

__all__ = ["MobileCNN", "mobile_model", "separable_ratio", "layer_costs", "MOBILE_RECIPE",
           "train_mobile", "depthwise_layers"]


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU6()]


class MobileCNN(nn.Module):
    """A stem conv then depthwise-separable blocks (MobileNet v1 style), BN and ReLU6.

    ``channels=(16, 32, 64, 64)``: the stem's width, then each block's output width;
    ``strides`` gives each block's depthwise stride. All layers sit in ``features`` (an
    ``nn.Sequential``: conv, BN, ReLU6 triples) so BN folding and fake quant see each one.
    """

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 64),
                 strides: tuple[int, ...] = (2, 2, 1), num_classes: int = 10,
                 in_channels: int = 1) -> None:
        super().__init__()
        if len(strides) != len(channels) - 1:
            raise ValueError(f"strides needs one entry per block ({len(channels) - 1}), "
                             f"got {len(strides)}")
        if min(*channels, num_classes, in_channels) < 1 or min(strides) < 1:
            raise ValueError(f"channel and class counts and strides must be >= 1, got "
                             f"channels={channels}, strides={strides}, classes={num_classes}")
        self.config = dict(channels=tuple(channels), strides=tuple(strides),
                           num_classes=num_classes, in_channels=in_channels)
        layers = _conv_bn(in_channels, channels[0], 3)
        for c_in, c_out, s in zip(channels, channels[1:], strides):
            layers += _conv_bn(c_in, c_in, 3, s, groups=c_in) + _conv_bn(c_in, c_out, 1)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                        nn.Linear(channels[-1], num_classes))

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N, classes)
        return self.classifier(self.features(x))


def mobile_model(num_classes: int = 10, in_channels: int = 1) -> MobileCNN:
    """The course's depthwise-separable model: ``MobileCNN((16, 32, 64, 64), (2, 2, 1))``."""
    return MobileCNN((16, 32, 64, 64), (2, 2, 1), num_classes, in_channels)


def depthwise_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    """The depthwise convolutions (``groups == in_channels == out_channels > 1``) by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)
            and m.groups > 1 and m.groups == m.in_channels == m.out_channels}


def separable_ratio(n_out: int, k: int) -> float:
    """Cost of a depthwise-separable conv over a standard one: 1/N + 1/k² (Howard et al.)."""
    return 1 / check_int(n_out, "n_out", 1) + 1 / check_int(k, "k", 1) ** 2


def layer_costs(model: nn.Module, example_input: Inputs, bytes_per_value: float = 4.0
                ) -> list[dict[str, Any]]:
    """Per Conv2d / Linear layer, for ONE image: MACs, bytes moved, and MACs per byte.

    Rows ``{"name", "kind", "macs", "weight_bytes", "act_bytes", "bytes", "intensity"}``;
    ``kind`` is "depthwise", "pointwise" (1×1 conv), "conv" or "linear". Bytes are the
    compulsory traffic: each weight, input value and output value moved once
    (``bytes_per_value`` each, 4 for fp32); real kernels move more, never less. MACs as
    :func:`qlib.measure.count_macs`. ``example_input`` is one batch; counts are divided
    by its size.

    >>> [r["intensity"] for r in layer_costs(nn.Linear(2, 2), torch.zeros(1, 2))]
    [0.125]
    """
    check_module(model, "layer_costs")
    (x, *rest) = as_args(example_input)
    batch = x.shape[0]
    dw = set(depthwise_layers(model).values())
    rows: list[dict[str, Any]] = []

    def hook(name: str):
        def run(m: nn.Module, inp: tuple, out: Tensor) -> None:
            macs = layer_macs(m, out)
            kind = ("linear" if isinstance(m, nn.Linear) else "depthwise" if m in dw
                    else "pointwise" if m.kernel_size == (1, 1) else "conv")
            w_bytes = bytes_per_value * m.weight.numel()
            a_bytes = bytes_per_value * (inp[0].numel() + out.numel()) / batch
            rows.append(dict(name=name, kind=kind, macs=macs // batch, weight_bytes=w_bytes,
                             act_bytes=a_bytes, bytes=w_bytes + a_bytes,
                             intensity=macs / batch / (w_bytes + a_bytes)))
        return run

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not handles:
        raise ValueError(f"layer_costs counts Conv2d and Linear layers; "
                         f"{type(model).__name__} has none")
    try:
        with inference(model):
            model(x, *rest)
    finally:
        for h in handles:
            h.remove()
    return rows


#: How the cached mobile model is trained (part of the cache key). No weight decay, as
#: MobileNet trains its depthwise filters (Howard et al., 2017).
MOBILE_RECIPE = dict(epochs=10, lr=5e-3, batch_size=64, weight_decay=0.0, max_shift=2)


def train_mobile(data: Splits, *, seed: int = 0, progress: bool = True, **overrides
                 ) -> MobileCNN:
    """:func:`mobile_model` trained from scratch on ``data`` (cached under ``data/models``).

    :data:`MOBILE_RECIPE` settings (``overrides`` change any), the baseline's fit loop
    (AdamW, one-cycle, random shifts) on :data:`qlib.train.TRAIN_THREADS` threads.

    >>> model = train_mobile(qlib.get_baseline()[1])     # doctest: +SKIP
    """
    unknown = set(overrides) - set(MOBILE_RECIPE)
    if unknown:
        raise ValueError(f"unknown mobile settings {sorted(unknown)}; allowed: "
                         f"{sorted(MOBILE_RECIPE)}")
    s = {**MOBILE_RECIPE, **overrides}
    c = data.input_shape[0]
    recipe = dict(s, model="mobile", dataset=data.name, size=len(data.train), seed=seed)

    def build() -> nn.Module:
        set_seed(seed)
        return mobile_model(data.num_classes, c)

    def train(net: nn.Module) -> None:
        with pinned_threads(TRAIN_THREADS):
            fit(net, data.loader("train", s["batch_size"], seed=seed), epochs=s["epochs"],
                lr=s["lr"], weight_decay=s["weight_decay"], max_shift=s["max_shift"],
                seed=seed, progress=progress, desc="train mobile")

    return cached_training(f"mobile-{data.name}", recipe, build, train)

