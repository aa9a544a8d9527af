"""Collects encoded blobs into packs, uploads them, and records them in index files.

A pack is uploaded whole under its content hash (atomic on every destination), and only
then listed in an index file; an index file is written only after all its packs are stored.
So a writer killed at any point leaves, at worst, packs that no index names (garbage
collection removes them) and never an index entry without its data. Index files are
written every ``INDEX_EVERY`` packs, so a backup that is run again after a crash reuses
what the killed one stored.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from sbr_core.repository.format import BlobType, build_pack_tail, encode_index, pack_key

if TYPE_CHECKING:
    from sbr_core.repository.repo import Repository

INDEX_EVERY = 32
#: The index is also written once this many blobs wait for it, and a pack ends at this many
#: blobs, so that what a writer holds stays bounded when chunks compress to almost nothing.
INDEX_EVERY_BLOBS = 32768
PACK_MAX_BLOBS = 16384
UPLOADS_IN_FLIGHT = 2

Entry = tuple[BlobType, bytes, int, int, int]  # type, id, offset, stored length, raw length


class Packer:
    """Not thread-safe: one thread adds blobs; uploads run on their own threads."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        # The index this writer checks against, as it was when the writer began.
        self.index = repo.index
        self.pack_size = repo.config.pack_size
        self._parts: list[bytes] = []
        self._entries: list[Entry] = []
        self._size = 0
        self.pending: set[bytes] = set()  # ids added but not yet in an index
        self._uploads: list[Future[tuple[bytes, list[Entry]]]] = []
        self._executor = ThreadPoolExecutor(max_workers=UPLOADS_IN_FLIGHT,
                                            thread_name_prefix="sbr-upload")
        self._slots = threading.Semaphore(UPLOADS_IN_FLIGHT)
        self._unindexed: dict[bytes, list[Entry]] = {}
        self._unindexed_blobs = 0
        self.index_keys: list[str] = []
        self.packs_written = 0
        self.stored_bytes = 0

    def knows(self, blob_id: bytes) -> bool:
        return blob_id in self.pending or blob_id in self.index

    def add(self, blob_type: BlobType, blob_id: bytes, stored: bytes, raw_length: int) -> bool:
        """Queue one encoded blob; False if this writer already has it."""
        if blob_id in self.pending:
            return False
        self.pending.add(blob_id)
        self._entries.append((blob_type, blob_id, self._size, len(stored), raw_length))
        self._parts.append(stored)
        self._size += len(stored)
        if self._size >= self.pack_size or len(self._entries) >= PACK_MAX_BLOBS:
            self._finish_pack()
        return True

    def _finish_pack(self) -> None:
        if not self._entries:
            return
        self._collect(block=False)
        entries, parts = self._entries, self._parts
        self._entries, self._parts, self._size = [], [], 0
        parts.append(build_pack_tail(self.repo.sealer,
                                     [(t, i, n, r) for t, i, _o, n, r in entries]))
        self._slots.acquire()  # bounds packs held in memory while uploads are slow
        try:
            self._uploads.append(self._executor.submit(self._upload, parts, entries))
        except BaseException:
            self._slots.release()
            raise

    def _upload(self, parts: list[bytes], entries: list[Entry]) -> tuple[bytes, list[Entry]]:
        try:
            digest = hashlib.sha256()
            for part in parts:
                digest.update(part)
            pack_id = digest.digest()
            # Streamed from the parts: a pack is never copied into one buffer.
            self.repo.destination.put(pack_key(pack_id), cast(BinaryIO, _PartsReader(parts)))
            return pack_id, entries
        finally:
            self._slots.release()

    def _collect(self, *, block: bool) -> None:
        """Take finished uploads into the index; raise the first upload error."""
        still = []
        for future in self._uploads:
            if block or future.done():
                pack_id, entries = future.result()
                self._unindexed[pack_id] = entries
                self._unindexed_blobs += len(entries)
                self.index.add(pack_id, entries)
                self.packs_written += 1
                self.stored_bytes += sum(e[3] for e in entries)
            else:
                still.append(future)
        self._uploads = still
        if len(self._unindexed) >= INDEX_EVERY or self._unindexed_blobs >= INDEX_EVERY_BLOBS:
            self._write_index()

    def _write_index(self) -> None:
        if not self._unindexed:
            return
        key = f"index/{os.urandom(16).hex()}"
        self.repo.destination.put(key, encode_index(self.repo.sealer, self._unindexed))
        self.index_keys.append(key)
        self.index.files.add(key)
        for entries in self._unindexed.values():
            for entry in entries:
                self.pending.discard(entry[1])
        self._unindexed = {}
        self._unindexed_blobs = 0

    def flush(self) -> None:
        """Store everything added so far: packs, then the index naming them."""
        self._finish_pack()
        try:
            self._collect(block=True)
        finally:
            self._write_index()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._executor.shutdown(wait=True, cancel_futures=True)

    def abort(self) -> None:
        """After a failure: index whatever was stored (so a retry reuses it), then stop."""
        self._entries, self._parts, self._size = [], [], 0
        try:
            for future in self._uploads:
                if future.exception() is None:
                    pack_id, entries = future.result()
                    self._unindexed[pack_id] = entries
            self._uploads = []
            self._write_index()
        finally:
            self._executor.shutdown(wait=True, cancel_futures=True)


class _PartsReader(io.RawIOBase):
    """A read-only stream over a list of byte strings."""

    def __init__(self, parts: list[bytes]) -> None:
        self._parts = parts
        self._index = 0
        self._offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view) and self._index < len(self._parts):
            part = self._parts[self._index]
            take = min(len(view) - filled, len(part) - self._offset)
            view[filled:filled + take] = part[self._offset:self._offset + take]
            filled += take
            self._offset += take
            if self._offset == len(part):
                self._index += 1
                self._offset = 0
        return filled
