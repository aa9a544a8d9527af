"""Version 2: provider connections, destinations and the instance inventory."""

from __future__ import annotations

import peewee as pw

from sbr_core.db.migrations.tables import create_table, utcnow

VERSION = 2
TITLE = "provider connections, destinations, inventory"


def apply(db: pw.Database) -> None:
    """Create the connection and inventory tables."""
    connection = create_table(db, "provider_connection", {
        "name": pw.CharField(max_length=100, unique=True),
        "kind": pw.CharField(max_length=16),
        "plugin": pw.CharField(max_length=64),
        "settings": pw.TextField(),
        "secrets": pw.TextField(default=""),
        "created_at": pw.DateTimeField(default=utcnow),
        "updated_at": pw.DateTimeField(default=utcnow),
    })
    create_table(db, "destination", {
        "name": pw.CharField(max_length=100, unique=True),
        "plugin": pw.CharField(max_length=64),
        "settings": pw.TextField(),
        "secrets": pw.TextField(default=""),
        "created_at": pw.DateTimeField(default=utcnow),
        "updated_at": pw.DateTimeField(default=utcnow),
    })
    create_table(db, "instance", {
        "connection": pw.ForeignKeyField(connection, on_delete="CASCADE"),
        "external_id": pw.CharField(max_length=255),
        "name": pw.CharField(max_length=255, index=True),
        "kind": pw.CharField(max_length=32, default="vm"),
        "state": pw.CharField(max_length=32, default="unknown"),
        "location": pw.CharField(max_length=255, default=""),
        "tags": pw.TextField(),
        "attributes": pw.TextField(),
        "present": pw.BooleanField(default=True),
        "first_seen_at": pw.DateTimeField(default=utcnow),
        "last_seen_at": pw.DateTimeField(default=utcnow),
    }, indexes=((("connection", "external_id"), True),))
