"""Version 3: policies, schedules, nodes, workflows, tasks with their logs, and backups."""

from __future__ import annotations

import peewee as pw

from sbr_core.db.fields import LongTextField
from sbr_core.db.migrations.tables import create_table, reference, utcnow

VERSION = 3
TITLE = "policies, schedules, nodes, workflows, tasks, backups"


def apply(db: pw.Database) -> None:
    """Create the tables the scheduler, the task engine and the catalog use."""
    destination = reference(db, "destination")
    instance = reference(db, "instance")
    policy = create_table(db, "policy", {
        "name": pw.CharField(max_length=100, unique=True),
        "kind": pw.CharField(max_length=16, default="backup"),
        "destination": pw.ForeignKeyField(destination, null=True),
        "rules": pw.TextField(),
        "retention": pw.TextField(),
        "priority": pw.IntegerField(default=50),
        "enabled": pw.BooleanField(default=True),
        "created_at": pw.DateTimeField(default=utcnow),
        "updated_at": pw.DateTimeField(default=utcnow),
    })
    create_table(db, "policy_instance", {
        "policy": pw.ForeignKeyField(policy, on_delete="CASCADE"),
        "instance": pw.ForeignKeyField(instance, on_delete="CASCADE"),
    }, indexes=((("policy", "instance"), True),))
    create_table(db, "schedule", {
        "policy": pw.ForeignKeyField(policy, on_delete="CASCADE"),
        "kind": pw.CharField(max_length=16, default="cron"),
        "expression": pw.CharField(max_length=255),
        "window_minutes": pw.IntegerField(default=0),
        "timezone": pw.CharField(max_length=64, default="UTC"),
        "enabled": pw.BooleanField(default=True),
        "last_run_at": pw.DateTimeField(null=True),
        "next_run_at": pw.DateTimeField(null=True),
    })
    node = create_table(db, "node", {
        "name": pw.CharField(max_length=100, unique=True),
        "token_hash": pw.CharField(max_length=255, default=""),
        "version": pw.CharField(max_length=32, default=""),
        "staging_path": pw.CharField(max_length=1024, default=""),
        "free_bytes": pw.BigIntegerField(default=0),
        "concurrency": pw.IntegerField(default=2),
        "affinity": pw.TextField(),
        "state": pw.CharField(max_length=16, default="online"),
        "revoked": pw.BooleanField(default=False),
        "registered_at": pw.DateTimeField(default=utcnow),
        "last_seen_at": pw.DateTimeField(null=True),
    })
    workflow = create_table(db, "workflow", {
        "kind": pw.CharField(max_length=32),
        "state": pw.CharField(max_length=16, default="pending", index=True),
        "instance": pw.ForeignKeyField(instance, null=True, on_delete="SET NULL"),
        "policy": pw.ForeignKeyField(policy, null=True, on_delete="SET NULL"),
        "requested_by": pw.CharField(max_length=150, default=""),
        "params": pw.TextField(),
        "error": pw.TextField(),
        "created_at": pw.DateTimeField(default=utcnow),
        "finished_at": pw.DateTimeField(null=True),
    })
    task = create_table(db, "task", {
        "workflow": pw.ForeignKeyField(workflow, on_delete="CASCADE"),
        "step": pw.CharField(max_length=32),
        "seq": pw.IntegerField(default=0),
        "state": pw.CharField(max_length=16, default="pending"),
        "node": pw.ForeignKeyField(node, null=True, on_delete="SET NULL"),
        "attempts": pw.IntegerField(default=0),
        "max_attempts": pw.IntegerField(default=3),
        "not_before": pw.DateTimeField(null=True),
        "lease_expires_at": pw.DateTimeField(null=True),
        "progress_done": pw.BigIntegerField(default=0),
        "progress_total": pw.BigIntegerField(default=0),
        "speed_bps": pw.BigIntegerField(default=0),
        "params": pw.TextField(),
        "result": pw.TextField(null=True),
        "error": pw.TextField(),
        "created_at": pw.DateTimeField(default=utcnow),
        "started_at": pw.DateTimeField(null=True),
        "finished_at": pw.DateTimeField(null=True),
    }, indexes=((("state", "not_before"), False),))
    create_table(db, "task_log", {
        "task": pw.ForeignKeyField(task, on_delete="CASCADE"),
        "at": pw.DateTimeField(default=utcnow),
        "level": pw.CharField(max_length=8, default="info"),
        "message": LongTextField(),
    })
    create_table(db, "backup", {
        "instance": pw.ForeignKeyField(instance),
        "destination": pw.ForeignKeyField(destination),
        "policy": pw.ForeignKeyField(policy, null=True, on_delete="SET NULL"),
        "workflow": pw.ForeignKeyField(workflow, null=True, on_delete="SET NULL"),
        "repo_backup_id": pw.CharField(max_length=128),
        "kind": pw.CharField(max_length=16, default="full"),
        "state": pw.CharField(max_length=16, default="complete"),
        "started_at": pw.DateTimeField(default=utcnow),
        "finished_at": pw.DateTimeField(null=True),
        "bytes_logical": pw.BigIntegerField(default=0),
        "bytes_stored": pw.BigIntegerField(default=0),
        "platform_state": pw.TextField(),
        "expires_at": pw.DateTimeField(null=True),
    }, indexes=((("instance", "started_at"), False),))
