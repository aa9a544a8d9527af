"""The database: ``open_database`` connects to the one ``SBR_DATABASE_URL`` names.

peewee and the MySQL driver load on first use of ``open_database``, not on import, so
commands that never touch the database (``sbr repo``) stay small in memory.
"""

from __future__ import annotations

from typing import Any

from sbr_core.db.url import DatabaseURL, parse_database_url

__all__ = ["DatabaseURL", "close_database", "open_database", "parse_database_url"]


def __getattr__(name: str) -> Any:
    if name in ("open_database", "close_database"):
        from sbr_core.db import connect

        return getattr(connect, name)
    raise AttributeError(f"module 'sbr_core.db' has no attribute {name!r}")
