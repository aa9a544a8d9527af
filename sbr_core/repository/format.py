"""The byte layouts of repository objects (docs/repository-format.md describes them for people).

Objects, by key:

- ``config``: JSON, readable without a key: format version, id, encryption, chunking and
  compression parameters.
- ``keys/<id>``: the master keys wrapped by a passphrase (encrypted repositories only).
- ``packs/<xx>/<id>``: blobs back to back, then the sealed pack header, then a 12-byte
  trailer (header length, magic). A pack's id is the SHA-256 of its bytes.
- ``index/<id>``: which pack holds each blob, at which offset.
- ``backups/<id>``: one manifest per backup.
- ``locks/<id>``, ``gc/<id>``: writers at work and garbage collection in progress.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import struct
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import attrs
import zstandard

from sbr_core.errors import RepositoryCorrupt
from sbr_core.repository.crypto import ID_BYTES, Sealer

FORMAT_NAME = "sbr-repository"
FORMAT_VERSION = 1
PACK_MAGIC = b"SBRPACK1"
INDEX_MAGIC = b"SBRIDX1\n"
DOC_MAGIC = b"SBRDOC1\n"
ZERO_ID = bytes(ID_BYTES)  # stands for an all-zero chunk, which is never stored
_ZEROS: dict[int, bytes] = {}


def zero_block(size: int) -> bytes:
    """``size`` zero bytes, made once per size (a chunk, a disk's short last chunk)."""
    block = _ZEROS.get(size)
    if block is None:
        block = _ZEROS[size] = bytes(size)
    return block


_TRAILER = struct.Struct("<I8s")
PACK_TRAILER_BYTES = _TRAILER.size  # header length, magic
_HEADER_ENTRY = struct.Struct("<B32sII")  # type, id, stored length, raw length
_INDEX_PACK = struct.Struct("<32sI")  # pack id, entry count
_INDEX_ENTRY = struct.Struct("<B32sIII")  # type, id, offset, stored length, raw length
_CHECKSUM_BYTES = 32
PACK_HEADER_VERSION = 1
_HEADER_SALT = 16  # version byte + random bytes

CODEC_RAW = 0
CODEC_ZSTD = 1


class BlobType(enum.IntEnum):
    """What a blob holds: file or disk data, a piece of a file tree, a piece of a disk's
    chunk map, or a small named file kept with a backup (a VM's configuration)."""

    DATA = 0
    TREE = 1
    MAP = 2
    FILE = 3


_BLOB_TYPES = {int(t): t for t in BlobType}


@attrs.frozen
class BlobLocation:
    """Where one blob lives: pack, byte offset and stored length, and its plain length."""

    pack: bytes
    offset: int
    length: int
    raw_length: int
    type: BlobType


def pack_key(pack_id: bytes) -> str:
    name = pack_id.hex()
    return f"packs/{name[:2]}/{name}"


def pack_id_of_key(key: str) -> bytes | None:
    name = key.rsplit("/", 1)[-1]
    try:
        pack_id = bytes.fromhex(name)
    except ValueError:
        return None
    return pack_id if len(pack_id) == ID_BYTES else None


# --- blobs --------------------------------------------------------------------------------

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # Compressors are not thread-safe: one per thread and level.
    cache: dict[int, zstandard.ZstdCompressor] = _local.__dict__.setdefault("compressors", {})
    compressor = cache.get(level)
    if compressor is None:
        compressor = cache[level] = zstandard.ZstdCompressor(level=level, write_checksum=False)
    return compressor


def _decompressor() -> zstandard.ZstdDecompressor:
    decompressor = _local.__dict__.get("decompressor")
    if decompressor is None:
        decompressor = _local.decompressor = zstandard.ZstdDecompressor()
    return decompressor


def encode_blob(sealer: Sealer, blob_id: bytes, data: bytes | memoryview, level: int) -> bytes:
    """Compress (unless that saves under 1/32) and seal one blob; the id is bound as AAD."""
    raw = bytes(data)
    body = _compressor(level).compress(raw) if level > 0 else raw
    payload = (b"\x01" + body) if len(body) < len(raw) - (len(raw) >> 5) else (b"\x00" + raw)
    return sealer.seal(payload, blob_id) if sealer.encrypted else payload


def decode_blob(sealer: Sealer, blob_id: bytes, stored: bytes | memoryview, raw_length: int,
                what: str) -> bytes:
    """Open, decompress and check one blob against its id; RepositoryCorrupt if it fails."""
    payload = sealer.open(stored, blob_id, what) if sealer.encrypted else stored
    view = memoryview(payload)
    if not view:
        raise RepositoryCorrupt(f"{what} is empty")
    codec = view[0]
    try:
        if codec == CODEC_ZSTD:
            data = _decompressor().decompress(view[1:], max_output_size=raw_length)
        elif codec == CODEC_RAW:
            data = bytes(view[1:])
        else:
            raise RepositoryCorrupt(f"{what} has unknown codec {codec}")
    except zstandard.ZstdError:
        raise RepositoryCorrupt(f"{what} does not decompress (damaged)") from None
    if len(data) != raw_length or sealer.blob_id(data) != blob_id:
        raise RepositoryCorrupt(f"{what} does not match its id (damaged)")
    return data


# --- packs --------------------------------------------------------------------------------

def build_pack_tail(sealer: Sealer, entries: Iterable[tuple[BlobType, bytes, int, int]]) -> bytes:
    """The sealed header listing (type, id, stored length, raw length), then the trailer.

    The header starts with a version byte and 15 random bytes, so that no two packs are
    ever byte-identical (and so never share an id), even unencrypted ones with equal blobs.
    """
    header = bytes([PACK_HEADER_VERSION]) + os.urandom(_HEADER_SALT - 1) + b"".join(
        _HEADER_ENTRY.pack(int(t), i, n, r) for t, i, n, r in entries)
    sealed = _seal_checked(sealer, header, b"pack-header")
    return sealed + _TRAILER.pack(len(sealed), PACK_MAGIC)


def parse_pack(sealer: Sealer, pack: bytes | memoryview, what: str
               ) -> list[tuple[BlobType, bytes, int, int, int]]:
    """Entries (type, id, offset, stored length, raw length) of a whole pack's bytes."""
    view = memoryview(pack)
    return parse_pack_header(sealer, view[:-_TRAILER.size] if len(view) >= _TRAILER.size
                             else view, view[-_TRAILER.size:], what)


def pack_tail_length(trailer: bytes | memoryview, what: str) -> int:
    """From the last 12 bytes of a pack: how many bytes of header precede them."""
    if len(trailer) != _TRAILER.size:
        raise RepositoryCorrupt(f"{what} is truncated")
    length, magic = _TRAILER.unpack(trailer)
    if magic != PACK_MAGIC:
        raise RepositoryCorrupt(f"{what} has no pack trailer (truncated or not a pack)")
    return int(length)


def parse_pack_header(sealer: Sealer, before_trailer: bytes | memoryview,
                      trailer: bytes | memoryview, what: str
                      ) -> list[tuple[BlobType, bytes, int, int, int]]:
    """Entries from the bytes that end just before the trailer (at least the header)."""
    length = pack_tail_length(trailer, what)
    if length > len(before_trailer):
        raise RepositoryCorrupt(f"{what} is truncated")
    header = _open_checked(sealer, before_trailer[len(before_trailer) - length:],
                           b"pack-header", f"{what} header")
    if not header or header[0] != PACK_HEADER_VERSION:
        raise RepositoryCorrupt(f"{what} header has version {header[:1].hex() or 'none'}, "
                                f"not {PACK_HEADER_VERSION}: written by a newer SBR?")
    if (len(header) - _HEADER_SALT) % _HEADER_ENTRY.size:
        raise RepositoryCorrupt(f"{what} header is malformed")
    entries = []
    offset = 0
    for type_, blob_id, stored, raw in _HEADER_ENTRY.iter_unpack(header[_HEADER_SALT:]):
        try:
            blob_type = BlobType(type_)
        except ValueError:
            raise RepositoryCorrupt(f"{what} header names unknown blob type {type_}") from None
        entries.append((blob_type, blob_id, offset, stored, raw))
        offset += stored
    return entries


# --- index files --------------------------------------------------------------------------

def encode_index(sealer: Sealer, packs: dict[bytes, list[tuple[BlobType, bytes, int, int, int]]]
                 ) -> bytes:
    parts = [INDEX_MAGIC]
    for pack_id, entries in packs.items():
        parts.append(_INDEX_PACK.pack(pack_id, len(entries)))
        parts.extend(_INDEX_ENTRY.pack(int(t), i, o, n, r) for t, i, o, n, r in entries)
    body = _compressor(3).compress(b"".join(parts))
    return _seal_checked(sealer, body, b"index")


def decode_index(sealer: Sealer, stored: bytes, what: str
                 ) -> Iterator[tuple[bytes, list[tuple[BlobType, bytes, int, int, int]]]]:
    body = _open_checked(sealer, stored, b"index", what)
    try:
        plain = _decompressor().decompress(body)
    except zstandard.ZstdError:
        raise RepositoryCorrupt(f"{what} does not decompress (damaged)") from None
    if not plain.startswith(INDEX_MAGIC):
        raise RepositoryCorrupt(f"{what} is not an index")
    view = memoryview(plain)
    pos = len(INDEX_MAGIC)
    try:
        while pos < len(view):
            pack_id, count = _INDEX_PACK.unpack_from(view, pos)
            pos += _INDEX_PACK.size
            end = pos + count * _INDEX_ENTRY.size
            if end > len(view):
                raise RepositoryCorrupt(f"{what} is truncated")
            # A dict lookup, not BlobType(t): an enum call per entry was most of the load.
            entries = [(_BLOB_TYPES[t], i, o, n, r) for t, i, o, n, r
                       in _INDEX_ENTRY.iter_unpack(view[pos:end])]
            pos = end
            yield pack_id, entries
    except (struct.error, ValueError, KeyError):
        raise RepositoryCorrupt(f"{what} is malformed") from None


# --- JSON documents (manifests, locks, gc plans) ------------------------------------------

def encode_document(sealer: Sealer, doc: dict[str, Any], aad: bytes) -> bytes:
    body = _compressor(3).compress(
        json.dumps(doc, separators=(",", ":"), sort_keys=True).encode())
    return _seal_checked(sealer, DOC_MAGIC + body, aad)


def decode_document(sealer: Sealer, stored: bytes, aad: bytes, what: str) -> dict[str, Any]:
    plain = _open_checked(sealer, stored, aad, what)
    if not plain.startswith(DOC_MAGIC):
        raise RepositoryCorrupt(f"{what} is not a repository document")
    try:
        doc = json.loads(_decompressor().decompress(plain[len(DOC_MAGIC):]))
    except (zstandard.ZstdError, ValueError):
        raise RepositoryCorrupt(f"{what} is damaged") from None
    if not isinstance(doc, dict):
        raise RepositoryCorrupt(f"{what} is malformed")
    return doc


def _seal_checked(sealer: Sealer, plain: bytes, aad: bytes) -> bytes:
    """Seal; without encryption, append a SHA-256 so that damage is still detected."""
    if sealer.encrypted:
        return sealer.seal(plain, aad)
    return plain + hashlib.sha256(aad + plain).digest()


def _open_checked(sealer: Sealer, stored: bytes | memoryview, aad: bytes, what: str) -> bytes:
    if sealer.encrypted:
        return sealer.open(stored, aad, what)
    view = memoryview(stored)
    if len(view) < _CHECKSUM_BYTES:
        raise RepositoryCorrupt(f"{what} is truncated")
    plain = bytes(view[:-_CHECKSUM_BYTES])
    if hashlib.sha256(aad + plain).digest() != view[-_CHECKSUM_BYTES:]:
        raise RepositoryCorrupt(f"{what} failed its checksum (damaged or truncated)")
    return plain
