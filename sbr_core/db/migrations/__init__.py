"""Versioned schema migrations, run by ``sbr db upgrade`` and on server start.

Rules every migration follows: it only adds (tables, columns, indexes, rows); it never drops or
rewrites data (a test scans for that); it describes its tables itself (see :mod:`.tables`).
Applied versions are recorded in ``sbr_schema_migration``. A database newer than the code is
refused rather than touched. SQLite files are copied aside before the first pending migration.
"""

from __future__ import annotations

import datetime as dt
import importlib
import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType

import attrs
import peewee as pw

from sbr_core.errors import DatabaseError

log = logging.getLogger(__name__)

MIGRATION_TABLE = "sbr_schema_migration"
_MODULES = ("m0001_identity", "m0002_connections", "m0003_operations", "m0004_engine",
            "m0005_membership", "m0006_task_priority", "m0007_policy_options")


@attrs.frozen
class Migration:
    """One schema step."""

    version: int
    title: str
    apply: Callable[[pw.Database], None]


def _load(name: str) -> Migration:
    module: ModuleType = importlib.import_module(f"{__name__}.{name}")
    return Migration(module.VERSION, module.TITLE, module.apply)


MIGRATIONS: tuple[Migration, ...] = tuple(_load(name) for name in _MODULES)
LATEST = MIGRATIONS[-1].version


class _Applied(pw.Model):
    version = pw.IntegerField(primary_key=True)
    title = pw.CharField(max_length=255)
    applied_at = pw.DateTimeField()

    class Meta:
        table_name = MIGRATION_TABLE


def applied_versions(db: pw.Database) -> list[int]:
    """Versions already applied, ascending (empty for a new database)."""
    with _Applied.bind_ctx(db):
        if not _Applied.table_exists():
            return []
        return [row.version for row in _Applied.select().order_by(_Applied.version)]


def current_version(db: pw.Database) -> int:
    """The schema version of ``db``: 0 for an empty database."""
    versions = applied_versions(db)
    return versions[-1] if versions else 0


def upgrade(db: pw.Database, *, target: int | None = None) -> list[Migration]:
    """Apply every pending migration up to ``target`` (default: the newest); return them."""
    goal = LATEST if target is None else target
    if goal < 0 or goal > LATEST:
        raise DatabaseError(f"no schema version {goal} (this SBR knows 1 to {LATEST})")
    with _exclusive(db):
        with _Applied.bind_ctx(db):
            db.create_tables([_Applied], safe=True)
        done = set(applied_versions(db))
        newest = max(done, default=0)
        if newest > LATEST:
            raise DatabaseError(
                f"the database is at schema version {newest}, newer than this SBR knows "
                f"({LATEST}): upgrade SBR instead"
            )
        pending = [m for m in MIGRATIONS if m.version not in done and m.version <= goal]
        if pending and done and isinstance(db, pw.SqliteDatabase):
            _copy_sqlite_aside(db, newest)
        for migration in pending:
            log.info("applying schema migration %d: %s", migration.version, migration.title)
            with db.atomic():
                migration.apply(db)
                with _Applied.bind_ctx(db):
                    _Applied.create(version=migration.version, title=migration.title,
                                    applied_at=dt.datetime.now(dt.UTC).replace(tzinfo=None))
        return pending


@contextmanager
def _exclusive(db: pw.Database) -> Iterator[None]:
    """Keep two processes (server start + `sbr db upgrade`) from migrating at once."""
    if isinstance(db, pw.MySQLDatabase):
        got = db.execute_sql("SELECT GET_LOCK('sbr_migrate', 120)").fetchone()[0]
        if got != 1:
            raise DatabaseError("another process is upgrading the database schema; try again")
        try:
            yield
        finally:
            db.execute_sql("SELECT RELEASE_LOCK('sbr_migrate')")
    else:
        # SQLite: one writer at a time already; the busy timeout makes the other one wait.
        yield


def _copy_sqlite_aside(db: pw.SqliteDatabase, version: int) -> None:
    if db.database == ":memory:":
        return
    target = f"{db.database}.v{version}.bak"
    with sqlite3.connect(target) as copy:
        db.connection().backup(copy)
    copy.close()
    log.info("copied the database to %s before upgrading", target)
