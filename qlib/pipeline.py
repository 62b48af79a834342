"""Deep Compression end to end: prune -> fine-tune -> share weights -> entropy-code -> file.

Introduced in notebook 08 (Han, Mao & Dally, 2016: 39x on LeNet-5 without accuracy
loss). The three stages each remove a different redundancy:

1. **pruning** keeps the largest-magnitude weights (here ``sparsity`` of all conv/linear
   weights, globally) and fine-tunes with the masks applied (:mod:`qlib.prune`);
2. **weight sharing** clusters each layer's surviving weights into 2^b centroids
   (k-means, :func:`qlib.quant.kmeans_codebook`) with b per layer from a sensitivity scan
   on the validation split, so that each survivor is a b-bit index;
3. **entropy coding** stores where the survivors are as gaps between them (relative
   indices, capped at ``2^gap_bits - 1`` with a filler entry for longer runs) and what
   they are as codebook indices, both Huffman-coded (:mod:`qlib.codec.huffman`).

Everything else (biases, batch norm) is stored as float16. The file is the course's container
(:mod:`qlib.codec.container`), so its length is an honest size on disk.

>>> blob = encode_layer(torch.tensor([0.0, 0.5, 0.0, 0.0, -0.5]), torch.tensor([-0.5, 0.5]))
>>> decode_layer(blob).tolist()
[0.0, 0.5, 0.0, 0.0, -0.5]
"""

from __future__ import annotations

import copy
import struct
from collections import Counter
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor, nn

from torch.nn.utils import parametrize

from .codec import huffman_decode, huffman_encode, pack_entries, unpack_entries
from .data import Splits
from .prune import magnitude_prune, prunable_layers, remove_masks
from .quant import kmeans_codebook
from .train import cached_training, evaluate, fingerprint, fit

__all__ = ["CODED", "encode_layer", "decode_layer", "share_weights",
           "finetune_codebooks", "choose_bits", "save_compressed", "load_compressed", "deep_compress"]

_FILLER = -1  # index-stream symbol for a filler entry (a zero that only advances position)


def encode_layer(weight: Tensor, codebook: Tensor, *, gap_bits: int = 4) -> bytes:
    """Encode a pruned, shared weight: every non-zero entry must be a codebook value.

    Layout: shape (uint8 ndim, uint32 dims) | uint16 codebook size | codebook float16 |
    uint32 length + Huffman(gaps) | Huffman(indices). Gap g means g zeros before the entry.
    """
    if not 1 <= gap_bits <= 16:
        raise ValueError(f"gap_bits must be in 1..16, got {gap_bits}")
    flat = weight.detach().reshape(-1).float()
    cb = codebook.detach().reshape(-1).float()
    pos = torch.nonzero(flat).flatten()
    idx = torch.argmin((flat[pos, None] - cb[None, :]).abs(), 1) if len(pos) else pos
    if len(pos) and not torch.allclose(cb[idx], flat[pos], rtol=0, atol=1e-6):
        raise ValueError("every non-zero weight must equal a codebook entry (share the "
                         "weights with share_weights first)")
    cap = (1 << gap_bits) - 1
    gaps, indices, last = [], [], -1
    for p, i in zip(pos.tolist(), idx.tolist()):
        gap = p - last - 1
        while gap > cap:  # a run longer than the cap: a filler entry at position last+cap+1
            gaps.append(cap)
            indices.append(_FILLER)
            gap -= cap + 1
        gaps.append(gap)
        indices.append(i)
        last = p
    g, ix = huffman_encode(gaps), huffman_encode(indices)
    head = struct.pack(f"<B{weight.dim()}I", weight.dim(), *weight.shape)
    head += struct.pack("<H", len(cb)) + cb.half().numpy().tobytes()
    return head + struct.pack("<I", len(g)) + g + ix


def decode_layer(data: bytes) -> Tensor:
    """Inverse of :func:`encode_layer`: the float32 weight with its zeros."""
    ndim = data[0]
    shape = struct.unpack_from(f"<{ndim}I", data, 1)
    off = 1 + 4 * ndim
    (k,) = struct.unpack_from("<H", data, off)
    cb = torch.from_numpy(np.frombuffer(data, np.float16, k, off + 2).astype(np.float32))
    off += 2 + 2 * k
    (glen,) = struct.unpack_from("<I", data, off)
    gaps = huffman_decode(data[off + 4: off + 4 + glen])
    indices = huffman_decode(data[off + 4 + glen:])
    out = torch.zeros(int(np.prod(shape)), dtype=torch.float32)
    positions = np.cumsum(gaps + 1) - 1
    keep = indices != _FILLER
    out[torch.from_numpy(positions[keep])] = cb[torch.from_numpy(indices[keep])]
    return out.view(shape)


