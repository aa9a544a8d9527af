"""A backup destination that keeps every object as one row of a single SQLite file.

The table is ``objects(key TEXT PRIMARY KEY, data BLOB, mtime REAL)``. Each put and delete is
one ``BEGIN IMMEDIATE … COMMIT`` transaction with ``synchronous=FULL``, so a reader sees a
whole object or none of it, whatever happens to the writer.

Size limit: an object is held in memory while it is stored and becomes one BLOB, so it may not
exceed SQLite's maximum length (1,000,000,000 bytes unless SQLite was built otherwise). The
repository's packs are far smaller; a larger object is refused with a DestinationError before
it is read to its end.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import attrs

from sbr_core.errors import (
    DestinationError,
    DestinationFull,
    DestinationReadOnly,
    DestinationUnavailable,
    ObjectExists,
    ObjectNotFound,
    UsageError,
)
from sbr_core.providers.base import ProviderContext
from sbr_core.providers.destination import Destination, ObjectInfo, check_key, check_prefix
from sbr_core.settings import setting

_SCHEMA = """CREATE TABLE IF NOT EXISTS objects (
    key TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    mtime REAL NOT NULL
)"""
_INSERT_NEW = "INSERT INTO objects (key, data, mtime) VALUES (?, ?, ?)"
_UPSERT = """INSERT INTO objects (key, data, mtime) VALUES (?, ?, ?)
    ON CONFLICT (key) DO UPDATE SET data = excluded.data, mtime = excluded.mtime"""
# Valid keys are ASCII below 0x7f, so every key starting with P sorts in [P, P + "\x7f"):
# a range the primary-key index answers without scanning the rest of the table.
_KEY_END = "\x7f"
_LIST_FIRST = ("SELECT key, length(data), mtime FROM objects "
               "WHERE key >= ? AND key < ? ORDER BY key LIMIT ?")
_LIST_NEXT = ("SELECT key, length(data), mtime FROM objects "
              "WHERE key > ? AND key < ? ORDER BY key LIMIT ?")
_LIST_BATCH = 1000
_BUSY_TIMEOUT = 30.0  # seconds to wait for another process's write lock
_READ_BLOCK = 1 << 20
_MIB = 1 << 20


def _non_negative(instance: Any, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be 0 or more, not {value}")


@attrs.frozen
class SqliteFileConfig:
    """Settings of an SQLite-file destination."""

    # setting() returns an attrs field; ruff cannot know that, hence the noqa.
    path: Path = setting(
        label="Database file",
        help="The SQLite file that holds the backups, e.g. /srv/backup/sbr.db. Its directory "
        "must exist; the file is created on first use. Keep it on a local disk: SQLite's "
        "locking is not reliable on NFS or CIFS shares.",
    )
    journal: str = setting(
        label="Journal mode",
        help="'wal' lets restores read while a backup writes (SQLite keeps -wal and -shm files "
        "beside the database); 'delete' keeps everything in the one file.",
        choices=("wal", "delete"),
        default="wal",
    )
    max_size_mb: int = setting(
        label="Maximum size (MiB)",
        help="Refuse writes that would grow the file past this size, as a full disk would; "
        "0 means no limit but the disk's.",
        default=0,
        validator=_non_negative,
    )


def translate_error(exc: sqlite3.Error, *, where: str, path: Path) -> DestinationError:
    """The SBR error for an sqlite3 error; ``where`` starts the message ("destination 'x': …")."""
    # Extended result codes carry the primary code in their low byte.
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == sqlite3.SQLITE_FULL:
        return DestinationFull(f"{where}: {path} is full (no space on its disk, or its "
                               "maximum size reached)")
    if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM):
        return DestinationReadOnly(f"{where}: {path} is read-only ({exc})")
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return DestinationUnavailable(f"{where}: {path} stayed locked by another writer for "
                                      f"{_BUSY_TIMEOUT:.0f} s")
    if code in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_IOERR):
        return DestinationUnavailable(f"{where}: cannot use {path} ({exc})")
    if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
        return DestinationError(f"{where}: {path} is not an SQLite database or is damaged "
                                f"({exc})")
    if code == sqlite3.SQLITE_TOOBIG:
        return DestinationError(f"{where}: the object is larger than SQLite's BLOB limit")
    return DestinationError(f"{where}: {exc}")


class SqliteFileDestination(Destination):
    """Stores each object as a row of one SQLite database file."""

    name = "sqlite-file"
    label = "SQLite file (example plugin)"
    description = ("Every object a row of one SQLite database file on a local disk. An example "
                   "of a third-party plugin; suits small repositories.")
    Config = SqliteFileConfig

    config: SqliteFileConfig

    def __init__(self, config: SqliteFileConfig, *, context: ProviderContext) -> None:
        super().__init__(config, context=context)
        # One connection, opened on first use and shared by the node's worker threads; the
        # lock keeps them from interleaving statements on it.
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None

    # --- connection and errors ------------------------------------------------------------

    def _where(self) -> str:
        return f"destination {self.context.name!r}"

    def _raise(self, exc: sqlite3.Error, doing: str) -> NoReturn:
        raise translate_error(exc, where=f"{self._where()}: {doing}",
                              path=self.config.path) from exc

    def _connection(self) -> sqlite3.Connection:
        """The open connection; the first call checks the directory and creates the table."""
        if self._db is None:
            self._check_location()
            try:
                self._db = self._open()
            except sqlite3.Error as exc:
                self._raise(exc, "cannot open the database")
        return self._db

    def _check_location(self) -> None:
        # SQLite would report a missing directory as a vague "unable to open database file".
        path = self.config.path
        if not path.parent.is_dir():
            raise DestinationUnavailable(f"{self._where()}: directory {path.parent} does not "
                                         "exist (is its disk mounted?)")
        if path.is_dir():
            raise DestinationUnavailable(f"{self._where()}: {path} is a directory, not an "
                                         "SQLite file")

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so nothing is implicit.
        db = sqlite3.connect(self.config.path, timeout=_BUSY_TIMEOUT, isolation_level=None,
                             check_same_thread=False)
        try:
            # journal is one of the Config's choices, never free text.
            db.execute(f"PRAGMA journal_mode = {self.config.journal}")
            db.execute("PRAGMA synchronous = FULL")  # a committed put survives a power cut
            if self.config.max_size_mb:
                page_size = db.execute("PRAGMA page_size").fetchone()[0]
                pages = math.ceil(self.config.max_size_mb * _MIB / page_size)
                db.execute(f"PRAGMA max_page_count = {int(pages)}")
            db.execute(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _write(self, sql: str, params: tuple[Any, ...], doing: str) -> None:
        """Run one statement in its own write transaction; roll back on any failure."""
        with self._lock:
            db = self._connection()
            try:
                db.execute("BEGIN IMMEDIATE")  # take the write lock now, not mid-statement
                db.execute(sql, params)
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback_quietly(db)
                self._raise(exc, doing)
            except BaseException:
                _rollback_quietly(db)
                raise

    def _query(self, sql: str, params: tuple[Any, ...], doing: str) -> list[Any]:
        with self._lock:
            db = self._connection()
            try:
                return db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                self._raise(exc, doing)

    # --- the object interface -------------------------------------------------------------

    def put(self, key: str, data: bytes | BinaryIO, *, if_absent: bool = False) -> None:
        """Store the object in one transaction, replacing any object of that key (or, with
        ``if_absent``, only if there is none: the primary key makes that atomic)."""
        check_key(key)
        with self._lock:
            limit = self._connection().getlimit(sqlite3.SQLITE_LIMIT_LENGTH)
        payload = self._read_all(key, data, limit)
        try:
            self._write(_INSERT_NEW if if_absent else _UPSERT, (key, payload, time.time()),
                        f"cannot store {key!r}")
        except DestinationError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                raise ObjectExists(f"{self._where()}: object {key!r} already exists") from None
            raise

    def _read_all(self, key: str, data: bytes | BinaryIO, limit: int) -> bytes:
        """The object's bytes, refusing (before reading further) one above ``limit``."""
        if isinstance(data, (bytes, bytearray, memoryview)):
            payload = bytes(data)
        else:
            chunks = bytearray()
            while block := data.read(min(_READ_BLOCK, limit + 1 - len(chunks))):
                chunks += block
                if len(chunks) > limit:
                    break
            payload = bytes(chunks)
        if len(payload) > limit:
            raise DestinationError(f"{self._where()}: cannot store {key!r}: objects of more "
                                   f"than {limit} bytes do not fit in one SQLite BLOB")
        return payload

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """Read the object, or ``length`` bytes of it from ``offset``, without loading the rest."""
        check_key(key)
        if offset < 0 or (length is not None and length < 0):
            raise UsageError(f"{self._where()}: offset and length must not be negative "
                             f"(got {offset}, {length})")
        # substr() on a BLOB counts bytes, from 1.
        sql = "SELECT substr(data, ?) FROM objects WHERE key = ?"
        params: tuple[Any, ...] = (offset + 1, key)
        if length is not None:
            sql = "SELECT substr(data, ?, ?) FROM objects WHERE key = ?"
            params = (offset + 1, length, key)
        rows = self._query(sql, params, f"cannot read {key!r}")
        if not rows:
            raise ObjectNotFound(f"{self._where()}: no object {key!r}")
        return bytes(rows[0][0] or b"")  # substr() of an empty BLOB is NULL

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield the objects whose key starts with ``prefix``, in key order."""
        check_prefix(prefix)  # here, so a bad prefix fails at the call, not at iteration
        return self._iter_list(prefix)

    def _iter_list(self, prefix: str) -> Iterator[ObjectInfo]:
        # Batches, so that no statement stays open while the caller works on what we yield
        # (it may well delete the objects it is shown).
        end = prefix + _KEY_END
        sql, after = _LIST_FIRST, prefix
        while True:
            rows = self._query(sql, (after, end, _LIST_BATCH), f"cannot list {prefix!r}")
            for key, size, mtime in rows:
                yield ObjectInfo(key, size, mtime)
            if len(rows) < _LIST_BATCH:
                return
            sql, after = _LIST_NEXT, rows[-1][0]

    def delete(self, key: str) -> None:
        """Remove the object's row; a missing one is fine."""
        check_key(key)
        self._write("DELETE FROM objects WHERE key = ?", (key,), f"cannot delete {key!r}")

    def stat(self, key: str) -> ObjectInfo:
        """Size and modification time of one object."""
        check_key(key)
        rows = self._query("SELECT length(data), mtime FROM objects WHERE key = ?", (key,),
                           f"cannot stat {key!r}")
        if not rows:
            raise ObjectNotFound(f"{self._where()}: no object {key!r}")
        size, mtime = rows[0]
        return ObjectInfo(key, size, mtime)

    def test_connection(self) -> None:
        """Open (or create) the database, then write, read back and delete a probe object."""
        probe = f"sbr-probe-{uuid.uuid4().hex}"
        self.put(probe, b"probe")
        try:
            if self.get(probe) != b"probe":
                raise DestinationError(f"{self._where()}: a probe object read back differently")
        finally:
            self.delete(probe)

    def close(self) -> None:
        """Close the connection; a later call opens a new one."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def _rollback_quietly(db: sqlite3.Connection) -> None:
    # SQLite may already have rolled back (e.g. on SQLITE_FULL); then there is nothing to undo.
    try:
        if db.in_transaction:
            db.execute("ROLLBACK")
    except sqlite3.Error:
        pass
