"""Runtimes: exporting to ONNX and running ONNX Runtime (notebooks 03 and 09).

    onnx    export, static QDQ and dynamic int8 quantization, OrtModel   (notebook 03)
    nbits   block-quantized int4 / int8 weights through MatMulNBits      (notebook 09)
    x86     VPMADDUBSW / VPDPBUSD emulated: the u8 x s8 int8 instructions (notebook 03)
    ao      torchao: quantize_ configs and PT2E + X86 quantizer          (notebook 03;
            import ``qlib.runtime.ao`` by name; it loads torchao on first use)

Registers nothing: the recipes that use a runtime live in :mod:`qlib.recipes`.

The names below load their submodule on first use (PEP 562): importing
``qlib.runtime.onnx`` (as the recipe catalog does) does not load ``nbits``, whose ``onnx``
import costs about a second.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and IDEs only; at run time __getattr__ imports
    from .nbits import (ACCURACY_LEVELS, NBITS, NBitsWeight, dequantized_reference,
                        int8_activations_reference, matmul_fp32_model, matmul_nbits_model,
                        ort_session, pack_nbits, quantize_blockwise, quantize_onnx_nbits,
                        unpack_nbits)
    from .onnx import (ACTIVATION_TYPES, OrtModel, TensorCalibrationReader, export_onnx,
                       onnx_op_counts, quantize_dynamic_ort, quantize_static_ort)
    from .x86 import INT16_MAX, INT16_MIN, dpbusd, maddubs

__all__ = ["export_onnx", "OrtModel", "TensorCalibrationReader", "quantize_static_ort",
           "quantize_dynamic_ort", "onnx_op_counts", "ACTIVATION_TYPES", "NBitsWeight",
           "quantize_blockwise", "pack_nbits", "unpack_nbits", "dequantized_reference",
           "int8_activations_reference", "matmul_nbits_model", "matmul_fp32_model",
           "quantize_onnx_nbits", "ort_session", "NBITS", "ACCURACY_LEVELS", "maddubs", "dpbusd",
           "INT16_MIN", "INT16_MAX"]

#: The submodule that defines each name of ``__all__``.
_HOME = {
    **dict.fromkeys(["export_onnx", "OrtModel", "TensorCalibrationReader",
                     "quantize_static_ort", "quantize_dynamic_ort", "onnx_op_counts",
                     "ACTIVATION_TYPES"], "onnx"),
    **dict.fromkeys(["NBitsWeight", "quantize_blockwise", "pack_nbits", "unpack_nbits",
                     "dequantized_reference", "int8_activations_reference",
                     "matmul_nbits_model", "matmul_fp32_model", "quantize_onnx_nbits",
                     "ort_session", "NBITS", "ACCURACY_LEVELS"], "nbits"),
    **dict.fromkeys(["maddubs", "dpbusd", "INT16_MIN", "INT16_MAX"], "x86"),
}
#: Submodules that were attributes of the package before it loaded lazily.
_SUBMODULES = ("onnx", "nbits", "x86")


def __getattr__(name: str) -> Any:
    """Load a re-exported name (or a submodule) on first access and keep it here."""
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")  # binds it here as well
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}; it exports "
                             f"{sorted(_HOME)}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    globals()[name] = value  # later accesses skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
