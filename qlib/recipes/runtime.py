"""The ONNX Runtime recipe (notebook 03): real int8 speed from a real int8 runtime."""

from __future__ import annotations

from torch import nn

from .. import data as qdata
from ..data import Splits, calibration_batches
from ..measure import count_nonzeros, count_parameters
from ..runtime.onnx import OrtModel, export_onnx, quantize_static_ort
from .registry import Variant

__all__ = ["int8_ort"]


def int8_ort(baseline: nn.Module, data: Splits) -> Variant:
    """The course model through ONNX Runtime static int8; its file is the int8 ``.onnx``.

    Introduced in notebook 03. Exports a copy of ``baseline`` (BN folded), calibrates on
    the first 256 training images (``qlib.data.calibration_batches``) and quantizes (u8
    activations per tensor, s8 weights per channel). Files go to ``data/onnx/``; the
    variant's model is an :class:`~qlib.runtime.onnx.OrtModel` (1 thread) and ``size_bytes``
    the int8 file's; its speed ``reference`` is the same baseline exported to fp32 ONNX,
    in the same runtime (1 thread). Deterministic: same baseline and data, same file.
    """
    # lazy: the catalog imports this module in every process; ORT loads when the recipe runs
    import onnxruntime as ort

    folder = qdata.DATA_DIR / "onnx"  # read at call time: tests point it elsewhere
    x = data.test.tensors[0][:1]
    fp32 = export_onnx(baseline, x, folder / "int8-ort-fp32.onnx")
    int8 = quantize_static_ort(fp32, folder / "int8-ort.onnx", calibration_batches(data))
    model = OrtModel(int8, threads=1)
    return Variant("int8-ort", "quantization", model, model.size_bytes,
                   count_parameters(baseline), count_nonzeros(baseline),
                   dict(runtime=f"onnxruntime {ort.__version__}", calibration_images=256,
                        fp32_onnx_bytes=fp32.stat().st_size,
                        scheme="static QDQ, u8 activations per tensor, s8 weights per channel"),
                   execution="ort", reference=OrtModel(fp32, threads=1))
