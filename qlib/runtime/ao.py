"""torchao beside qlib: ``quantize_`` configs and the PT2E flow with the X86 quantizer.

Introduced in notebook 03. torchao is PyTorch's quantization library; this module wraps
the two ways it quantizes a model, so that the notebook and the deploy benchmark can put
them next to qlib's own int8 path and ONNX Runtime.

``quantize_(model, config)`` swaps the weight of every ``nn.Linear`` for a quantized
tensor subclass (convolutions are left alone):

    int8_dynamic      Int8DynamicActivationInt8WeightConfig: s8 weights per output channel
                      (symmetric), s8 activations per row with ranges computed at each call
    int8_weight_only  Int8WeightOnlyConfig: s8 weights per channel, float activations
    int4_weight_only  Int4WeightOnlyConfig: int4 weights in groups of ``group_size``; its
                      packed layouts need a kernel library (mslk) or a GPU: on a CPU-only
                      install it raises (notebook 03 prints the error class)

PT2E (export-based, static, whole graph, convolutions included)::

    torch.export.export(model, x, dynamic batch) -> prepare_pt2e(X86InductorQuantizer)
      -> calibrate -> convert_pt2e -> reference model (quantize/dequantize ops around float
      conv/linear: exact int8 numerics, float speed)
      -> lower_pt2e_quantized_to_x86 -> oneDNN int8 ops (qconv/qlinear, u8 x s8 -> s32)

The X86 quantizer's default config: activations u8 per tensor, asymmetric, range from a
``HistogramObserver`` (``observer="minmax"`` swaps in a ``MinMaxObserver``: min/max of the
calibration data); weights s8 per output channel, symmetric, ``PerChannelMinMaxObserver``
on the BN-folded weights. Both clamp the scale below at ``eps = 2^-12``, so per channel

    s_w,c = max( max_k |w_c,k| / 127.5 , 2^-12 )     (qmin, qmax = -128, 127)

which is qlib's ``choose_qparams(-m, m, 8, symmetric=True)`` except for that floor; with
``observer="minmax"`` the activation scale is ``(max - min) / 255`` like qlib's min-max
observer (ranges widened to include 0). Shapes: ``pt2e_int8`` keeps the model's input
(N, ...) with a dynamic batch; :func:`pt2e_qparams` returns one dict per conv / linear.

>>> ref = pt2e_int8(course_model, calibration_batches(data))          # doctest: +SKIP
>>> X86Int8(ref, x[:1], batch_sizes=(1, 32))(x).shape               # doctest: +SKIP
torch.Size([1000, 10])
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable

import torch
from torch import Tensor, nn

__all__ = ["int8_dynamic", "int8_weight_only", "int4_weight_only", "pt2e_int8", "X86Int8",
           "pt2e_qparams", "X86_EPS", "OBSERVERS"]

#: The X86 quantizer's lower bound on every scale (its observers' ``eps``).
X86_EPS = 2.0 ** -12
OBSERVERS = ("histogram", "minmax")


def _load_torchao() -> None:
    """Import torchao once with the ``torch.utils._pytree`` logger muted: torchao's import logs
    a deprecation notice about torch internals ("register_constant() on Enum subclasses is
    deprecated") to stderr, a third-party message a learner can do nothing about and reads
    as a red error box. Other loggers, and this one after the import, are untouched."""
    log = logging.getLogger("torch.utils._pytree")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import torchao.quantization  # noqa: F401 - lazy: seconds to import, only when used
    finally:
        log.setLevel(level)


def _quantized_copy(model: nn.Module, config) -> nn.Module:
    _load_torchao()
    # lazy: torchao takes seconds to import; load it on first use
    from torchao.quantization import quantize_
    out = copy.deepcopy(model).eval()
    quantize_(out, config)
    return out


def int8_dynamic(model: nn.Module) -> nn.Module:
    """A copy whose ``nn.Linear`` layers run torchao's int8 dynamic quantization.

    Weights s8 per output channel; each input row is quantized to s8 at every call with
    ``s = max|x_row| / 127.5``; the integer product is rescaled to float.
    """
    _load_torchao()
    # lazy: torchao takes seconds to import; load it on first use
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig
    return _quantized_copy(model, Int8DynamicActivationInt8WeightConfig())


def int8_weight_only(model: nn.Module) -> nn.Module:
    """A copy whose ``nn.Linear`` weights are s8 per output channel; activations stay float."""
    _load_torchao()
    # lazy: torchao takes seconds to import; load it on first use
    from torchao.quantization import Int8WeightOnlyConfig
    return _quantized_copy(model, Int8WeightOnlyConfig())


def int4_weight_only(model: nn.Module, group_size: int = 128) -> nn.Module:
    """A copy with int4 weights in groups of ``group_size`` along K (torchao's default
    packing). Raises where torchao has no int4 kernel for the device (a CPU-only install:
    ImportError for the ``mslk`` kernels), rather than faking the result."""
    _load_torchao()
    # lazy: torchao takes seconds to import; load it on first use
    from torchao.quantization import Int4WeightOnlyConfig
    return _quantized_copy(model, Int4WeightOnlyConfig(group_size=group_size,
                                                       set_inductor_config=False))


def _x86_config(observer: str, reduce_range: bool):
    _load_torchao()
    # lazy: torchao takes seconds to import; load it on first use
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86q
    # lazy, as above
    from torchao.quantization.pt2e import MinMaxObserver
    # lazy, as above
    from torchao.quantization.pt2e.quantizer import QuantizationSpec
    config = x86q.get_default_x86_inductor_quantization_config(reduce_range=reduce_range)
    if observer == "histogram":
        return config
    act = config.input_activation
    act = QuantizationSpec(dtype=act.dtype, quant_min=act.quant_min, quant_max=act.quant_max,
                           qscheme=act.qscheme, is_dynamic=False,
                           observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=X86_EPS))
    return type(config)(act, act, config.weight, config.bias, config.is_qat)


def pt2e_int8(model: nn.Module, calibration: Iterable[Tensor], *, observer: str = "histogram",
              reduce_range: bool = False) -> torch.fx.GraphModule:
    """Static int8 through PT2E and the X86 inductor quantizer: the converted reference model.

    ``calibration``: batches (N, ...) run through the observed model once each;
    ``observer``: "histogram" (the quantizer's default) or "minmax" for the activations;
    ``reduce_range``: 7-bit activations [0, 127] (for CPUs without VNNI). The export has a
    dynamic batch dimension. The result computes in float between quantize / dequantize
    ops (exact int8 numerics, slow); :class:`X86Int8` makes it fast. Its ``eval()`` works.
    """
    if observer not in OBSERVERS:
        raise ValueError(f"observer must be one of {OBSERVERS}, got {observer!r}")
    _load_torchao()
    # lazy: torchao takes seconds to import; load it on first use
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86q
    # lazy, as above
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    # lazy, as above
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    batches = list(calibration)
    if not batches:
        raise ValueError("calibration must hold at least one batch (N, ...), got none")
    example = batches[0][:2] if len(batches[0]) > 1 else torch.cat([batches[0]] * 2)
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        exported = torch.export.export(model, (example,),
                                       dynamic_shapes=({0: torch.export.Dim.AUTO},)).module()
        quantizer = x86q.X86InductorQuantizer().set_global(_x86_config(observer, reduce_range))
        prepared = prepare_pt2e(exported, quantizer)
        for batch in batches:
            prepared(batch)
        converted = convert_pt2e(prepared)
    allow_exported_model_train_eval(converted)
    return converted


class X86Int8:
    """torchao's x86 lowering of a :func:`pt2e_int8` model, one graph per batch size.

    ``lower_pt2e_quantized_to_x86`` turns quantize -> dequantize -> conv/linear patterns
    into oneDNN int8 ops (``onednn.qconv_pointwise`` ...: u8 activations x s8 weights into
    s32), without code generation, but it traces at one input shape. Calling with a batch
    size that was lowered runs that graph; any other batch runs in chunks of the largest
    lowered size, the last chunk padded with zeros (rows are independent).

    >>> fast = X86Int8(ref, x[:1], (1, 32)); fast(x).shape                 # doctest: +SKIP
    torch.Size([1000, 10])
    """

    def __init__(self, converted: torch.fx.GraphModule, example: Tensor,
                 batch_sizes: Iterable[int] = (1,)) -> None:
        sizes = sorted(set(int(b) for b in batch_sizes))
        if not sizes or sizes[0] < 1:
            raise ValueError(f"batch_sizes must hold positive ints, got {list(batch_sizes)}")
        _load_torchao()
    # lazy: torchao takes seconds to import; load it on first use
        from torchao.quantization.pt2e.lowering import lower_pt2e_quantized_to_x86
        self.graphs: dict[int, torch.fx.GraphModule] = {}
        with torch.no_grad():
            for b in sizes:
                x = example[:1].expand(b, *example.shape[1:]).contiguous()
                graph = lower_pt2e_quantized_to_x86(converted, (x,))
                # oneDNN's int8 convs return channels-last tensors, on which the exported
                # flatten (aten.view) fails for batch > 1: a reshape copies where it must
                for node in graph.graph.nodes:
                    if node.target is torch.ops.aten.view.default:
                        node.target = torch.ops.aten.reshape.default
                graph.recompile()
                self.graphs[b] = graph

    def __call__(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        with torch.no_grad():
            if n in self.graphs:
                return self.graphs[n](x)
            b = max(self.graphs)
            outs = []
            for chunk in x.split(b):
                pad = b - chunk.shape[0]
                if pad:
                    chunk = torch.cat([chunk, chunk.new_zeros(pad, *chunk.shape[1:])])
                outs.append(self.graphs[b](chunk)[: b - pad])
            return torch.cat(outs)


def pt2e_qparams(converted: torch.fx.GraphModule) -> list[dict]:
    """Per conv / linear of a :func:`pt2e_int8` model, in graph order: ``op``, the input's
    ``act_scale`` and ``act_zero_point`` (floats, u8) and ``weight_scale`` (float64 (C,))."""
    ops = (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default)
    rows = []
    for node in converted.graph.nodes:
        if node.op != "call_function" or node.target not in ops:
            continue
        act, weight = node.args[0], node.args[1]
        w_scale = getattr(converted, weight.args[1].target)
        rows.append(dict(op=node.target.__name__.split(".")[0], act_scale=float(act.args[1]),
                         act_zero_point=int(act.args[2]),
                         weight_scale=torch.as_tensor(w_scale).double()))
    return rows
