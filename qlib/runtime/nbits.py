"""Weight-only int4 / int8 with ONNX Runtime's ``MatMulNBits``: codes packed by hand.

Introduced in notebook 09. A linear layer ``Y = A @ W^T`` (``W``: (N out, K in), the
``nn.Linear`` layout; ``A``: (batch, K) float32) keeps ``A`` in float and stores ``W`` as
``bits``-bit codes, quantized per block of ``block_size`` consecutive weights along K
(asymmetric, one scale and one zero point per block; the range widened to hold 0)::

    lo = min(min(w_blk), 0)   hi = max(max(w_blk), 0)   s = (hi - lo) / (2^b - 1)
    z = clamp(round(-lo / s), 0, 2^b - 1)      q = clamp(round(w / s) + z, 0, 2^b - 1)
    w ~ (q - z) * s                                      (what the kernel multiplies with)

``MatMulNBits`` (domain ``com.microsoft``) takes them as initializers:

    B            uint8 (N, n_blocks, block_size * bits / 8)   codes along K, low nibble first
    scales       float (N, n_blocks)
    zero_points  uint8 (N, ceil(n_blocks * bits / 8))          packed like B
    n_blocks = ceil(K / block_size); K is zero-padded (a 0 weight is exactly z, so free).

At 4 bits, block 128, a weight costs 0.5 + (4 + 0.5) / 128 = 0.535 bytes instead of 4:
7.5x less memory traffic, which is what makes batch-1 (decode) matmuls faster.
``accuracy_level`` 0 multiplies in fp32; 4 lets ORT quantize A to int8 per block as well
and use integer dot products (faster; the error adds A's rounding to W's).

>>> q = quantize_blockwise(torch.tensor([[0.0, 3.25, -0.5, 1.0] * 4]), bits=4, block_size=16)
>>> q.scales.tolist(), q.zero_points.tolist(), q.codes[0, :4].tolist()
([[0.25]], [[2]], [2, 15, 0, 6])
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper
from torch import Tensor

from .._files import atomic_write
from .._util import check_int
from ..quant.affine import choose_qparams, minmax, quantize

__all__ = ["NBitsWeight", "quantize_blockwise", "pack_nbits", "unpack_nbits",
           "dequantized_reference", "int8_activations_reference", "matmul_nbits_model",
           "matmul_fp32_model", "quantize_onnx_nbits", "ort_session", "NBITS",
           "ACCURACY_LEVELS"]

#: Weight widths this module packs (MatMulNBits also knows 2; the course uses 4 and 8).
NBITS = (4, 8)
#: MatMulNBits ``accuracy_level``: 0 unset (fp32 math here), 1 fp32, 2 fp16, 3 bf16, 4 int8.
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
_OPSET, _IR_VERSION = 21, 10


@dataclass(frozen=True)
class NBitsWeight:
    """Block-quantized weight: ``codes`` (N, n_blocks * block_size) uint8 in [0, 2^bits),
    ``scales`` (N, n_blocks) float32, ``zero_points`` (N, n_blocks) uint8; ``k`` the
    unpadded input size."""

    codes: Tensor
    scales: Tensor
    zero_points: Tensor
    bits: int
    block_size: int
    k: int

    @property
    def n(self) -> int:
        return int(self.codes.shape[0])

    @property
    def n_blocks(self) -> int:
        return int(self.scales.shape[1])


def _check_args(bits: int, block_size: int, accuracy_level: int = 0) -> None:
    if isinstance(bits, bool) or bits not in NBITS:
        raise ValueError(f"bits must be one of {NBITS}, got {bits!r}")
    if (isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 16
            or block_size & (block_size - 1)):
        raise ValueError(f"block_size must be a power of two >= 16 (16, 32, 64, 128, ...), "
                         f"got {block_size!r}")
    if isinstance(accuracy_level, bool) or accuracy_level not in ACCURACY_LEVELS:
        raise ValueError(f"accuracy_level must be one of {ACCURACY_LEVELS} (0: unset/fp32, "
                         f"4: int8 activations), got {accuracy_level!r}")


def _check_weight(weight: object, name: str = "weight") -> Tensor:
    if not isinstance(weight, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (N out, K in), got "
                        f"{type(weight).__name__}")
    if weight.ndim != 2 or 0 in weight.shape or not weight.is_floating_point():
        raise ValueError(f"{name} must be a 2-d float tensor (N out, K in) as nn.Linear.weight,"
                         f" got dtype {weight.dtype} and shape {tuple(weight.shape)}")
    if not bool(torch.isfinite(weight.amin()) & torch.isfinite(weight.amax())):  # NaN spreads
        raise ValueError(f"{name} holds NaN or Inf values; only finite weights can be "
                         f"quantized")
    return weight.detach().cpu().float()


def quantize_blockwise(weight: Tensor, *, bits: int = 4, block_size: int = 128) -> NBitsWeight:
    """Asymmetric per-block codes of ``weight`` (N, K): the formula in the module docstring.

    Introduced in notebook 09. K is zero-padded to a multiple of ``block_size``; an all-zero
    block gets the smallest scale (float32 eps) and codes equal to its zero point 0. Rounding is
