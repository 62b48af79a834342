"""Codecs: how compressed numbers become bytes (notebooks 02, 05 and 08).

    bits        pack_bits / unpack_bits: b-bit integers as a dense byte stream
    huffman     canonical Huffman coding, the entropy bound, zlib / lzma beside it
    container   named byte entries in one checked file (magic, version, length, CRC32)

Imports nothing above qlib._util.
"""

from .bits import pack_bits, unpack_bits
from .container import CorruptFileError, pack_entries, unpack_entries
from .huffman import (canonical_codes, compressed_sizes, entropy_bits, huffman_code_lengths,
                      huffman_decode, huffman_encode)

__all__ = ["pack_bits", "unpack_bits", "CorruptFileError", "pack_entries", "unpack_entries", "huffman_code_lengths", "canonical_codes",
           "huffman_encode", "huffman_decode", "entropy_bits", "compressed_sizes"]
