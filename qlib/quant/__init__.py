"""Quantization: affine primitives, observers, fake-quant modules, PTQ and k-means sharing.

Introduced in notebooks 01 (number formats, affine quantization) and 02 (post-training
quantization). The contract names (fixed, see the design note)::

    from qlib.quant import qrange, choose_qparams, quantize, dequantize, fake_quantize

Modules, one idea each:

    affine      q = clamp(round(x / scale) + zp, qmin, qmax) and friends   (notebook 01)
    formats     fixed point (scale 2^-b), fp16 / bf16 round trips, SQNR    (notebook 01)
    observers   range setting: min-max, moving average, percentile, MSE, KL (notebook 02)
    fakequant   QuantConv2d / QuantLinear, quantize_model, BN folding       (notebook 02)
    packing     bit-packed storage: the real size of a quantized model      (notebook 02)
    kmeans      k-means weight sharing with a 2^b codebook                  (notebook 02)
    ptq         the PTQ flow, sensitivity, mixed precision, recipes         (notebook 02)
    analysis    per-layer weight / activation SQNR                          (notebook 02)
    kernels     integer-only int8 kernels, fixed-point requantization       (notebook 03)
    lsq         straight-through estimator, learned step size (LSQ)         (notebook 04)
    qat         quantization-aware training flow, QAT recipes               (notebook 04)
    integer     integer-only models (to_integer), int8-integer recipe      (notebook 03)
"""

from .analysis import activation_sqnr, weight_sqnr
from .affine import (EPS, choose_qparams, choose_qparams_per_group, dequantize,
                     dequantize_per_group, fake_quantize, fake_quantize_per_group, qrange,
                     quantize, quantize_per_group)
from .fakequant import (SUPPORTED, QuantConv2d, QuantLayer, QuantLinear, calibrate,
                        fold_batchnorm, freeze, quant_layers, quantize_model)
from .formats import fixed_point_qparams, float_roundtrip, sqnr_db
from .kmeans import kmeans_codebook, kmeans_quantize_model
from .observers import (OBSERVERS, KLObserver, MinMaxObserver, MovingAverageMinMaxObserver,
                        MSEObserver, Observer, PercentileObserver, make_observer)
from .packing import (pack_bits, packed_size_bytes, packed_state, serialized_size,
                      unpack_bits, unpack_state)
from .ptq import (accuracy_on, assign_bits, layer_sensitivity, packed_variant, ptq,
                  weight_counts)

__all__ = [
    # affine (contract first)
    "qrange", "choose_qparams", "quantize", "dequantize", "fake_quantize",
    "choose_qparams_per_group", "quantize_per_group", "dequantize_per_group",
    "fake_quantize_per_group", "EPS",
    # formats
    "fixed_point_qparams", "float_roundtrip", "sqnr_db",
    # observers
    "Observer", "MinMaxObserver", "MovingAverageMinMaxObserver", "PercentileObserver",
    "MSEObserver", "KLObserver", "OBSERVERS", "make_observer",
    # fake quant
    "QuantLayer", "QuantConv2d", "QuantLinear", "SUPPORTED", "quantize_model", "quant_layers",
    "fold_batchnorm", "calibrate", "freeze",
    # storage, k-means, PTQ
    "pack_bits", "unpack_bits", "packed_state", "unpack_state", "packed_size_bytes",
    "serialized_size", "kmeans_codebook", "kmeans_quantize_model",
    "ptq", "accuracy_on", "layer_sensitivity", "assign_bits", "weight_counts",
    "packed_variant", "weight_sqnr", "activation_sqnr",
]
