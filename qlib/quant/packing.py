"""Packed storage: the file a quantized model really ships as, so its size is real.

Introduced in notebook 02. ``b``-bit integers are stored as a dense bit stream, 8 / b of
them per byte (``pack_bits``), next to their scales and zero points; codebook (k-means)
layers store b-bit indices plus the 2^b-entry codebook. Everything else (biases,
activation qparams) stays float32. ``packed_size_bytes(model)`` is the byte count of
``torch.save(packed_state(model))`` and ``unpack_state`` turns the file back into a
state dict the fake-quant model loads (tested: same outputs).

The bit stream itself is :mod:`qlib.codec.bits` (the one bit packer).
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..codec.bits import pack_bits, unpack_bits
from .affine import dequantize
from .fakequant import quant_layers

__all__ = ["pack_bits", "unpack_bits", "packed_state", "unpack_state", "packed_size_bytes",
           "serialized_size"]


def packed_state(model: nn.Module, codebooks: Mapping[str, tuple[Tensor, Tensor]] | None = None
                 ) -> dict:
    """The shipped form of a model: ``{"tensors", "affine", "codebook"}``.

    ``affine[key]``: for each frozen fake-quant layer's weight (key as in the state dict),
    ``bits, shape, axis, data`` (packed uint8), ``scale`` (float32) and ``zero_point``.
    ``codebook[key]``: for each weight listed in ``codebooks`` (``{layer name:
    (codebook (2^b,), indices)}`` from :func:`~qlib.quant.kmeans.kmeans_quantize_model`),
    ``bits, shape, data`` (packed indices) and ``codebook`` (float32). ``tensors``: every
    other state-dict entry as it is (biases, activation qparams).
    """
    state = {k: v.detach() for k, v in model.state_dict().items()}
    affine, book = {}, {}
    for name, layer in quant_layers(model).items():
        pre = f"{name}." if name else ""
        key = pre + "layer.weight"
        q, scale, zp = layer.quantized_weight()
        affine[key] = dict(bits=layer.weight_bits, shape=tuple(q.shape),
                           axis=0 if layer.per_channel else None,
                           data=pack_bits(q, layer.weight_bits), scale=scale.float().clone(),
                           zero_point=zp.to(torch.int32).clone())
        for k in (key, pre + "weight_scale", pre + "weight_zero_point"):
            state.pop(k)  # the scale and zero point live in the entry
    for name, (codebook, idx) in (codebooks or {}).items():
        key = f"{name}.weight" if name else "weight"
        if key not in state:
            raise ValueError(f"{key!r} is not a float weight of this model")
        bits = max(1, (codebook.numel() - 1).bit_length())
        book[key] = dict(bits=bits, shape=tuple(idx.shape), codebook=codebook.float().clone(),
                         data=pack_bits(idx, bits, signed=False))
        state.pop(key)
    return {"tensors": state, "affine": affine, "codebook": book}


def unpack_state(packed: dict) -> dict[str, Tensor]:
    """A float state dict from :func:`packed_state` (weights dequantized / looked up)."""
    state = dict(packed["tensors"])
    for key, e in packed["affine"].items():
        n = 1
        for d in e["shape"]:
            n *= d
        q = unpack_bits(e["data"], e["bits"], n).view(e["shape"])
        state[key] = dequantize(q, e["scale"], e["zero_point"], axis=e["axis"])
        pre = key[: -len("layer.weight")]
        state[pre + "weight_scale"] = e["scale"].clone()
        state[pre + "weight_zero_point"] = e["zero_point"].to(torch.int64)
    for key, e in packed["codebook"].items():
        n = 1
        for d in e["shape"]:
            n *= d
        idx = unpack_bits(e["data"], e["bits"], n, signed=False).view(e["shape"])
        state[key] = e["codebook"][idx.long()]
    return state


def serialized_size(obj) -> int:
    """Bytes of ``torch.save(obj)`` (written to memory)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getbuffer().nbytes


def packed_size_bytes(model: nn.Module, codebooks: Mapping | None = None) -> int:
    """Bytes of the shipped file: ``torch.save(packed_state(model, codebooks))``.

    >>> from qlib.models import mlp
    >>> from qlib.quant import quantize_model
    >>> packed_size_bytes(quantize_model(mlp(), 4)) < serialized_size(mlp().state_dict()) / 6
    True
    """
    return serialized_size(packed_state(model, codebooks))
