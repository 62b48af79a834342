"""A checked container of named byte entries: the course's file format (notebooks 05 and 08).

Layout, little-endian; the first 14 bytes (the prefix) are the same in every version:

    offset  bytes  field
    0       8      magic b"QLIBPACK"
    8       2      uint16 format version (1)
    10      4      uint32 CRC32 of bytes 0-9 (tells a damaged version field from a newer file)
    14      8      uint64 length of the whole file in bytes
    22      4      uint32 number of entries
    26      ...    per entry: uint16 name length | UTF-8 name | uint64 payload length | payload
    end-4   4      uint32 CRC32 (zlib.crc32) of every byte before it

30 bytes of header and checksum plus 10 bytes per entry. Every truncation and every
extension changes the length (bytes 14-21 disagree with the file, or the prefix is cut),
and CRC32 detects every change of up to 32 consecutive bits, so any single altered byte is
caught: before the final checksum by that checksum, inside it by the mismatch. Such a file
raises :class:`CorruptFileError` ("corrupt or incomplete file: ...") and returns nothing.

>>> blob = pack_entries({"a": b"xy"})
>>> blob[:8], len(blob), unpack_entries(blob)
(b'QLIBPACK', 43, {'a': b'xy'})
>>> unpack_entries(blob[:-1])
Traceback (most recent call last):
...
qlib.codec.container.CorruptFileError: corrupt or incomplete file: the header records 43 bytes but the file has 42 (truncated, extended or altered)
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping

__all__ = ["MAGIC", "VERSION", "SUPPORTED_VERSIONS", "CorruptFileError", "pack_entries",
           "unpack_entries"]

#: The first 8 bytes of every container file.
MAGIC = b"QLIBPACK"
#: The format version :func:`pack_entries` writes.
VERSION = 1
#: The versions :func:`unpack_entries` reads.
SUPPORTED_VERSIONS = (1,)

_PREFIX = struct.Struct("<8sHI")   # magic, version, CRC32 of magic + version
_HEAD = struct.Struct("<QI")       # file length, entry count (version 1)
_NAME = struct.Struct("<H")        # name length
_SIZE = struct.Struct("<Q")        # payload length
_CRC = struct.Struct("<I")
_MIN_V1 = _PREFIX.size + _HEAD.size + _CRC.size  # an empty version-1 file


class CorruptFileError(ValueError):
    """A file that is truncated, extended, altered or not this format at all.

    >>> str(CorruptFileError("checksum mismatch"))
    'corrupt or incomplete file: checksum mismatch'
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"corrupt or incomplete file: {reason}")
        self.reason = reason


def pack_entries(entries: Mapping[str, bytes]) -> bytes:
    """Named payloads -> one container file (version 1; layout in the module docstring).

    Names are non-empty strings of at most 65535 UTF-8 bytes; payloads are bytes-like.
    Entries keep their order.

    >>> len(pack_entries({})), len(pack_entries({"w": bytes(100)}))
    (30, 141)
    """
    if not isinstance(entries, Mapping):
        raise TypeError(f"entries must be a mapping name -> bytes, got {type(entries).__name__}")
    body = []
    for name, payload in entries.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"entry names must be non-empty strings, got {name!r}")
        raw = name.encode()
        if len(raw) > 0xFFFF:
            raise ValueError(f"entry name {name[:40]!r}... is {len(raw)} UTF-8 bytes; at "
                             "most 65535 are allowed")
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise TypeError(f"entry {name!r}: payload must be bytes, got {type(payload).__name__}")
        body += [_NAME.pack(len(raw)), raw, _SIZE.pack(len(payload)), bytes(payload)]
    if len(entries) > 0xFFFFFFFF:
        raise ValueError(f"{len(entries)} entries; a container holds at most {0xFFFFFFFF}")
    head = MAGIC + struct.pack("<H", VERSION)
    size = _MIN_V1 + sum(map(len, body))
    data = b"".join([head, _CRC.pack(zlib.crc32(head)), _HEAD.pack(size, len(entries)), *body])
    return data + _CRC.pack(zlib.crc32(data))


def unpack_entries(blob: bytes | bytearray | memoryview) -> dict[str, bytes]:
    """Inverse of :func:`pack_entries`: ``{name: payload}`` in file order, after checking
    the magic, the version, the length and both checksums.

    Raises :class:`CorruptFileError` for a truncated, extended or altered file (or one that
    is not a container), ``ValueError`` for a version this code does not read.
    """
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise TypeError(f"unpack_entries needs bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    n = len(blob)
    if blob[:len(MAGIC)] != MAGIC[:n]:
        raise CorruptFileError(f"not a qlib container: it starts with {blob[:8]!r}, "
                               f"not the magic {MAGIC!r}")
    if n < _PREFIX.size:
        raise CorruptFileError(f"{n} bytes, shorter than the {_PREFIX.size}-byte prefix "
                               "(magic, version, checksum)")
    _, version, prefix_crc = _PREFIX.unpack_from(blob)
    if zlib.crc32(blob[:_PREFIX.size - _CRC.size]) != prefix_crc:
        raise CorruptFileError("the checksum of the magic and version (bytes 0-13) does not match")
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"container format version {version} is not supported; this qlib "
                         f"reads versions {list(SUPPORTED_VERSIONS)}")
    if n < _MIN_V1:
        raise CorruptFileError(f"{n} bytes, shorter than the {_MIN_V1} bytes of an empty "
                               f"version-{version} file")
    size, count = _HEAD.unpack_from(blob, _PREFIX.size)
    if size != n:
        raise CorruptFileError(f"the header records {size} bytes but the file has {n} "
                               "(truncated, extended or altered)")
    (crc,) = _CRC.unpack_from(blob, n - _CRC.size)
    if zlib.crc32(blob[:n - _CRC.size]) != crc:
        raise CorruptFileError("checksum mismatch: the bytes were altered after writing")
    return _read_entries(blob, count)


def _read_entries(blob: bytes, count: int) -> dict[str, bytes]:
    """The entry list of a version-1 file whose length and checksum already hold."""
    end, off, out = len(blob) - _CRC.size, _PREFIX.size + _HEAD.size, {}
    for i in range(count):
        if off + _NAME.size > end:
            raise CorruptFileError(f"entry {i} of {count} starts past the end of the entries")
        (ln,) = _NAME.unpack_from(blob, off)
        if ln == 0 or off + _NAME.size + ln + _SIZE.size > end:
            raise CorruptFileError(f"entry {i}: name length {ln} does not fit the file")
        try:
            name = blob[off + _NAME.size: off + _NAME.size + ln].decode()
        except UnicodeDecodeError as err:
            raise CorruptFileError(f"entry {i}: the name is not UTF-8 ({err.reason})") from None
        off += _NAME.size + ln
        (size,) = _SIZE.unpack_from(blob, off)
        off += _SIZE.size
        if size > end - off:
            raise CorruptFileError(f"entry {name!r}: payload of {size} bytes runs past the end")
        if name in out:
            raise CorruptFileError(f"entry {name!r} appears twice")
        out[name] = blob[off: off + size]
        off += size
    if off != end:
        raise CorruptFileError(f"{end - off} bytes after the last of {count} entries")
    return out
