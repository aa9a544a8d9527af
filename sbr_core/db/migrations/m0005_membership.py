"""Version 5: where a policy member comes from, so that re-evaluating a policy's rules
never removes an instance the admin added by hand."""

from __future__ import annotations

import peewee as pw

from sbr_core.db.migrations.tables import add_column

VERSION = 5
TITLE = "policy members: explicit or by rule"


def apply(db: pw.Database) -> None:
    """Add ``policy_instance.source``: ``explicit`` (the rows so far) or ``rule``."""
    add_column(db, "policy_instance", "source", pw.CharField(max_length=16, default="explicit"))
