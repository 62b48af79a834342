"""Sparse storage on disk: a bitmask of survivors plus their values, so pruning shrinks files.

Introduced in notebook 05. A pruned weight with N entries of which nnz are non-zero is
stored as

    bitmask  ceil(N / 8) bytes         1 bit per entry, 1 = kept (first entry in the lowest
                                       bit: qlib.codec.bits' 1-bit stream)
    values   nnz * b bytes             the kept entries in row-major order, b = 4 (float32,
                                       lossless), 2 (float16) or 1 (int8, symmetric per tensor)

instead of 4 N bytes. At 10% density in float32 that is 0.125 + 0.4 = 0.525 bytes per entry
instead of 4 (7.6x smaller). A bitmask beats CSR / coordinate lists while the density is
above 1 / (bits per index) (1/16 with int16 indices): each kept entry costs an index there.
A tensor that would not get smaller (biases, batch norm, dense layers) is stored as is.

On disk the encoding is a ``torch.save`` of plain dicts, lists and tensors (``torch.load``
with ``weights_only=True`` reads it), held as the one entry, named :data:`FORMAT`, of a
checked container (:mod:`qlib.codec.container`: magic, version, length, CRC32; 53 bytes
around the payload). A truncated, extended or altered file raises
:class:`qlib.codec.CorruptFileError` ("corrupt or incomplete file: ...") before any byte
of it is unpickled.

>>> pack_mask(torch.tensor([True, False, True, True, False, False, False, False, True]))
tensor([13,  1], dtype=torch.uint8)
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import BinaryIO

import torch
from torch import Tensor, nn

from ..codec.bits import pack_bits, unpack_bits
from ..codec.container import CorruptFileError, pack_entries, unpack_entries
from .masks import baked_copy

__all__ = ["FORMAT", "VALUE_DTYPES", "pack_mask", "unpack_mask", "encode_sparse",
           "decode_sparse", "save_sparse", "load_sparse", "sparse_size_bytes"]

#: The format tag: in the encoded dict, and the name of the file's one container entry.
FORMAT = "qlib-sparse/3"  # /2: bitmask in packing's bit order; /3: in a checked container
#: How the kept values may be stored, and their bytes each.
VALUE_DTYPES = {"float32": 4, "float16": 2, "int8": 1}


def pack_mask(mask: Tensor) -> Tensor:
    """Pack a bool tensor into uint8, 8 entries per byte, the first entry in the lowest bit.

    Introduced in notebook 05. Shape (N,) or any shape (flattened) -> (ceil(N / 8),); the
    last byte is padded with zeros. The 1-bit case of :func:`qlib.codec.bits.pack_bits`
    (same bytes as ``numpy.packbits(..., bitorder="little")``).

    >>> pack_mask(torch.tensor([True] * 8 + [False, True]))
    tensor([255,   2], dtype=torch.uint8)
    """
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError("pack_mask needs a bool tensor (True = kept)")
    return pack_bits(mask.flatten().to(torch.int64), 1, signed=False)


def unpack_mask(packed: Tensor, numel: int) -> Tensor:
    """Inverse of :func:`pack_mask`: the first ``numel`` bits as a bool tensor (numel,).

    >>> unpack_mask(torch.tensor([13], dtype=torch.uint8), 4)
    tensor([ True, False,  True,  True])
    """
    if packed.dtype != torch.uint8 or packed.ndim != 1:
        raise TypeError("unpack_mask needs a 1-d uint8 tensor made by pack_mask")
    if not 0 <= numel <= 8 * packed.numel():
        raise ValueError(f"numel must be in [0, {8 * packed.numel()}] for {packed.numel()} "
                         f"bytes, got {numel}")
    return unpack_bits(packed, 1, numel, signed=False).bool()


def _check_values(values: str) -> None:
    if values not in VALUE_DTYPES:
        raise ValueError(f"values must be one of {list(VALUE_DTYPES)}, got {values!r}")


def _worth_it(t: Tensor, values: str) -> bool:
    """Sparse encoding pays when the bitmask plus the kept values beat the dense bytes."""
    if not t.is_floating_point() or t.numel() < 64:
        return False
    nnz = int(torch.count_nonzero(t))
    return t.numel() / 8 + nnz * VALUE_DTYPES[values] < t.numel() * t.element_size()


def encode_sparse(state_dict: dict[str, Tensor], values: str = "float32") -> dict:
    """The on-disk dict: sparse entries ``{shape, dtype, bits, values[, scale]}`` and the rest.

    Introduced in notebook 05. ``values`` chooses how kept entries are stored ("float32"
    lossless, "float16", or "int8" with one symmetric scale per tensor: q = round(v / s),
    s = max|v| / 127). Tensors that do not get smaller stay dense and exact.
    """
    _check_values(values)
    sparse, dense = {}, {}
    for key, t in state_dict.items():
        t = t.detach().cpu()
        if not _worth_it(t, values):
            dense[key] = t.clone()
            continue
        mask = t != 0
        kept = t[mask]  # (nnz,) row-major order
        entry = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
                 "bits": pack_mask(mask)}
        if values == "int8":
            scale = float(kept.abs().max().clamp_min(torch.finfo(torch.float32).eps)) / 127
            entry["values"] = torch.round(kept / scale).clamp(-127, 127).to(torch.int8)
            entry["scale"] = scale
        else:
            entry["values"] = kept.to(getattr(torch, values))
        sparse[key] = entry
    return {"format": FORMAT, "values": values, "sparse": sparse, "dense": dense,
            "order": list(state_dict)}


def decode_sparse(blob: dict) -> dict[str, Tensor]:
    """Rebuild the dense state dict (keys in their original order) from :func:`encode_sparse`."""
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} file (format tag "
                         f"{blob.get('format') if isinstance(blob, dict) else None!r})")
    out = {}
    for key in blob["order"]:
        if key in blob["dense"]:
            out[key] = blob["dense"][key]
            continue
        entry = blob["sparse"][key]
        dtype = getattr(torch, entry["dtype"])
        numel = int(torch.Size(entry["shape"]).numel())
        mask = unpack_mask(entry["bits"], numel)
        kept = entry["values"].to(dtype) * entry.get("scale", 1.0)
        if int(mask.sum()) != kept.numel():
            raise ValueError(f"corrupt entry {key!r}: {int(mask.sum())} mask bits set but "
                             f"{kept.numel()} values stored")
        dense = torch.zeros(numel, dtype=dtype)
        dense[mask] = kept
        out[key] = dense.view(entry["shape"])
    return out


def _state_dict(model_or_state: nn.Module | dict) -> dict[str, Tensor]:
    """A plain state dict; a model still carrying pruning masks has them baked in first."""
    if isinstance(model_or_state, dict):
        return model_or_state
    if not isinstance(model_or_state, nn.Module):
        raise TypeError("expected an nn.Module or a state dict, got "
                        f"{type(model_or_state).__name__}")
    if any(hasattr(m, "weight_mask") for m in model_or_state.modules()):
        model_or_state = baked_copy(model_or_state)
    return model_or_state.state_dict()


def save_sparse(model_or_state: nn.Module | dict, file: str | Path | BinaryIO,
                values: str = "float32") -> int:
    """Write the sparse encoding of a model (or state dict) to a path or binary file.

    Introduced in notebook 05. Returns the bytes written: the ``torch.save`` of
    :func:`encode_sparse` inside a checked container. Masks still applied are baked in (on
    a copy). Read back with :func:`load_sparse`.
    """
    blob = encode_sparse(_state_dict(model_or_state), values)
    buffer = io.BytesIO()
    torch.save(blob, buffer)
    data = pack_entries({FORMAT: buffer.getvalue()})
    if isinstance(file, (str, Path)):
        Path(file).write_bytes(data)
    else:
        file.write(data)
    return len(data)


def load_sparse(file: str | Path | BinaryIO, model: nn.Module | None = None
                ) -> dict[str, Tensor] | nn.Module:
    """Read a file made by :func:`save_sparse`: the dense state dict, or, given a ``model``
    of the same architecture, that model with the weights loaded (strict) and in eval mode.

    The container's length and checksum are checked before anything is unpickled: a
    truncated, extended or altered file raises :class:`qlib.codec.CorruptFileError`.

    >>> m = nn.Linear(100, 10); b = io.BytesIO(); n = save_sparse(m, b); _ = b.seek(0)
    >>> torch.equal(load_sparse(b)["weight"], m.weight)
    True
    >>> load_sparse(io.BytesIO(b.getvalue()[:10]))
    Traceback (most recent call last):
    ...
    qlib.codec.container.CorruptFileError: corrupt or incomplete file: 10 bytes, shorter than the 14-byte prefix (magic, version, checksum)
    """
    data = Path(file).read_bytes() if isinstance(file, (str, Path)) else file.read()
    entries = unpack_entries(data)
    if list(entries) != [FORMAT]:
        raise ValueError(f"not a {FORMAT} file: a container with entries {list(entries)[:5]}, "
                         f"not the one entry {FORMAT!r}")
    try:
        blob = torch.load(io.BytesIO(entries[FORMAT]), map_location="cpu", weights_only=True)
    except (RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as err:
        raise CorruptFileError(f"the {FORMAT!r} entry is not a weights-only torch.save "
                               f"payload ({type(err).__name__}: {err})") from None
    state = decode_sparse(blob)
    if model is None:
        return state
    model.load_state_dict(state)
    return model.eval()


def sparse_size_bytes(model_or_state: nn.Module | dict, values: str = "float32") -> int:
    """Bytes of the :func:`save_sparse` file (container included), serialized in memory.

    >>> lin = nn.Linear(1000, 100); _ = nn.init.zeros_(lin.weight)
    >>> sparse_size_bytes(lin) < 100 * 1000 * 4 / 20
    True
    """
    return save_sparse(model_or_state, io.BytesIO(), values)
