"""The course's files can be trusted: the container (qlib.codec.container) and the sparse file
(qlib.prune.sparse) round-trip, and every truncation, extension and single-byte change of a
small file raises CorruptFileError ("corrupt or incomplete file: ...") instead of loading."""

from __future__ import annotations

import io
import re
import struct
import zlib

import pytest
import torch
from torch import nn

from qlib.codec import CorruptFileError, pack_entries, unpack_entries
from qlib.codec.container import MAGIC, SUPPORTED_VERSIONS
from qlib.pipeline import load_compressed, save_compressed, share_weights
from qlib.prune.sparse import FORMAT, load_sparse, save_sparse, sparse_size_bytes

CORRUPT = "^corrupt or incomplete file: "


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))


def _compressed() -> tuple[nn.Module, bytes]:
    """A small Deep Compression file: both weights pruned and shared, biases in float16."""
    model = _tiny()
    with torch.no_grad():
        for m in (model[0], model[2]):
            m.weight[m.weight.abs() < m.weight.abs().median()] = 0
    books = share_weights(model, {"0": 2, "2": 1})
    return model, save_compressed(model, books)


def _sparse_file() -> bytes:
    """A small sparse file: one mostly-zero weight stored sparse, one bias stored dense."""
    lin = nn.Linear(64, 2)
    with torch.no_grad():
        lin.weight[:, 4:] = 0
    buf = io.BytesIO()
    save_sparse(lin, buf)
    return buf.getvalue()


def _reseal(body: bytes) -> bytes:
    """A version-1 file around hand-made entry bytes, with correct length and checksum."""
    head = MAGIC + struct.pack("<H", 1)
    data = head + struct.pack("<I", zlib.crc32(head)) + struct.pack("<Q", len(body) + 26) + body
    return data + struct.pack("<I", zlib.crc32(data))


def _every_damage(blob: bytes):
    """Each single-byte change (XOR 0xFF and XOR 0x01), each truncation, and extensions."""
    for i in range(len(blob)):
        for x in (0xFF, 0x01):
            yield f"byte {i} ^ {x:#04x}", blob[:i] + bytes([blob[i] ^ x]) + blob[i + 1:]
    for n in range(len(blob)):
        yield f"first {n} bytes", blob[:n]
    yield "one byte appended", blob + b"\x00"
    yield "the file twice", blob + blob


def test_container_round_trip_and_layout() -> None:
    entries = {"a": b"xyz", "b.c": b"", "é": bytes(range(256))}
    blob = pack_entries(entries)
    assert unpack_entries(blob) == entries and list(unpack_entries(blob)) == list(entries)
    assert blob[:8] == MAGIC and len(blob) == 30 + sum(10 + len(k.encode()) + len(v)
                                                       for k, v in entries.items())
    assert unpack_entries(pack_entries({})) == {}
    assert unpack_entries(bytearray(blob)) == entries


