"""The language-model recipes (notebooks 09 and 10): weight-only quantization of the course LM.

Each is ``(lm, data) -> Variant`` with ``lm`` the trained course decoder
(:func:`qlib.lm.get_lm`) and ``data`` its :class:`~qlib.text.TextSplits`. The variant's model
holds the quantized values as float weights (fake quantization: what is evaluated is what
the packed file would give back); ``size_bytes`` is the packed file: every quantized
weight as ``bits``-bit codes with one fp16 scale and one ``bits``-bit zero point per group
(:func:`qlib.quant.weightonly.packed_bytes`), plus the rest of the state dict (embeddings,
norms, biases) as saved by ``torch.save``. Its speed is not int4 speed: real int4 kernels
are measured by ``python -m qlib deploy --suite lm`` (MatMulNBits in ONNX Runtime).
"""

from __future__ import annotations

import io

import torch
from torch import Tensor, nn

from ..measure import count_nonzeros, count_parameters
from ..quant.weightonly import quantize_linear_weights
from ..text import TextSplits, train_batches
from .registry import Variant

__all__ = ["LM_CALIBRATION", "lm_calibration", "lm_weight_only", "lm_packed_size",
           "lm_w8_rtn", "lm_w4g128_rtn", "lm_w4g128_gptq", "lm_w4g128_awq", "lm_w3g128_rtn",
           "lm_w3g128_gptq", "lm_nf4g64"]

#: Calibration for GPTQ / AWQ: random training windows (seeded), never the test split.
#: 128 windows of the LM's full context (64) = 8,192 token positions per layer input.
LM_CALIBRATION = dict(windows=128, block_size=64, seed=0)


def lm_calibration(data: TextSplits, windows: int = LM_CALIBRATION["windows"],
                   block_size: int = LM_CALIBRATION["block_size"],
                   seed: int = LM_CALIBRATION["seed"]) -> list[Tensor]:
    """``windows`` random training windows of ``block_size`` token ids, in batches of 8."""
    x, _ = next(train_batches(data.split("train"), block_size, windows, seed=seed))
    return list(x.split(8))


def lm_packed_size(model: nn.Module, report: dict) -> int:
    """Bytes of the packed file: the quantized weights' packed bytes (from the report) plus
    ``torch.save`` of every other state-dict entry."""
    quantized = {f"{r['name']}.weight" for r in report["layers"]}
    rest = {k: v for k, v in model.state_dict().items() if k not in quantized}
    buffer = io.BytesIO()
    torch.save(rest, buffer)
    return buffer.getbuffer().nbytes + int(report["packed_bytes"])


def lm_weight_only(name: str, lm: nn.Module, data: TextSplits, method: str, *,
                   bits: int | None, group_size: int | None, **kw) -> Variant:
    """One weight-only variant of every ``nn.Linear`` of ``lm`` (lm_head included)."""
    torch.manual_seed(0)
    calibration = lm_calibration(data) if method in ("gptq", "awq") else None
    qmodel, report = quantize_linear_weights(lm, method, calibration, bits=bits,
                                             group_size=group_size, **kw)
    errors = [r["rel_error"] for r in report["layers"] if r.get("rel_error") is not None]
    return Variant(name, "weight-only quantization", qmodel.eval(),
                   lm_packed_size(qmodel, report), count_parameters(qmodel),
                   count_nonzeros(qmodel),
                   dict(method=method, bits=report["bits"], group_size=report["group_size"],
                        packed_weight_bytes=report["packed_bytes"],
                        float_weight_bytes=report["float_bytes"],
                        mean_layer_rel_error=sum(errors) / len(errors) if errors else None,
                        simulated=True, **{k: str(v) for k, v in kw.items()}))


def lm_w8_rtn(lm: nn.Module, data: TextSplits) -> Variant:
    return lm_weight_only("lm-w8-rtn", lm, data, "rtn", bits=8, group_size=None)


def lm_w4g128_rtn(lm: nn.Module, data: TextSplits) -> Variant:
    return lm_weight_only("lm-w4g128-rtn", lm, data, "rtn", bits=4, group_size=128)


def lm_w4g128_gptq(lm: nn.Module, data: TextSplits) -> Variant:
    return lm_weight_only("lm-w4g128-gptq", lm, data, "gptq", bits=4, group_size=128)


def lm_w4g128_awq(lm: nn.Module, data: TextSplits) -> Variant:
    return lm_weight_only("lm-w4g128-awq", lm, data, "awq", bits=4, group_size=128)


def lm_w3g128_rtn(lm: nn.Module, data: TextSplits) -> Variant:
    return lm_weight_only("lm-w3g128-rtn", lm, data, "rtn", bits=3, group_size=128)


def lm_w3g128_gptq(lm: nn.Module, data: TextSplits) -> Variant:
    return lm_weight_only("lm-w3g128-gptq", lm, data, "gptq", bits=3, group_size=128)


def lm_nf4g64(lm: nn.Module, data: TextSplits) -> Variant:
    return lm_weight_only("lm-nf4g64", lm, data, "nf4", bits=None, group_size=64)