half to even. The codes come from :mod:`qlib.quant.affine` (``minmax`` / ``choose_qparams``
/ ``quantize`` with ``group_size``, unsigned), the course's one quantizer.

    >>> q = quantize_blockwise(torch.randn(8, 64), bits=4, block_size=32)
    >>> tuple(q.codes.shape), tuple(q.scales.shape), int(q.codes.max()) <= 15
    ((8, 64), (8, 2), True)
    """
    _check_args(bits, block_size)
    w = _check_weight(weight)
    n, k = w.shape
    nb = -(-k // block_size)
    if k % block_size:
        w = torch.nn.functional.pad(w, (0, nb * block_size - k))
    # the course's affine primitives, per group of block_size along K, unsigned codes
    scale, zp = choose_qparams(*minmax(w, group_size=block_size), bits, signed=False)
    q = quantize(w, scale, zp, bits, signed=False, group_size=block_size)
    return NBitsWeight(q.to(torch.uint8), scale, zp.to(torch.uint8), bits, block_size, k)


def _pack_rows(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack the last axis of uint8 ``codes``: 8 bits as is, 4 bits two per byte, the
    element with the lower index in the low nibble (MatMulNBits' order). Odd length: pad 0."""
    if bits == 8:
        return codes.astype(np.uint8)
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros_like(codes[..., :1])], axis=-1)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def pack_nbits(q: NBitsWeight) -> dict[str, np.ndarray]:
    """MatMulNBits' initializers ``{"B", "scales", "zero_points"}`` for ``q`` (shapes above).

    Introduced in notebook 09. At 4 bits byte ``j`` of a block holds codes ``2j`` (low
    nibble) and ``2j + 1`` (high nibble): ``byte = q[2j] | q[2j + 1] << 4``.

    >>> q = quantize_blockwise(torch.randn(3, 32), bits=4, block_size=16)
    >>> {k: v.shape for k, v in pack_nbits(q).items()}
    {'B': (3, 2, 8), 'scales': (3, 2), 'zero_points': (3, 1)}
    """
    codes = q.codes.numpy().reshape(q.n, q.n_blocks, q.block_size)
    return {"B": _pack_rows(codes, q.bits),
            "scales": q.scales.numpy().astype(np.float32),
            "zero_points": _pack_rows(q.zero_points.numpy(), q.bits)}


