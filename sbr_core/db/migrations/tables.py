"""Frozen table definitions for migrations.

A migration must build the schema as it was at its version, whatever the current models say,
so it declares its columns here instead of importing :mod:`sbr_core.db.schema`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

import peewee as pw

ColumnSpec = dict[str, Callable[[], pw.Field]]


def utcnow() -> dt.datetime:
    """Naive UTC now: the default of every timestamp column the migrations create."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def frozen_model(
    db: pw.Database, table: str, columns: dict[str, pw.Field], indexes: Sequence[Any] = ()
) -> type[pw.Model]:
    """A throw-away model class for ``table`` with exactly the given columns."""
    meta = type("Meta", (), {"database": db, "table_name": table, "indexes": tuple(indexes)})
    body: dict[str, Any] = dict(columns)
    body["Meta"] = meta
    return type(f"Frozen_{table}", (pw.Model,), body)


def reference(db: pw.Database, table: str) -> type[pw.Model]:
    """A model standing for an existing table, to point foreign keys at."""
    return frozen_model(db, table, {})


def create_table(
    db: pw.Database, table: str, columns: dict[str, pw.Field], indexes: Sequence[Any] = ()
) -> type[pw.Model]:
    """Create ``table`` (if missing) with its columns and indexes; return its frozen model."""
    model = frozen_model(db, table, columns, indexes)
    db.create_tables([model], safe=True)
    return model
