"""Quantization: affine primitives, observers, fake-quant modules, PTQ, QAT, integer kernels.

Introduced in notebooks 01 (number formats, affine quantization) to 04 (QAT). The
contract names (fixed: tests and notebooks rely on them)::

    from qlib.quant import qrange, choose_qparams, quantize, dequantize, fake_quantize

Modules, one idea each:

    affine      q = clamp(round(x / scale) + zp, qmin, qmax); per-tensor / per-channel
                (axis) / per-group (group_size) granularity               (notebook 01)
    formats     fixed point (scale 2^-b), fp16 / bf16 round trips, SQNR    (notebook 01)
    observers   range setting: min-max, moving average, percentile, MSE, KL (notebook 02)
    fold        BN folding into the preceding conv, pairs found with torch.fx (notebook 02)
    fakequant   QuantConv2d / QuantLinear, quantize_model                  (notebook 02)
    packing     bit-packed storage: the real size of a quantized model      (notebook 02)
    kmeans      k-means weight sharing with a 2^b codebook                  (notebook 02)
    ptq         the PTQ flow, sensitivity, mixed precision                  (notebook 02)
    analysis    per-layer weight / activation SQNR                          (notebook 02)
    kernels     integer-only int8 kernels, fixed-point requantization       (notebook 03)
    lsq         straight-through estimator, learned step size (LSQ)         (notebook 04)
    qat         quantization-aware training flow                            (notebook 04)
    integer     integer-only models (to_integer)                           (notebook 03)
    weightonly  weight-only RTN per channel / group, packed size, one driver (notebook 09)
    gptq        GPTQ: Hessian-aware rounding with error feedback            (notebook 09)
    awq         AWQ: activation-aware per-channel scale search              (notebook 09)
    nf4         NF4, QLoRA's normal-float 4-bit codebook                    (notebook 09)
    fp8         FP8 (E4M3 / E5M2) and microscaling MXFP8 / MXFP4            (notebook 09)
    smoothquant activation statistics, SmoothQuant, W8A8, LLM.int8()        (notebook 10)
    kvcache     quantized keys and values, the KV-cache memory formula      (notebook 10)

Imports only the core (data, models, train), :mod:`qlib.measure` and :mod:`qlib.codec`;
importing it registers no recipe (recipes live in :mod:`qlib.recipes`).
"""

from .analysis import activation_sqnr, weight_sqnr
from .affine import (EPS, broadcast_qparam, choose_qparams, dequantize, fake_quantize, minmax,
                     qrange, quantize)
from .fakequant import (SUPPORTED, QuantConv2d, QuantLayer, QuantLinear, calibrate,
                        fold_batchnorm, freeze, quant_layers, quantize_model, supported_layers,
                        wrapper_for)
from .fold import FOLDABLE, batchnorm_layers, fold_conv_bn, foldable_pairs
from .formats import fixed_point_qparams, float_roundtrip, sqnr_db
from .kmeans import kmeans_codebook, kmeans_quantize_model
from .observers import (OBSERVERS, KLObserver, MinMaxObserver, MovingAverageMinMaxObserver,
                        MSEObserver, Observer, PercentileObserver, make_observer)
from .packing import (pack_bits, packed_size_bytes, packed_state, serialized_size,
                      unpack_bits, unpack_state)
from .awq import awq_quantize
from .fp8 import bits_per_value, fp8_fake_quantize, fp8_quantize, mx_fake_quantize, mx_quantize
from .gptq import gptq_hessian, gptq_quantize
from .kvcache import dequantize_kv, fake_quantize_kv, kv_cache_bytes, quantize_kv
from .nf4 import NF4_TABLE, nf4_codebook, nf4_dequantize, nf4_fake_quantize, nf4_quantize
from .ptq import accuracy_on, assign_bits, layer_sensitivity, ptq, weight_counts
from .smoothquant import (activation_stats, quantize_linears_w8a8, smooth_layernorm_linear,
                          smooth_model, smooth_scales)
from .weightonly import (calibration_inputs, packed_bytes, quantize_linear_weights,
                         rtn_quantize)

__all__ = [
    # affine (contract first)
    "qrange", "choose_qparams", "quantize", "dequantize", "fake_quantize",
    "minmax", "broadcast_qparam", "EPS",
    # formats
    "fixed_point_qparams", "float_roundtrip", "sqnr_db",
    # observers
    "Observer", "MinMaxObserver", "MovingAverageMinMaxObserver", "PercentileObserver",
    "MSEObserver", "KLObserver", "OBSERVERS", "make_observer",
    # fake quant
    "QuantLayer", "QuantConv2d", "QuantLinear", "SUPPORTED", "quantize_model", "quant_layers",
    "fold_batchnorm", "calibrate", "freeze", "supported_layers", "wrapper_for",
    # BN folding
    "fold_conv_bn", "foldable_pairs", "batchnorm_layers", "FOLDABLE",
    # storage, k-means, PTQ
    "pack_bits", "unpack_bits", "packed_state", "unpack_state", "packed_size_bytes",
    "serialized_size", "kmeans_codebook", "kmeans_quantize_model",
    "ptq", "accuracy_on", "layer_sensitivity", "assign_bits", "weight_counts",
    "weight_sqnr", "activation_sqnr",
    # weight-only LLM quantization (notebook 09)
    "quantize_linear_weights", "rtn_quantize", "packed_bytes", "calibration_inputs",
    "gptq_quantize", "gptq_hessian", "awq_quantize", "NF4_TABLE", "nf4_codebook",
    "nf4_quantize", "nf4_dequantize", "nf4_fake_quantize", "fp8_quantize",
    "fp8_fake_quantize", "mx_quantize", "mx_fake_quantize", "bits_per_value",
    # activations and the KV cache (notebook 10)
    "activation_stats", "smooth_scales", "smooth_layernorm_linear", "smooth_model",
    "quantize_linears_w8a8", "quantize_kv", "dequantize_kv", "fake_quantize_kv",
    "kv_cache_bytes",
]
