"""Refusing to work on a database whose schema is not the one this code expects."""

from __future__ import annotations

import peewee as pw

from sbr_core.db.migrations import LATEST, current_version
from sbr_core.errors import DatabaseError


def require_current(db: pw.Database) -> None:
    """Raise DatabaseError unless the schema is at the newest version."""
    version = current_version(db)
    if version < LATEST:
        raise DatabaseError(
            f"the database schema is at version {version}, this SBR needs {LATEST}: "
            "run 'sbr db upgrade'"
        )
    if version > LATEST:
        raise DatabaseError(
            f"the database schema is at version {version}, newer than this SBR ({LATEST}): "
            "upgrade SBR"
        )
