"""Creating and opening a repository on a destination; reading its blobs and manifests."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs

from sbr_core.errors import (
    ObjectNotFound,
    RepositoryCorrupt,
    RepositoryError,
    RepositoryNotFound,
    UsageError,
    WrongPassphrase,
)
from sbr_core.providers.destination import Destination
from sbr_core.repository import crypto
from sbr_core.repository.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    BlobLocation,
    decode_blob,
    decode_document,
    encode_document,
    pack_key,
)
from sbr_core.repository.index import MasterIndex
from sbr_core.repository.manifest import Manifest

log = logging.getLogger(__name__)

#: Fixed chunk size of disk images. 128 KiB was measured best (docs/performance.md): a
#: multiple of the 64 KiB tracking granularity of QEMU dirty bitmaps and vSphere CBT, small
#: enough that a changed block rewrites little, large enough to keep per-chunk costs low.
DEFAULT_IMAGE_CHUNK = 128 * 1024
DEFAULT_CDC = {"algorithm": "fastcdc-2020", "min": 256 * 1024, "avg": 1024 * 1024,
               "max": 4 * 1024 * 1024}
DEFAULT_PACK_SIZE = 16 * 1024 * 1024
DEFAULT_LEVEL = 3
ENCRYPTIONS = ("aes-256-gcm", "none")


@attrs.frozen
class RepositoryConfig:
    """The parameters fixed when a repository is created (the ``config`` object)."""

    id: str
    encryption: str
    image_chunk_size: int
    cdc: dict[str, Any]
    compression_level: int
    pack_size: int
    version: int = FORMAT_VERSION

    def params(self) -> dict[str, Any]:
        return {"format": FORMAT_NAME, "version": self.version, "id": self.id,
                "encryption": self.encryption, "image_chunk_size": self.image_chunk_size,
                "cdc": self.cdc, "compression": {"algorithm": "zstd",
                                                 "level": self.compression_level},
                "pack_size": self.pack_size}


def _canonical(params: dict[str, Any]) -> bytes:
    return json.dumps(params, sort_keys=True, separators=(",", ":")).encode()


def init_repository(destination: Destination, *, passphrase: str | None,
                    encryption: str = "aes-256-gcm", image_chunk_size: int = DEFAULT_IMAGE_CHUNK,
                    compression_level: int = DEFAULT_LEVEL,
                    pack_size: int = DEFAULT_PACK_SIZE) -> Repository:
    """Create a repository on an empty destination (or prefix) and open it."""
    if encryption not in ENCRYPTIONS:
        raise UsageError(f"encryption must be one of {', '.join(ENCRYPTIONS)}, not "
                         f"{encryption!r}")
    if image_chunk_size < 4096 or image_chunk_size & (image_chunk_size - 1) \
            or image_chunk_size > 8 * 2**20:
        raise UsageError("image chunk size must be a power of two from 4 KiB to 8 MiB, not "
                         f"{image_chunk_size}")
    if not 0 <= compression_level <= 22:
        raise UsageError(f"compression level must be 0 (off) to 22, not {compression_level}")
    if not 2**20 <= pack_size <= 2**31:
        raise UsageError(f"pack size must be 1 MiB to 2 GiB, not {pack_size}")
    if encryption != "none" and not passphrase:
        raise UsageError("an encrypted repository needs a passphrase (SBR_REPO_PASSWORD)")
    if any(True for _ in destination.list("config")):
        raise RepositoryError("a repository already exists there")
    present = [info.key for info in destination.list("")]
    if present and all(key.startswith("keys/") for key in present):
        for key in present:  # left by an init that was interrupted before its config
            destination.delete(key)
    elif present:
        raise RepositoryError("the destination is not empty; choose an empty directory, bucket "
                              "or prefix")
    config = RepositoryConfig(id=os.urandom(16).hex(), encryption=encryption,
                              image_chunk_size=image_chunk_size, cdc=dict(DEFAULT_CDC),
                              compression_level=compression_level, pack_size=pack_size)
    params = config.params()
    sealer: crypto.Sealer = crypto.Sealer()
    if encryption != "none":
        assert passphrase is not None
        keys = crypto.MasterKeys.generate()
        key_file = crypto.wrap_keys(keys, passphrase, config.id)
        destination.put(f"keys/{os.urandom(16).hex()}", crypto.key_file_bytes(key_file))
        sealer = crypto.AesGcmSealer(keys)
    params["mac"] = sealer.mac(_canonical(params))
    # The config goes last: a repository is "there" only once it is complete.
    destination.put("config", json.dumps(params, indent=1).encode() + b"\n", if_absent=True)
    return Repository(destination, config, sealer)


def open_repository(destination: Destination, *,
                    passphrase: str | Callable[[], str | None] | None = None,
                    key_file: dict[str, Any] | None = None) -> Repository:
    """Open an existing repository; ``key_file`` is an exported key to use instead of the
    repository's own (for when its ``keys/`` objects are lost). ``passphrase`` may be a
    callable, asked only when the repository turns out to be encrypted (a prompt)."""
    try:
        raw = destination.get("config")
    except ObjectNotFound:
        raise RepositoryNotFound("no repository there (run `sbr repo init` first)") from None
    try:
        params = json.loads(raw)
        if params.get("format") != FORMAT_NAME:
            raise ValueError
        version = int(params["version"])
    except (ValueError, KeyError, TypeError):
        raise RepositoryCorrupt("the repository config is not readable") from None
    if version > FORMAT_VERSION:
        raise RepositoryError(f"the repository has format version {version}; this SBR reads "
                              f"up to {FORMAT_VERSION}: upgrade SBR")
    if version < 1:
        raise RepositoryCorrupt(f"the repository config has an impossible version {version}")
    try:
        config = RepositoryConfig(
            id=str(params["id"]), encryption=str(params["encryption"]),
            image_chunk_size=int(params["image_chunk_size"]), cdc=dict(params["cdc"]),
            compression_level=int(params["compression"]["level"]),
            pack_size=int(params["pack_size"]), version=version)
    except (KeyError, TypeError, ValueError):
        raise RepositoryCorrupt("the repository config is incomplete") from None
    known = {"encryption": (config.encryption, ENCRYPTIONS),
             "chunking": (config.cdc.get("algorithm"), ("fastcdc-2020",)),
             "compression": (params.get("compression", {}).get("algorithm"), ("zstd",))}
    for what, (value, supported) in known.items():
        if value not in supported:
            raise RepositoryError(f"the repository uses {what} {value!r}, which this SBR does "
                                  "not know: upgrade SBR")
    sealer: crypto.Sealer = crypto.Sealer()
    if config.encryption == "none" and any(True for _ in destination.list("keys/")):
        # Key files exist only in encrypted repositories: someone rewrote the config.
        raise RepositoryCorrupt("the repository config says unencrypted, but the repository "
                                "has key files: the config was altered")
    if config.encryption != "none":
        if callable(passphrase):
            passphrase = passphrase()
        if not passphrase:
            raise WrongPassphrase("the repository is encrypted: give its passphrase "
                                  "(SBR_REPO_PASSWORD or the prompt)")
        sealer = crypto.AesGcmSealer(_unlock(destination, config.id, passphrase, key_file))
    mac = params.pop("mac", None)
    if mac != sealer.mac(_canonical(params)):
        raise RepositoryCorrupt("the repository config was altered (its check value does not "
                                "match)")
    return Repository(destination, config, sealer)


def _unlock(destination: Destination, repository_id: str, passphrase: str,
            key_file: dict[str, Any] | None) -> crypto.MasterKeys:
    candidates: list[dict[str, Any]] = []
    if key_file is not None:
        candidates.append(key_file)
    else:
        for info in destination.list("keys/"):
            try:
                candidates.append(json.loads(destination.get(info.key)))
            except (ValueError, ObjectNotFound):
                log.warning("key file %s is unreadable; skipped", info.key)
    if not candidates:
        raise RepositoryCorrupt("the repository has no readable key file (restore one with "
                                "--key-file)")
    problem: Exception | None = None
    for candidate in candidates:
        try:
            return crypto.unwrap_keys(candidate, passphrase, repository_id)
        except (WrongPassphrase, RepositoryCorrupt) as exc:
            problem = exc
    assert problem is not None
    raise problem


class Repository:
    """An opened repository. Thread-safe for reads; writers use :mod:`.writer`."""

    def __init__(self, destination: Destination, config: RepositoryConfig,
                 sealer: crypto.Sealer) -> None:
        self.destination = destination
        self.config = config
        self.sealer = sealer
        self._index: MasterIndex | None = None
        self._lock = threading.Lock()
        self._blob_cache: OrderedDict[bytes, bytes] = OrderedDict()

    # --- index --------------------------------------------------------------------------

    @property
    def index(self) -> MasterIndex:
        index = self._index  # once loaded, read without the lock: this runs once per chunk
        if index is not None:
            return index
        with self._lock:
            if self._index is None:
                loaded = MasterIndex()
                loaded.load(self.destination, self.sealer)
                self._index = loaded
            return self._index

    def reload_index(self, exclude_packs: set[bytes] | frozenset[bytes] = frozenset(), *,
                     last_resort: set[bytes] | frozenset[bytes] = frozenset()) -> MasterIndex:
        index = MasterIndex()
        index.load(self.destination, self.sealer, exclude_packs, last_resort=last_resort)
        with self._lock:
            self._index = index
        return index

    def locate(self, blob_id: bytes) -> BlobLocation:
        location = self.index.lookup(blob_id)
        if location is None:
            hint = (" (an index file is damaged: run `sbr repo repair-index`)"
                    if self.index.damaged else "")
            raise RepositoryCorrupt(f"blob {blob_id.hex()[:16]} is in no index: its data is "
                                    f"missing{hint}")
        return location

    @contextmanager
    def reading(self) -> Iterator[Repository]:
        """Hold a read lock while restoring or verifying: a gc planned before we started
        waits for us, and data a later plan condemned is read only if nothing else has it."""
        from sbr_core.repository.gc import condemned_packs
        from sbr_core.repository.locks import Lock

        lock = Lock(self, "read")
        try:
            self.reload_index(last_resort=condemned_packs(self))
            yield self
        finally:
            lock.release()

    # --- blobs ----------------------------------------------------------------------------

    def read_blob(self, blob_id: bytes, *, cache: bool = False) -> bytes:
        """One blob's plain bytes, checked against its id."""
        if cache:
            with self._lock:
                hit = self._blob_cache.get(blob_id)
                if hit is not None:
                    self._blob_cache.move_to_end(blob_id)
                    return hit
        location = self.locate(blob_id)
        stored = self.get_pack_range(location.pack, location.offset, location.length)
        data = decode_blob(self.sealer, blob_id, stored, location.raw_length,
                           f"blob {blob_id.hex()[:16]} in pack {location.pack.hex()[:16]}")
        if cache:
            with self._lock:
                self._blob_cache[blob_id] = data
                while len(self._blob_cache) > 16:
                    self._blob_cache.popitem(last=False)
        return data

    def get_pack_range(self, pack_id: bytes, offset: int, length: int) -> bytes:
        try:
            stored = self.destination.get(pack_key(pack_id), offset, length)
        except ObjectNotFound:
            raise RepositoryCorrupt(f"pack {pack_id.hex()} is missing") from None
        if len(stored) != length:
            raise RepositoryCorrupt(f"pack {pack_id.hex()} is truncated")
        return stored

    # --- documents --------------------------------------------------------------------------

    def put_document(self, key: str, doc: dict[str, Any], *, if_absent: bool = False) -> None:
        self.destination.put(key, encode_document(self.sealer, doc, key.encode()),
                             if_absent=if_absent)

    def get_document(self, key: str) -> dict[str, Any]:
        return decode_document(self.sealer, self.destination.get(key), key.encode(), key)

    # --- backups ----------------------------------------------------------------------------

    def backup_ids(self) -> list[str]:
        return sorted(info.key.rsplit("/", 1)[-1] for info in self.destination.list("backups/"))

    def manifests(self) -> Iterator[Manifest]:
        """Every backup, oldest first; a damaged manifest raises RepositoryCorrupt."""
        found = []
        for backup_id in self.backup_ids():
            key = f"backups/{backup_id}"
            try:
                doc = self.get_document(key)
            except ObjectNotFound:
                continue  # forgotten while we listed
            found.append(Manifest.from_document(doc, key))
        yield from sorted(found, key=lambda m: (m.created, m.id))

    def manifest(self, backup_id: str) -> Manifest:
        key = f"backups/{backup_id}"
        try:
            doc = self.get_document(key)
        except ObjectNotFound:
            raise RepositoryError(f"no backup {backup_id!r} in this repository") from None
        return Manifest.from_document(doc, key)

    def resolve(self, backup_ref: str) -> Manifest:
        """A backup by its id or a unique prefix of at least 6 characters, or 'NAME@latest'."""
        if backup_ref.endswith("@latest"):
            name = backup_ref[: -len("@latest")]
            latest = self.latest(name)
            if latest is None:
                raise RepositoryError(f"no backup of {name!r} in this repository")
            return latest
        ids = self.backup_ids()
        if backup_ref in ids:
            return self.manifest(backup_ref)
        matches = [i for i in ids if i.startswith(backup_ref)] if len(backup_ref) >= 6 else []
        if len(matches) == 1:
            return self.manifest(matches[0])
        if matches:
            raise UsageError(f"backup id {backup_ref!r} is ambiguous: give more characters")
        raise RepositoryError(f"no backup {backup_ref!r} in this repository")

    def latest(self, name: str) -> Manifest | None:
        latest = None
        for manifest in self.manifests():
            if manifest.name == name:
                latest = manifest
        return latest
