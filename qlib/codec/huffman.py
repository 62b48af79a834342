"""Entropy coding of quantized weights: Huffman by hand, against zlib and lzma.

Introduced in notebook 08 (the last stage of Deep Compression, Han et al. 2016). After
pruning and k-means quantization, a layer's weights are small integers (codebook indices)
with a very skewed histogram: most are the index of zero. A Huffman code gives frequent
symbols short codewords; its mean length L satisfies ``H <= L < H + 1`` bits per symbol,
where ``H = -sum_s p_s log2 p_s`` is the Shannon entropy.

Format of :func:`huffman_encode` (self-contained, so its length is an honest size)::

    uint32 n_symbols_total | uint16 n_distinct | n_distinct x (int32 symbol, uint8 length)
    | the bit stream, MSB first, zero-padded to a whole byte

The code is canonical: codewords are assigned from the lengths alone, so only lengths are
stored.

>>> data = huffman_encode([0, 0, 0, 0, 0, 0, 1, 2])
>>> huffman_decode(data).tolist()
[0, 0, 0, 0, 0, 0, 1, 2]
"""

from __future__ import annotations

import heapq
import lzma
import struct
import zlib
from collections import Counter
from collections.abc import Sequence

import numpy as np
from torch import Tensor

__all__ = ["entropy_bits", "huffman_code_lengths", "canonical_codes", "huffman_encode",
           "huffman_decode", "compressed_sizes"]


def _ints(symbols: Tensor | np.ndarray | Sequence[int]) -> np.ndarray:
    a = symbols.detach().cpu().numpy() if isinstance(symbols, Tensor) else np.asarray(symbols)
    a = a.reshape(-1)
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"symbols must be integers (quantized codes), got dtype {a.dtype}")
    if a.size and (a.min() < -2 ** 31 or a.max() >= 2 ** 31):
        raise ValueError("symbols must fit in int32")
    return a.astype(np.int64)


def entropy_bits(symbols: Tensor | np.ndarray | Sequence[int]) -> float:
    """Shannon entropy H of the symbols' histogram, in bits per symbol."""
    a = _ints(symbols)
    if a.size == 0:
        raise ValueError("no symbols: the entropy of an empty sequence is undefined")
    p = np.unique(a, return_counts=True)[1] / a.size
    return float(-(p * np.log2(p)).sum())


def huffman_code_lengths(counts: dict[int, int]) -> dict[int, int]:
    """Codeword length per symbol from symbol counts (Huffman's algorithm with a heap).

    Repeatedly merge the two least frequent subtrees; a symbol's length is how many
    merges it went through. A single distinct symbol gets length 1. Ties break by symbol,
    so the result is deterministic.
    """
    if not counts or min(counts.values()) < 1:
        raise ValueError("counts must be a non-empty {symbol: count >= 1} mapping")
    if len(counts) == 1:
        return {next(iter(counts)): 1}
    # heap items: (count, smallest symbol in subtree, symbols in subtree)
    heap = [(c, s, [s]) for s, c in sorted(counts.items())]
    heapq.heapify(heap)
    lengths = dict.fromkeys(counts, 0)
    while len(heap) > 1:
        c1, s1, syms1 = heapq.heappop(heap)
        c2, s2, syms2 = heapq.heappop(heap)
        for s in syms1 + syms2:
            lengths[s] += 1
        heapq.heappush(heap, (c1 + c2, min(s1, s2), syms1 + syms2))
    return lengths


def canonical_codes(lengths: dict[int, int]) -> dict[int, tuple[int, int]]:
    """``{symbol: (code, length)}``: canonical Huffman codewords from the lengths alone.

    Sort by (length, symbol); each code is the previous one plus one, shifted left when
    the length grows.
    """
    codes, code, prev_len = {}, 0, 0
    for sym, length in sorted(lengths.items(), key=lambda kv: (kv[1], kv[0])):
        code <<= length - prev_len
        codes[sym] = (code, length)
        code, prev_len = code + 1, length
    return codes