def test_container_bad_input() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        pack_entries({"": b"x"})
    with pytest.raises(TypeError, match="payload must be bytes"):
        pack_entries({"a": "text"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="needs bytes"):
        unpack_entries("QLIBPACK")  # type: ignore[arg-type]


def test_every_damage_to_a_compressed_file_is_detected() -> None:
    model, blob = _compressed()
    assert len(blob) < 400  # small, so that every byte can be tried
    back = load_compressed(blob, _tiny())
    x = torch.randn(3, 8)
    with torch.no_grad():
        assert torch.allclose(back(x), model(x), atol=1e-2)
    template = _tiny()
    for what, bad in _every_damage(blob):
        with pytest.raises(CorruptFileError, match=CORRUPT):
            load_compressed(bad, template)
            pytest.fail(f"{what}: loaded without error")


def test_every_damage_to_a_sparse_file_is_detected() -> None:
    blob = _sparse_file()
    state = load_sparse(io.BytesIO(blob))
    assert state["weight"][:, 4:].abs().sum() == 0 and state["weight"].shape == (2, 64)
    assert sparse_size_bytes(state) == len(blob)
    for what, bad in _every_damage(blob):
        with pytest.raises(CorruptFileError, match=CORRUPT):
            load_sparse(io.BytesIO(bad))
            pytest.fail(f"{what}: loaded without error")


def test_random_bytes_and_other_files_are_refused(tmp_path) -> None:
    noise = bytes(torch.randint(0, 256, (2000,), generator=torch.Generator().manual_seed(0),
                                dtype=torch.uint8).tolist())
    for load in (lambda b: load_sparse(io.BytesIO(b)), lambda b: load_compressed(b, _tiny())):
        with pytest.raises(CorruptFileError, match=CORRUPT + "not a qlib container"):
            load(noise)
        with pytest.raises(CorruptFileError, match=CORRUPT + r"\d+ bytes, shorter"):
            load(MAGIC[:5])
    path = tmp_path / "m.bin"
    path.write_bytes(_sparse_file()[:-3])
    with pytest.raises(CorruptFileError, match=CORRUPT):
        load_sparse(path)
    # intact containers of the wrong kind, or with a payload torch.load refuses
    with pytest.raises(ValueError, match=f"not a {FORMAT} file"):
        load_sparse(io.BytesIO(_compressed()[1]))
    with pytest.raises(CorruptFileError, match="not a weights-only torch.save"):
        load_sparse(io.BytesIO(pack_entries({FORMAT: b"\x80\x02garbage"})))


def test_versions_and_hand_made_entry_lists() -> None:
    head = MAGIC + struct.pack("<H", 2)
    newer = head + struct.pack("<I", zlib.crc32(head)) + bytes(20)
    supported = "version 2 is not supported.*" + re.escape(str(list(SUPPORTED_VERSIONS)))
    with pytest.raises(ValueError, match=supported):
        unpack_entries(newer)
    entry = struct.pack("<H", 1) + b"a" + struct.pack("<Q", 2) + b"xy"
    assert unpack_entries(_reseal(struct.pack("<I", 1) + entry)) == {"a": b"xy"}
    cases = {"after the last": struct.pack("<I", 1) + entry + b"!",       # trailing bytes
             "past the end": struct.pack("<I", 2) + entry,                 # count too high
             "appears twice": struct.pack("<I", 2) + entry + entry,
             "runs past the end": struct.pack("<I", 1) + entry[:-1],
             "not UTF-8": struct.pack("<I", 1) + entry.replace(b"a", b"\xff")}
    for reason, body in cases.items():
        with pytest.raises(CorruptFileError, match=reason):
            unpack_entries(_reseal(body))


def test_entries_must_match_the_template() -> None:
    _, blob = _compressed()
    entries = unpack_entries(blob)
    assert sorted(entries) == ["0.bias", "2.bias", "coded:0.weight", "coded:2.weight"]
    missing = {k: v for k, v in entries.items() if k != "coded:2.weight"}
    with pytest.raises(ValueError, match=r"no entry for \['2.weight'\]"):
        load_compressed(pack_entries(missing), _tiny())
    with pytest.raises(ValueError, match=r"holds \['4.weight'\], which the template model lacks"):
        load_compressed(pack_entries({**entries, "4.weight": b"\x00\x00"}), _tiny())
    with pytest.raises(ValueError, match=r"\['2.weight'\] twice"):
        load_compressed(pack_entries({**entries, "2.weight": bytes(16)}), _tiny())
    with pytest.raises(ValueError, match="'0.bias' holds 6 bytes.*needs 8"):
        load_compressed(pack_entries({**entries, "0.bias": bytes(6)}), _tiny())


def test_unknown_codebook_layer_is_named() -> None:
    model = _tiny()
    with pytest.raises(ValueError, match=r"\['fc9'\].*layers allowed: \['0', '2'\]"):
        save_compressed(model, {"0": torch.tensor([0.0]), "fc9": torch.tensor([1.0])})
