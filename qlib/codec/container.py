"""A container of named byte entries: the Deep Compression file format (notebook 08).

Layout (little-endian): uint16 entry count, then per entry a uint8 name length, the UTF-8
name, a uint32 payload length and the payload.

>>> unpack_entries(pack_entries({"a": b"xy"}))
{'a': b'xy'}
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

__all__ = ["pack_entries", "unpack_entries"]


def pack_entries(entries: Mapping[str, bytes]) -> bytes:
    """A minimal container: per entry uint8 name length, name, uint32 payload length, payload."""
    out = [struct.pack("<H", len(entries))]
    for name, payload in entries.items():
        raw = name.encode()
        out.append(struct.pack("<B", len(raw)) + raw + struct.pack("<I", len(payload)) + payload)
    return b"".join(out)


def unpack_entries(blob: bytes) -> dict[str, bytes]:
    """Inverse of :func:`pack_entries`."""
    (n,) = struct.unpack_from("<H", blob)
    off, out = 2, {}
    for _ in range(n):
        ln = blob[off]
        name = blob[off + 1: off + 1 + ln].decode()
        (size,) = struct.unpack_from("<I", blob, off + 1 + ln)
        off += 5 + ln
        out[name] = blob[off: off + size]
        off += size
    return out
