"""Version 1: users, roles, permissions and the audit log; the built-in roles."""

from __future__ import annotations

import peewee as pw

from sbr_core.db.migrations.tables import create_table, utcnow

VERSION = 1
TITLE = "users, roles, permissions, audit log"

PERMISSIONS = {
    "view": "See inventory, backups, tasks and plugins",
    "operate": "Run backups and restores; cancel tasks",
    "configure": "Manage providers, destinations, policies and nodes",
    "manage-users": "Manage users and roles",
    "audit": "Read the audit log",
}
ROLES = {
    "admin": ("Full control", tuple(PERMISSIONS)),
    "operator": ("Runs backups and restores", ("view", "operate")),
    "auditor": ("Reads everything, including the audit log", ("view", "audit")),
    "viewer": ("Read-only", ("view",)),
}


def apply(db: pw.Database) -> None:
    """Create the identity tables and seed the built-in roles."""
    role = create_table(db, "role", {
        "name": pw.CharField(max_length=64, unique=True),
        "description": pw.CharField(max_length=255, default=""),
    })
    permission = create_table(db, "permission", {
        "name": pw.CharField(max_length=64, unique=True),
        "description": pw.CharField(max_length=255, default=""),
    })
    role_permission = create_table(db, "role_permission", {
        "role": pw.ForeignKeyField(role, on_delete="CASCADE"),
        "permission": pw.ForeignKeyField(permission, on_delete="CASCADE"),
    }, indexes=((("role", "permission"), True),))
    create_table(db, "user", {
        "username": pw.CharField(max_length=150, unique=True),
        "password_hash": pw.CharField(max_length=255),
        "role": pw.ForeignKeyField(role),
        "active": pw.BooleanField(default=True),
        "created_at": pw.DateTimeField(default=utcnow),
        "last_login_at": pw.DateTimeField(null=True),
    })
    create_table(db, "audit_log", {
        "at": pw.DateTimeField(default=utcnow, index=True),
        "username": pw.CharField(max_length=150, default=""),
        "action": pw.CharField(max_length=64),
        "target": pw.CharField(max_length=255, default=""),
        "detail": pw.TextField(null=True),
        "remote_addr": pw.CharField(max_length=64, default=""),
    })
    perm_ids = {name: permission.create(name=name, description=text).get_id()
                for name, text in PERMISSIONS.items()}
    for name, (text, granted) in ROLES.items():
        role_id = role.create(name=name, description=text).get_id()
        for perm in granted:
            role_permission.create(role=role_id, permission=perm_ids[perm])
