"""The master index: every blob id the repository holds, and where.

Each writer adds its own ``index/<id>`` objects; nobody rewrites another's, so concurrent
writers never conflict. Garbage collection replaces index files it has read by one new file
and deletes only those it read. A damaged index file is reported, never guessed around: its
packs stay out of reach until ``sbr repo repair-index`` rebuilds it from the pack headers.

Memory stays bounded whatever the repository holds: past ``MEMORY_ENTRIES`` entries the
index moves them to a private temporary SQLite database on local disk and keeps filling an
empty dict, so a 20 TiB repository costs the same memory as a 20 GiB one (lookups of spilled
entries take a few microseconds instead of a fraction of one).
"""

from __future__ import annotations

import itertools
import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator

from sbr_core.errors import ObjectNotFound, RepositoryCorrupt
from sbr_core.providers.destination import Destination
from sbr_core.repository.crypto import Sealer
from sbr_core.repository.format import BlobLocation, BlobType, decode_index

log = logging.getLogger(__name__)

#: Entries held in a dict (about 250 bytes each, so some 8 MiB) before they are spilled to
#: disk; 32768 entries of 128 KiB chunks are 4 GiB of unique disk data.
MEMORY_ENTRIES = 32768

_Location = tuple[int, int, int, int, int]  # pack number, offset, stored length, raw, type


class MasterIndex:
    """blob id → location, with packs numbered to keep entries small in memory."""

    def __init__(self) -> None:
        self._packs: list[bytes] = []
        self._pack_numbers: dict[bytes, int] = {}
        self._blobs: dict[bytes, _Location] = {}
        self._spilled: _SpilledEntries | None = None
        self.files: set[str] = set()
        self.damaged: dict[str, str] = {}  # index key → problem
        self.excluded_packs: set[bytes] = set()

    def __contains__(self, blob_id: object) -> bool:
        return self._find(blob_id) is not None  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self._blobs) + self.entries_on_disk

    @property
    def entries_in_memory(self) -> int:
        return len(self._blobs)

    @property
    def entries_on_disk(self) -> int:
        return self._spilled.count if self._spilled is not None else 0

    def _find(self, blob_id: bytes) -> _Location | None:
        found = self._blobs.get(blob_id)
        if found is None and self._spilled is not None:
            found = self._spilled.get(blob_id)
        return found

    def add(self, pack_id: bytes, entries: Iterable[tuple[BlobType, bytes, int, int, int]]
            ) -> None:
        if pack_id in self.excluded_packs:
            return
        number = self._pack_numbers.get(pack_id)
        if number is None:
            number = self._pack_numbers[pack_id] = len(self._packs)
            self._packs.append(pack_id)
        entries = list(entries)
        # The first copy listed wins (load() relies on it), spilled or not.
        spilled = (self._spilled.existing([entry[1] for entry in entries])
                   if self._spilled is not None else ())
        blobs = self._blobs
        for blob_type, blob_id, offset, length, raw in entries:
            if blob_id not in blobs and blob_id not in spilled:
                blobs[blob_id] = (number, offset, length, raw, int(blob_type))
        if len(blobs) >= MEMORY_ENTRIES:
            self._spill()

    def _spill(self) -> None:
        if self._spilled is None:
            self._spilled = _SpilledEntries()
        self._spilled.add_many(self._blobs.items())
        self._blobs = {}  # readers on other threads see the old dict or the table: both hold all

    def lookup(self, blob_id: bytes) -> BlobLocation | None:
        found = self._find(blob_id)
        if found is None:
            return None
        number, offset, length, raw, blob_type = found
        return BlobLocation(self._packs[number], offset, length, raw, BlobType(blob_type))

    def packs(self) -> set[bytes]:
        return set(self._packs)

    def items(self) -> Iterable[tuple[bytes, BlobLocation]]:
        packs = self._packs
        rows: Iterable[tuple[bytes, _Location]] = list(self._blobs.items())
        if self._spilled is not None:
            rows = itertools.chain(rows, self._spilled.rows())
        for blob_id, (number, offset, length, raw, blob_type) in rows:
            yield blob_id, BlobLocation(packs[number], offset, length, raw, BlobType(blob_type))

    def load(self, destination: Destination, sealer: Sealer,
             exclude_packs: Iterable[bytes] = (), *, last_resort: Iterable[bytes] = ()
             ) -> None:
        """Read every index file. Packs in ``exclude_packs`` (condemned by a gc plan) are left
        out, so that a new backup never references data that is about to be deleted; a reader
        passes them as ``last_resort`` instead: used only for blobs found nowhere else."""
        self.excluded_packs = set(exclude_packs) | set(last_resort)
        deferred: list[tuple[bytes, list[tuple[BlobType, bytes, int, int, int]]]] = []
        self._load_files(destination, sealer, deferred, set(last_resort))
        self.excluded_packs = set(exclude_packs)
        for pack_id, entries in deferred:
            self.add(pack_id, entries)

    def _load_files(self, destination: Destination, sealer: Sealer,
                    deferred: list[tuple[bytes, list[tuple[BlobType, bytes, int, int, int]]]],
                    last_resort: set[bytes]) -> None:
        keys = sorted(info.key for info in destination.list("index/"))
        for key in keys:
            try:
                stored = destination.get(key)
            except ObjectNotFound:
                continue  # replaced by a gc that finished while we listed
            try:
                for pack_id, entries in decode_index(sealer, stored, f"index {key}"):
                    if pack_id in last_resort:
                        deferred.append((pack_id, entries))
                    self.add(pack_id, entries)
            except RepositoryCorrupt as exc:
                log.warning("%s", exc)
                self.damaged[key] = str(exc)
                continue
            self.files.add(key)


