"""Version 4: what the task engine needs besides migration 3's tables — API tokens for the
CLI, and on each workflow its priority and the placement nodes are matched against."""

from __future__ import annotations

import peewee as pw

from sbr_core.db.migrations.tables import add_column, create_table, reference, utcnow

VERSION = 4
TITLE = "API tokens; repository passphrases; workflow priority and placement"


def apply(db: pw.Database) -> None:
    """Create ``api_token``; give each destination its repository passphrase (sealed);
    add ``priority``, ``provider_name`` and ``location`` to
    ``workflow`` (copied from the policy and the instance when the workflow is created, so a
    claim filters on one table)."""
    user = reference(db, "user")
    create_table(db, "api_token", {
        "user": pw.ForeignKeyField(user, on_delete="CASCADE"),
        "name": pw.CharField(max_length=100, default=""),
        "token_hash": pw.CharField(max_length=64, unique=True),
        "created_at": pw.DateTimeField(default=utcnow),
        "last_used_at": pw.DateTimeField(null=True),
        "expires_at": pw.DateTimeField(null=True),
        "revoked": pw.BooleanField(default=False),
    })
    add_column(db, "workflow", "priority", pw.IntegerField(default=50))
    add_column(db, "workflow", "provider_name", pw.CharField(max_length=100, default=""))
    add_column(db, "workflow", "location", pw.CharField(max_length=255, default=""))
    add_column(db, "destination", "repository_secret", pw.TextField(default=""))
