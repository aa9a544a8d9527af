"""Connecting to the database chosen by ``SBR_DATABASE_URL`` and binding the models to it."""

from __future__ import annotations

from typing import Any

import peewee as pw
from playhouse.shortcuts import ReconnectMixin

from sbr_core.db.schema import database_proxy
from sbr_core.db.url import DatabaseURL, parse_database_url
from sbr_core.errors import DatabaseError

__all__ = ["close_database", "open_database"]


class _ReconnectingMySQL(ReconnectMixin, pw.MySQLDatabase):
    """MariaDB connection that reconnects once after the server dropped it (wait_timeout)."""


# MariaDB client error codes we translate into plain sentences.
_ACCESS_DENIED = 1045
_UNKNOWN_DATABASE = 1049
_CANNOT_CONNECT = (2002, 2003, 2005, 2006, 2013)


def open_database(url: DatabaseURL | str) -> pw.Database:
    """Connect to the database, bind the models to it and return it.

    Raises DatabaseError with one clear sentence (unreachable server, refused password,
    missing database or directory) instead of a driver traceback.
    """
    parsed = parse_database_url(url) if isinstance(url, str) else url
    db = _sqlite(parsed) if parsed.dialect == "sqlite" else _mysql(parsed)
    try:
        db.connect(reuse_if_open=True)
        db.execute_sql("SELECT 1")
    except pw.OperationalError as exc:
        raise _translate(exc, parsed) from None
    except pw.DatabaseError as exc:
        raise DatabaseError(f"database {parsed.safe()}: {exc}") from None
    database_proxy.initialize(db)
    return db


def close_database(db: pw.Database) -> None:
    """Close the connection and unbind the models."""
    if not db.is_closed():
        db.close()


def _sqlite(url: DatabaseURL) -> pw.Database:
    assert url.path is not None
    if not url.path.parent.is_dir():
        raise DatabaseError(
            f"database {url.safe()}: directory {url.path.parent} does not exist"
        )
    return pw.SqliteDatabase(
        str(url.path),
        pragmas={
            "journal_mode": "wal",  # readers do not block the writer
            "foreign_keys": 1,
            "busy_timeout": 15000,
            "synchronous": "normal",
        },
        check_same_thread=False,
        # Every transaction takes the write lock when it begins. A DEFERRED one that read
        # first and writes later fails at once with "database is locked" (not after the
        # busy timeout) when another connection committed in between: its snapshot is
        # stale. The server's engine thread commits while requests run, so that happened.
        lock_type="IMMEDIATE",
    )


def _mysql(url: DatabaseURL) -> pw.Database:
    from pymysql.constants import CLIENT

    kwargs: dict[str, Any] = {
        "user": url.user,
        "password": url.password,
        "charset": url.options.get("charset", "utf8mb4"),
        "connect_timeout": int(url.options.get("connect_timeout", "10")),
        # UPDATE counts the rows it matched, as on SQLite, not only those whose values
        # changed: a lease renewed within the second it was taken still counts as held.
        "client_flag": CLIENT.FOUND_ROWS,
    }
    if "unix_socket" in url.options:
        kwargs["unix_socket"] = url.options["unix_socket"]
    else:
        kwargs["host"] = url.host
        kwargs["port"] = url.port
    return _ReconnectingMySQL(url.database, **kwargs)


def _translate(exc: Exception, url: DatabaseURL) -> DatabaseError:
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    where = f"database {url.safe()}"
    if code == _ACCESS_DENIED:
        return DatabaseError(f"{where}: access denied for user {url.user!r} "
                             "(check the user and password in SBR_DATABASE_URL)")
    if code == _UNKNOWN_DATABASE:
        return DatabaseError(f"{where}: database {url.database!r} does not exist "
                             f"(create it: CREATE DATABASE {url.database} CHARACTER SET utf8mb4)")
    if code in _CANNOT_CONNECT:
        return DatabaseError(f"{where}: cannot reach the server ({exc.args[-1]})")
    return DatabaseError(f"{where}: {exc.args[-1] if exc.args else exc}")
