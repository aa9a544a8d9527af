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


def add_column(db: pw.Database, table: str, name: str, field: pw.Field) -> None:
    """Add a column to an existing table (if missing). A NOT NULL column needs a default,
    which fills the rows already there: ``ALTER TABLE … ADD COLUMN … NOT NULL DEFAULT``
    works unchanged on SQLite and MariaDB, with no table rebuild."""
    if any(c.name == name for c in db.get_columns(table)):
        return
    model = frozen_model(db, table, {name: field})
    bound = model._meta.fields[name]
    context = db.get_sql_context()
    column_sql, params = context.sql(bound.ddl(context)).query()
    if params:
        raise ValueError(f"{table}.{name}: the column's DDL takes parameters")
    if not bound.null:
        if bound.default is None or callable(bound.default):
            raise ValueError(f"{table}.{name}: a NOT NULL column needs a constant default")
        column_sql += f" DEFAULT {_literal(bound.db_value(bound.default))}"  # DDL: no params
    quoted = f"{db.quote[0]}{table}{db.quote[1]}"
    db.execute_sql(f"ALTER TABLE {quoted} ADD COLUMN {column_sql}")


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"