@torch.no_grad()
def share_weights(model: nn.Module, bits: Mapping[str, int]) -> dict[str, Tensor]:
    """k-means-share each listed layer's non-zero weights in place; returns the codebooks.

    Zeros stay exactly zero (pruned weights are not clustered), so pruning survives.
    """
    layers, books = prunable_layers(model), {}
    for name, b in bits.items():
        if name not in layers:
            raise ValueError(f"no Conv2d/Linear layer named {name!r}; layers: {list(layers)}")
        w = layers[name].weight
        nz = w != 0
        codebook, idx = kmeans_codebook(w[nz], b,
                                        name=f"the non-zero weights of layer {name!r}")
        w[nz] = codebook[idx]
        books[name] = codebook
    return books


class _SharedWeight(nn.Module):
    """Parametrization: weight = codebook[index] where kept, 0 where pruned; the codebook
    is the trainable parameter, so each centroid's gradient is the sum of its weights'."""

    def __init__(self, codebook: Tensor, index: Tensor, keep: Tensor) -> None:
        super().__init__()
        self.codebook = nn.Parameter(codebook.clone())
        self.register_buffer("index", index)
        self.register_buffer("keep", keep)

    def forward(self, _original: Tensor) -> Tensor:
        return torch.where(self.keep, self.codebook[self.index], torch.zeros(()))


def finetune_codebooks(model: nn.Module, codebooks: Mapping[str, Tensor], data: Splits, *,
                       epochs: int = 2, lr: float = 3e-4, loss_fn=None, seed: int = 0,
                       max_shift: int = 2, progress: bool = False) -> dict[str, Tensor]:
    """Trained quantization (Deep Compression's step 2b): train the centroids in place.

    Each shared layer computes with ``codebook[index]`` (pruned entries stay 0); the
    gradient of centroid c is the sum of the gradients of the weights assigned to it.
    Biases and batch norm train too. Returns the new codebooks. ``loss_fn(model, x, y)``
    as :func:`qlib.train.fit` (distillation passes its own); ``max_shift`` is fit's image
    shift augmentation (pixels), 0 for inputs that are not images or a model, like an MLP,
    that is not translation-invariant.
    """
    layers = prunable_layers(model)
    for name, cb in codebooks.items():
        w = layers[name].weight.detach()
        keep = w != 0
        index = torch.argmin((w.reshape(-1, 1) - cb.reshape(1, -1)).abs(), 1).view(w.shape)
        parametrize.register_parametrization(layers[name], "weight",
                                             _SharedWeight(cb, index, keep), unsafe=True)
        layers[name].parametrizations.weight.original.requires_grad_(False)
    fit(model, data.loader("train", 64, seed=seed), epochs=epochs, lr=lr, weight_decay=0.0,
        loss_fn=loss_fn, seed=seed, max_shift=max_shift, progress=progress,
        desc="fine-tune centroids")
    books = {}
    for name in codebooks:
        books[name] = layers[name].parametrizations.weight[0].codebook.detach().clone()
        parametrize.remove_parametrizations(layers[name], "weight", leave_parametrized=True)
    return books


def choose_bits(model: nn.Module, data: Splits, *, candidates=(2, 3, 4, 5, 6),
                tolerance: float = 0.002) -> dict[str, int]:
    """Per layer, the fewest bits whose sharing (that layer alone) costs at most
    ``tolerance`` validation accuracy: a sensitivity scan."""
    loader = data.loader("val", 500)
    ref = evaluate(model, loader)["accuracy"]
    bits = {}
    for name in prunable_layers(model):
        bits[name] = max(candidates)
        for b in sorted(candidates):
            trial = copy.deepcopy(model)
            share_weights(trial, {name: b})
            if ref - evaluate(trial, loader)["accuracy"] <= tolerance:
                bits[name] = b
                break
    return bits


#: Entry-name prefix of a coded (pruned, shared, Huffman) weight in the container.
CODED = "coded:"


def save_compressed(model: nn.Module, codebooks: Mapping[str, Tensor], *,
                    gap_bits: int = 4) -> bytes:
    """The whole model as bytes: coded layers for ``codebooks``' keys (entries named
    ``coded:{layer}.weight``), float16 for every other floating-point tensor of the state
    dict, in the checked container of :mod:`qlib.codec.container`."""
    layers = prunable_layers(model)
    unknown = [name for name in codebooks if name not in layers]
    if unknown:
        raise ValueError(f"codebooks name {unknown}, which are not Conv2d/Linear layers of the "
                         f"model; layers allowed: {list(layers)}")
    coded = {f"{name}.weight": encode_layer(layers[name].weight, cb, gap_bits=gap_bits)
             for name, cb in codebooks.items()}
    entries = {CODED + key: payload for key, payload in coded.items()}
    for key, t in model.state_dict().items():
        if key not in coded and t.is_floating_point():
            entries[key] = t.detach().half().numpy().tobytes()
    return pack_entries(entries)


