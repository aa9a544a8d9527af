"""Version 7: policies carry options for the work they start.

A backup policy may turn guest quiescing off (``{"quiesce": false}``); a snapshot policy
chooses ``internal`` or ``external`` snapshots, with or without memory. Existing policies
get an empty object: the defaults they ran with before.
"""

from __future__ import annotations

import peewee as pw

from sbr_core.db.fields import JsonField
from sbr_core.db.migrations.tables import add_column

VERSION = 7
TITLE = "policy options (quiesce, snapshot kind, memory)"


def apply(db: pw.Database) -> None:
    """Add ``policy.options`` (JSON text, ``{}`` for existing rows)."""
    add_column(db, "policy", "options", JsonField(default={}))  # the DDL literal only