def huffman_encode(symbols: Tensor | np.ndarray | Sequence[int]) -> bytes:
    """Huffman-encode integer symbols into a self-contained byte string (format above)."""
    a = _ints(symbols)
    counts = Counter(a.tolist())
    header = struct.pack("<IH", a.size, len(counts))
    if a.size == 0:
        return header
    lengths = huffman_code_lengths(counts)
    if max(lengths.values()) > 255:
        raise ValueError("a codeword longer than 255 bits: too many distinct symbols")
    codes = canonical_codes(lengths)
    table = b"".join(struct.pack("<iB", s, lengths[s]) for s in sorted(lengths))
    # bit stream: concatenate each symbol's codeword bits, MSB first
    lut_code = {s: c for s, (c, _) in codes.items()}
    bits = np.concatenate([np.array([(lut_code[s] >> (lengths[s] - 1 - i)) & 1
                                     for i in range(lengths[s])], dtype=np.uint8)
                           for s in sorted(lengths)])
    offsets = np.cumsum([0] + [lengths[s] for s in sorted(lengths)])
    index = {s: i for i, s in enumerate(sorted(lengths))}
    order = np.array([index[s] for s in a.tolist()])
    stream = np.concatenate([bits[offsets[i]:offsets[i + 1]] for i in order])
    return header + table + np.packbits(stream).tobytes()


def huffman_decode(data: bytes) -> np.ndarray:
    """Inverse of :func:`huffman_encode`: the int64 symbols (N,)."""
    if len(data) < 6:
        raise ValueError("not a huffman_encode byte string: shorter than its header")
    n, distinct = struct.unpack_from("<IH", data)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    lengths = dict(struct.unpack_from("<iB", data, 6 + 5 * i) for i in range(distinct))
    decode = {(length, code): s for s, (code, length) in canonical_codes(lengths).items()}
    bits = np.unpackbits(np.frombuffer(data, np.uint8, offset=6 + 5 * distinct))
    out, code, length = np.empty(n, dtype=np.int64), 0, 0
    k = 0
    for bit in bits:
        code, length = (code << 1) | int(bit), length + 1
        sym = decode.get((length, code))
        if sym is not None:
            out[k], code, length, k = sym, 0, 0, k + 1
            if k == n:
                return out
    raise ValueError(f"truncated stream: decoded {k} of {n} symbols")


def compressed_sizes(symbols: Tensor | np.ndarray | Sequence[int], bits: int) -> dict:
    """Bytes to store the symbols four ways, and the entropy bound.

    ``{"packed"}``: fixed ``bits`` per symbol; ``{"huffman"}``: :func:`huffman_encode`, whole;
    ``{"huffman_table"}``: the part of it that is header and code table (``6 + 5 * distinct``);
    ``{"zlib"}`` / ``{"lzma"}``: those compressors (highest level) on the int8/int16 array;
    ``{"entropy_bound"}``: ``ceil(n * H / 8)``, what no symbol-by-symbol code beats.

    What is guaranteed holds for the Huffman *payload* (``huffman - huffman_table``): it is
    at least ``entropy_bound`` and, when every symbol lies in ``[0, 2**bits)``, at most
    ``packed`` (a fixed-width code is a prefix code, and Huffman's is the shortest one). The
    table is a fixed cost on top, so for a short stream with a nearly flat histogram the
    whole Huffman file can be larger than fixed-width packing.

    >>> s = compressed_sizes([0] * 90 + [1] * 5 + [2] * 5, 2)
    >>> s["packed"], s["huffman"], s["huffman_table"], s["entropy_bound"]
    (25, 35, 21, 8)
    """
    a = _ints(symbols)
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be in 1..16, got {bits}")
    raw = a.astype(np.int8 if bits <= 8 else np.int16).tobytes()
    return dict(packed=-(-a.size * bits // 8), huffman=len(huffman_encode(a)),
                huffman_table=6 + 5 * len(np.unique(a)),
                zlib=len(zlib.compress(raw, 9)), lzma=len(lzma.compress(raw, preset=9)),
                entropy_bound=int(np.ceil(a.size * entropy_bits(a) / 8)) if a.size else 0)