def load_compressed(blob: bytes, template: nn.Module) -> nn.Module:
    """Rebuild a model from :func:`save_compressed` bytes into a copy of ``template``.

    The file must hold exactly the template's floating-point tensors (each once, coded or
    float16, with the template's shape): a missing entry would leave the template's weights
    in place, so it is an error, as is an entry the template lacks. A truncated or altered
    file raises :class:`qlib.codec.CorruptFileError`.
    """
    entries = unpack_entries(blob)  # checked before anything is copied
    model = copy.deepcopy(template)
    state = model.state_dict()
    keys = [entry.removeprefix(CODED) for entry in entries]
    extra = [key for key in keys if key not in state]
    if extra:
        raise ValueError(f"the file holds {extra}, which the template model lacks; its "
                         f"tensors: {list(state)}")
    twice = sorted(key for key, n in Counter(keys).items() if n > 1)
    if twice:
        raise ValueError(f"the file holds {twice} twice (coded and float16)")
    missing = [key for key, t in state.items() if t.is_floating_point() and key not in keys]
    if missing:
        raise ValueError(f"the file has no entry for {missing} of the template model; a "
                         "save_compressed file holds every floating-point tensor")
    for (entry, payload), key in zip(entries.items(), keys):
        shape = state[key].shape
        if entry.startswith(CODED):
            value = decode_layer(payload)
        elif len(payload) == 2 * shape.numel():
            value = torch.from_numpy(np.frombuffer(payload, np.float16).astype(np.float32))
        else:
            raise ValueError(f"entry {entry!r} holds {len(payload)} bytes, but the template's "
                             f"{tuple(shape)} tensor needs {2 * shape.numel()} in float16")
        if value.numel() != shape.numel():
            raise ValueError(f"entry {entry!r} decodes to shape {tuple(value.shape)}, but the "
                             f"template's {key!r} has shape {tuple(shape)}")
        state[key] = value.view(shape)
    model.load_state_dict(state)
    return model.eval()


def deep_compress(baseline: nn.Module, data: Splits, *, sparsity: float = 0.92,
                  epochs: int = 4, lr: float = 1e-3, centroid_epochs: int = 2, seed: int = 0,
                  gap_bits: int = 4, loss_fn=None, max_shift: int = 2, progress: bool = False
                  ) -> tuple[nn.Module, bytes, dict]:
    """Prune (global magnitude) -> fine-tune with masks (cached) -> choose bits per layer ->
    share weights -> train the centroids -> encode.

    Returns the model as loaded from the bytes, the bytes, and ``{"bits", "sparsity",
    "layer_bytes"}``. ``loss_fn(model, x, y)`` replaces cross-entropy in both fine-tunings
    (pass a distillation loss to put a teacher in the loop); ``centroid_epochs=0`` skips
    trained quantization; ``max_shift=0`` turns off the image-shift augmentation of both
    fine-tunings (for inputs that are not images). Does not modify ``baseline``."""
    recipe = dict(stage="pruned", sparsity=sparsity, epochs=epochs, lr=lr, seed=seed,
                  baseline=fingerprint(baseline), loss=getattr(loss_fn, "__qualname__", None),
                  max_shift=max_shift)

    def train(model: nn.Module) -> None:
        magnitude_prune(model, sparsity, scope="global")
        fit(model, data.loader("train", 64, seed=seed), epochs=epochs, lr=lr, seed=seed,
            loss_fn=loss_fn, max_shift=max_shift, progress=progress, desc="fine-tune pruned")
        remove_masks(model)

    pruned = cached_training("deep-compression", recipe, lambda: copy.deepcopy(baseline),
                             train)
    bits = choose_bits(pruned, data)
    shared = copy.deepcopy(pruned)
    books = share_weights(shared, bits)
    if centroid_epochs:
        books = finetune_codebooks(shared, books, data, epochs=centroid_epochs,
                                   loss_fn=loss_fn, seed=seed, max_shift=max_shift,
                                   progress=progress)
    blob = save_compressed(shared, books, gap_bits=gap_bits)
    layer_bytes = {k: len(v) for k, v in unpack_entries(blob).items()}
    total = sum(int((m.weight != 0).sum()) for m in prunable_layers(shared).values())
    return load_compressed(blob, baseline), blob, dict(
        bits=bits, layer_bytes=layer_bytes,
        sparsity=1 - total / sum(m.weight.numel() for m in prunable_layers(shared).values()))