def unpack_nbits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of the packing along the last axis: uint8 codes, the first ``count`` kept.

    Introduced in notebook 09 (to read ORT's own quantizer output back).

    >>> unpack_nbits(np.array([[0x21, 0x03]], dtype=np.uint8), 4, 3).tolist()
    [[1, 2, 3]]
    """
    if bits not in NBITS:
        raise ValueError(f"bits must be one of {NBITS}, got {bits!r}")
    packed = np.asarray(packed, dtype=np.uint8)
    if bits == 8:
        return packed[..., :count]
    out = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)
    return out[..., :count]


def dequantized_reference(weight: Tensor | NBitsWeight, *, bits: int = 4,
                          block_size: int = 128) -> Tensor:
    """The float weights (N, K) that the codes stand for: ``(q - z) * s`` per block.

    Introduced in notebook 09. Pass a weight (quantized here with ``bits``/``block_size``)
    or an :class:`NBitsWeight`. ``A @ dequantized_reference(W).T`` is what MatMulNBits
    computes at ``accuracy_level`` 0, up to float summation order.

    >>> w = torch.randn(4, 32)
    >>> bool((dequantized_reference(w, bits=8, block_size=32) - w).abs().max() < 0.02)
    True
    """
    q = weight if isinstance(weight, NBitsWeight) else quantize_blockwise(
        weight, bits=bits, block_size=block_size)
    codes = q.codes.view(q.n, q.n_blocks, q.block_size).float()
    w = (codes - q.zero_points.float()[..., None]) * q.scales[..., None]
    return w.reshape(q.n, -1)[:, :q.k]


def _bias_array(bias: Tensor | None, n: int) -> np.ndarray | None:
    if bias is None:
        return None
    if (not isinstance(bias, Tensor) or bias.numel() != n or not bias.is_floating_point()
            or not bool(torch.isfinite(bias).all())):
        got = (f"shape {tuple(bias.shape)}, dtype {bias.dtype}" if isinstance(bias, Tensor)
               else type(bias).__name__)
        raise ValueError(f"bias must be a finite float tensor with N = {n} entries (one per "
                         f"output), got {got}")
    return bias.detach().cpu().float().reshape(n).numpy()


def _finish(nodes: list, arrays: dict[str, np.ndarray], k: int, n: int,
            bias: np.ndarray | None, name: str, path: str | Path | None
            ) -> onnx.ModelProto | Path:
    """Wrap ``nodes`` (writing "XW") into a model A (batch, K) -> Y (batch, N), + bias."""
    if bias is None:
        nodes[-1].output[0] = "Y"
    else:
        arrays = {**arrays, "bias": bias}
        nodes.append(helper.make_node("Add", ["XW", "bias"], ["Y"], name="add_bias"))
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["batch", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = _IR_VERSION
    for key, arr in arrays.items():  # filled in place: a weight is copied once, not thrice
        t = model.graph.initializer.add()
        t.name, t.data_type = key, helper.np_dtype_to_tensor_dtype(arr.dtype)
        t.dims.extend(arr.shape)
        t.raw_data = arr.tobytes()  # C order, also for a transposed view: one copy
    if path is None:
        return model
    with atomic_write(path, suffix=".onnx") as tmp:
        onnx.save_model(model, str(tmp))
    return Path(path)


def matmul_nbits_model(weight: Tensor | NBitsWeight, *, bits: int = 4, block_size: int = 128,
                       accuracy_level: int = 0, bias: Tensor | None = None,
                       path: str | Path | None = None) -> onnx.ModelProto | Path:
    """An ONNX graph ``Y = A @ W^T (+ bias)`` with W as hand-packed MatMulNBits codes.

    Introduced in notebook 09. Input ``"A"`` float32 (batch, K), output ``"Y"`` (batch, N).
    ``weight``: (N, K) as ``nn.Linear.weight``, quantized by :func:`quantize_blockwise`, or
    an :class:`NBitsWeight` made elsewhere (GPTQ, AWQ: any codes with weights
    ``(q - z) * s`` per block run as they are; its own bits and block size are used).
    Returns the ModelProto, or writes it to ``path`` atomically and returns the Path.
    Run it with :func:`ort_session`.

    >>> model = matmul_nbits_model(torch.randn(8, 64), block_size=32, accuracy_level=4)
    >>> node = model.graph.node[0]
    >>> node.op_type, {a.name: a.i for a in node.attribute}
    ('MatMulNBits', {'K': 64, 'N': 8, 'accuracy_level': 4, 'bits': 4, 'block_size': 32})
    """
    _check_args(bits, block_size, accuracy_level)  # before the work of quantizing
    q = weight if isinstance(weight, NBitsWeight) else quantize_blockwise(
        weight, bits=bits, block_size=block_size)
    _check_args(q.bits, q.block_size, accuracy_level)
    arrays = {f"W_{key}": v for key, v in pack_nbits(q).items()}
    node = helper.make_node("MatMulNBits", ["A", "W_B", "W_scales", "W_zero_points"], ["XW"],
                            name="matmul_nbits", domain="com.microsoft", K=q.k, N=q.n,
                            bits=q.bits, block_size=q.block_size,
                            accuracy_level=accuracy_level)
    return _finish([node], arrays, q.k, q.n, _bias_array(bias, q.n),
                   f"matmul_{q.bits}bits", path)


def int8_activations_reference(a: Tensor, block_size: int) -> Tensor:
    """What ``accuracy_level=4`` does to A before the integer dot products, dequantized.

    Introduced in notebook 09. Per row and per block of ``block_size`` along K, symmetric
    int8: ``s = max|a_blk| / 127``, ``a ~ round(a / s) * s``. Then
    ``int8_activations_reference(A, bs) @ dequantized_reference(W).T`` matches ORT's
    accuracy-level-4 output to float rounding (measured: relative error ~3e-7). Below,
    -0.5 / (1 / 127) = -63.5 rounds to -64: the int8 rounding error of A.

    >>> int8_activations_reference(torch.tensor([[1.0, -0.5] + [0.0] * 14]), 16)[0, :2]
    tensor([ 1.0000, -0.5039])
    """
    _check_args(4, block_size)
    a = _check_weight(a, "a")
    rows, k = a.shape
    nb = -(-k // block_size)
    blocks = torch.nn.functional.pad(a, (0, nb * block_size - k)).view(rows, nb, block_size)
    s = blocks.abs().amax(dim=2, keepdim=True) / 127
    s = torch.where(s > 0, s, torch.ones_like(s))
    return (torch.round(blocks / s).clamp(-127, 127) * s).view(rows, -1)[:, :k]


def matmul_fp32_model(weight: Tensor, *, bias: Tensor | None = None,
                      path: str | Path | None = None) -> onnx.ModelProto | Path:
    """The fp32 reference: the same graph with a plain ``MatMul`` on ``W^T`` (K, N).

    Introduced in notebook 09, so that int4 and fp32 run in the same runtime.

    >>> [n.op_type for n in matmul_fp32_model(torch.randn(8, 16), bias=torch.zeros(8)).graph.node]
    ['MatMul', 'Add']
    """
    w = _check_weight(weight)
    node = helper.make_node("MatMul", ["A", "W_T"], ["XW"], name="matmul")
    n, k = w.shape
    return _finish([node], {"W_T": w.T.numpy()}, k, n, _bias_array(bias, n), "matmul_fp32",
                   path)


def quantize_onnx_nbits(src: str | Path, dst: str | Path, *, bits: int = 4,
                        block_size: int = 128, accuracy_level: int = 4) -> Path:
    """Every ``MatMul`` with a constant weight in ``src`` -> ``MatMulNBits``; returns ``dst``.

    Introduced in notebook 09 for a whole exported model. Uses ORT's own
    ``MatMulNBitsQuantizer`` (asymmetric, the same block formula as
    :func:`quantize_blockwise`); MatMuls on activations (attention) stay float. Written
    atomically.

    >>> quantize_onnx_nbits("lm.onnx", "lm-int4.onnx")  # doctest: +SKIP
    PosixPath('lm-int4.onnx')
    """
    # heavy (pulls in onnx_ir and the quantization tool chain): only needed here
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    _check_args(bits, block_size, accuracy_level)
    src = Path(src)
    if not src.is_file():
        raise ValueError(f"src: no ONNX file at {str(src)!r}")
    log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    old = log.level
    log.setLevel(logging.WARNING)  # one INFO line per node otherwise
    try:
        quant = MatMulNBitsQuantizer(onnx.load(str(src)), bits=bits, block_size=block_size,
                                     is_symmetric=False, accuracy_level=accuracy_level)
        quant.process()
    finally:
        log.setLevel(old)
    with atomic_write(dst, suffix=".onnx") as tmp:
        quant.model.save_model_to_file(str(tmp))
    return Path(dst)


def ort_session(model: onnx.ModelProto | str | Path, *, threads: int = 1
                ) -> ort.InferenceSession:
    """A CPU session (all graph optimizations, ``threads`` intra-op threads, no spinning).

    Introduced in notebook 09. ``session.run(None, {"A": a})[0]`` with ``a`` a float32
    numpy array (batch, K).

    >>> s = ort_session(matmul_fp32_model(torch.eye(3)))
    >>> s.run(None, {"A": np.ones((1, 3), np.float32)})[0].tolist()
    [[1.0, 1.0, 1.0]]
    """
    check_int(threads, "threads", 1)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