class _SpilledEntries:
    """Index entries on local disk: a private temporary SQLite database, which SQLite deletes
    when the connection closes. Its page cache stays at SQLite's default 2 MiB."""

    #: Ids per ``IN (...)`` query: far below SQLite's limit of 32766 parameters.
    QUERY_IDS = 4096

    def __init__(self) -> None:
        # "" = a temporary database file in SQLITE_TMPDIR or TMPDIR; one lock serialises the
        # threads that share the connection.
        self._db = sqlite3.connect("", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE blobs (id BLOB PRIMARY KEY, pack INTEGER, "
                         "offset INTEGER, length INTEGER, raw INTEGER, type INTEGER) "
                         "WITHOUT ROWID")
        self._lock = threading.Lock()
        self.count = 0

    def get(self, blob_id: bytes) -> _Location | None:
        with self._lock:
            row = self._db.execute("SELECT pack, offset, length, raw, type FROM blobs "
                                   "WHERE id = ?", (blob_id,)).fetchone()
        return None if row is None else tuple(row)

    def existing(self, ids: list[bytes]) -> set[bytes]:
        found: set[bytes] = set()
        with self._lock:
            for start in range(0, len(ids), self.QUERY_IDS):
                part = ids[start:start + self.QUERY_IDS]
                marks = ",".join("?" * len(part))  # placeholders only, never values
                found.update(row[0] for row in self._db.execute(
                    f"SELECT id FROM blobs WHERE id IN ({marks})", part))  # noqa: S608
        return found

    def add_many(self, rows: Iterable[tuple[bytes, _Location]]) -> None:
        with self._lock:
            before = self._db.total_changes
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO blobs VALUES (?, ?, ?, ?, ?, ?)",
                                 ((blob_id, *location) for blob_id, location in rows))
            self._db.execute("COMMIT")
            self.count += self._db.total_changes - before

    def rows(self, batch: int = 10000) -> Iterator[tuple[bytes, _Location]]:
        """Every entry, in id order, a batch at a time (no cursor stays open between them)."""
        last = b""
        while True:
            with self._lock:
                found = self._db.execute(
                    "SELECT id, pack, offset, length, raw, type FROM blobs WHERE id > ? "
                    "ORDER BY id LIMIT ?", (last, batch)).fetchall()
            for blob_id, *location in found:
                yield blob_id, tuple(location)
            if len(found) < batch:
                return
            last = found[-1][0]


RawEntry = tuple[BlobType, bytes, int, int, int]  # type, id, offset, stored length, raw length


def read_all_entries(destination: Destination, sealer: Sealer, keys: Iterable[str]
                     ) -> dict[bytes, dict[bytes, RawEntry]]:
    """Every entry of these index files, per pack, duplicates across packs included (gc,
    verify and repair must see each copy, not only the one the master index uses)."""
    packs: dict[bytes, dict[bytes, RawEntry]] = {}
    for key in keys:
        try:
            stored = destination.get(key)
        except ObjectNotFound:
            continue
        for pack_id, entries in decode_index(sealer, stored, f"index {key}"):
            known = packs.setdefault(pack_id, {})
            for entry in entries:
                known.setdefault(entry[1], entry)
    return packs
