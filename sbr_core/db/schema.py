"""The database as the current code sees it (peewee models).

These classes describe the newest schema; the migrations in :mod:`sbr_core.db.migrations`
build it step by step and a test checks that both agree. attrs domain values and these rows
stay separate; conversions live in :mod:`sbr_core.db.convert`.
"""

from __future__ import annotations

import datetime as dt

import peewee as pw

from sbr_core.db.fields import JsonField, LongTextField

database_proxy = pw.DatabaseProxy()


def utcnow() -> dt.datetime:
    """Naive UTC now: what every timestamp column holds."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class BaseModel(pw.Model):
    id = pw.AutoField()

    class Meta:
        database = database_proxy
        legacy_table_names = False


# --- identity and audit (migration 1) ---------------------------------------------------


class Role(BaseModel):
    name = pw.CharField(max_length=64, unique=True)
    description = pw.CharField(max_length=255, default="")


class Permission(BaseModel):
    name = pw.CharField(max_length=64, unique=True)
    description = pw.CharField(max_length=255, default="")


class RolePermission(BaseModel):
    role = pw.ForeignKeyField(Role, on_delete="CASCADE", backref="grants")
    permission = pw.ForeignKeyField(Permission, on_delete="CASCADE")

    class Meta:
        indexes = ((("role", "permission"), True),)


class User(BaseModel):
    username = pw.CharField(max_length=150, unique=True)
    password_hash = pw.CharField(max_length=255)
    role = pw.ForeignKeyField(Role)
    role_id: int
    active = pw.BooleanField(default=True)
    created_at = pw.DateTimeField(default=utcnow)
    last_login_at = pw.DateTimeField(null=True)


class AuditLog(BaseModel):
    at = pw.DateTimeField(default=utcnow, index=True)
    username = pw.CharField(max_length=150, default="")
    action = pw.CharField(max_length=64)
    target = pw.CharField(max_length=255, default="")
    detail = JsonField(null=True)
    remote_addr = pw.CharField(max_length=64, default="")


# --- connections and inventory (migration 2) --------------------------------------------


class ProviderConnection(BaseModel):
    name = pw.CharField(max_length=100, unique=True)
    kind = pw.CharField(max_length=16)
    plugin = pw.CharField(max_length=64)
    settings = JsonField(default=dict)
    secrets = pw.TextField(default="")
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)


class Destination(BaseModel):
    name = pw.CharField(max_length=100, unique=True)
    plugin = pw.CharField(max_length=64)
    settings = JsonField(default=dict)
    secrets = pw.TextField(default="")
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)
    repository_secret = pw.TextField(default="")  # migration 4: sealed passphrase


class Instance(BaseModel):
    connection = pw.ForeignKeyField(ProviderConnection, on_delete="CASCADE", backref="instances")
    external_id = pw.CharField(max_length=255)
    name = pw.CharField(max_length=255, index=True)
    kind = pw.CharField(max_length=32, default="vm")
    state = pw.CharField(max_length=32, default="unknown")
    location = pw.CharField(max_length=255, default="")
    tags = JsonField(default=list)
    attributes = JsonField(default=dict)
    present = pw.BooleanField(default=True)
    first_seen_at = pw.DateTimeField(default=utcnow)
    last_seen_at = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("connection", "external_id"), True),)


# --- policies, nodes, work and backups (migration 3) ------------------------------------


class Policy(BaseModel):
    name = pw.CharField(max_length=100, unique=True)
    kind = pw.CharField(max_length=16, default="backup")
    destination = pw.ForeignKeyField(Destination, null=True, backref="policies")
    destination_id: int | None
    rules = JsonField(default=list)
    retention = JsonField(default=dict)
    options = JsonField(default=dict)  # migration 7: passed to the work (see policies.OPTIONS)
    priority = pw.IntegerField(default=50)
    enabled = pw.BooleanField(default=True)
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)


class PolicyInstance(BaseModel):
    policy = pw.ForeignKeyField(Policy, on_delete="CASCADE", backref="members")
    instance = pw.ForeignKeyField(Instance, on_delete="CASCADE")
    policy_id: int
    instance_id: int
    source = pw.CharField(max_length=16, default="explicit")  # migration 5: or "rule"

    class Meta:
        indexes = ((("policy", "instance"), True),)


class Schedule(BaseModel):
    policy = pw.ForeignKeyField(Policy, on_delete="CASCADE", backref="schedules")
    kind = pw.CharField(max_length=16, default="cron")
    expression = pw.CharField(max_length=255)
    window_minutes = pw.IntegerField(default=0)
    timezone = pw.CharField(max_length=64, default="UTC")
    enabled = pw.BooleanField(default=True)
    last_run_at = pw.DateTimeField(null=True)
    next_run_at = pw.DateTimeField(null=True)


class Node(BaseModel):
    name = pw.CharField(max_length=100, unique=True)
    token_hash = pw.CharField(max_length=255, default="")
    version = pw.CharField(max_length=32, default="")
    staging_path = pw.CharField(max_length=1024, default="")
    free_bytes = pw.BigIntegerField(default=0)
    concurrency = pw.IntegerField(default=2)
    affinity = JsonField(default=list)
    state = pw.CharField(max_length=16, default="online")
    revoked = pw.BooleanField(default=False)
    registered_at = pw.DateTimeField(default=utcnow)
    last_seen_at = pw.DateTimeField(null=True)


class Workflow(BaseModel):
    kind = pw.CharField(max_length=32)
    state = pw.CharField(max_length=16, default="pending", index=True)
    instance = pw.ForeignKeyField(Instance, null=True, on_delete="SET NULL")
    instance_id: int | None
    policy = pw.ForeignKeyField(Policy, null=True, on_delete="SET NULL")
    policy_id: int | None
    requested_by = pw.CharField(max_length=150, default="")
    params = JsonField(default=dict)
    error = pw.TextField(default="")
    created_at = pw.DateTimeField(default=utcnow)
    finished_at = pw.DateTimeField(null=True)
    priority = pw.IntegerField(default=50)  # migration 4: the policy's, higher runs first
    provider_name = pw.CharField(max_length=100, default="")  # the instance's connection
    location = pw.CharField(max_length=255, default="")  # the instance's, for node affinity


class Task(BaseModel):
    workflow = pw.ForeignKeyField(Workflow, on_delete="CASCADE", backref="tasks")
    workflow_id: int
    step = pw.CharField(max_length=32)
    seq = pw.IntegerField(default=0)
    state = pw.CharField(max_length=16, default="pending")
    node = pw.ForeignKeyField(Node, null=True, on_delete="SET NULL")
    node_id: int | None
    attempts = pw.IntegerField(default=0)
    max_attempts = pw.IntegerField(default=3)
    priority = pw.IntegerField(default=50)  # migration 6: the workflow's, for claim order
    not_before = pw.DateTimeField(null=True)
    lease_expires_at = pw.DateTimeField(null=True)
    progress_done = pw.BigIntegerField(default=0)
    progress_total = pw.BigIntegerField(default=0)
    speed_bps = pw.BigIntegerField(default=0)
    params = JsonField(default=dict)
    result = JsonField(null=True)
    error = pw.TextField(default="")
    created_at = pw.DateTimeField(default=utcnow)
    started_at = pw.DateTimeField(null=True)
    finished_at = pw.DateTimeField(null=True)

    class Meta:
        # and migration 6's task_claim_order: (state, priority DESC, id), the claim's order
        indexes = ((("state", "not_before"), False),)


class TaskLog(BaseModel):
    task = pw.ForeignKeyField(Task, on_delete="CASCADE", backref="log")
    at = pw.DateTimeField(default=utcnow)
    level = pw.CharField(max_length=8, default="info")
    message = LongTextField()


class Backup(BaseModel):
    instance = pw.ForeignKeyField(Instance, backref="backups")
    instance_id: int
    destination = pw.ForeignKeyField(Destination, backref="backups")
    destination_id: int
    policy = pw.ForeignKeyField(Policy, null=True, on_delete="SET NULL")
    workflow = pw.ForeignKeyField(Workflow, null=True, on_delete="SET NULL")
    repo_backup_id = pw.CharField(max_length=128)
    kind = pw.CharField(max_length=16, default="full")
    state = pw.CharField(max_length=16, default="complete")
    started_at = pw.DateTimeField(default=utcnow)
    finished_at = pw.DateTimeField(null=True)
    bytes_logical = pw.BigIntegerField(default=0)
    bytes_stored = pw.BigIntegerField(default=0)
    platform_state = JsonField(default=dict)
    expires_at = pw.DateTimeField(null=True)

    class Meta:
        indexes = ((("instance", "started_at"), False),)


# --- API tokens (migration 4) -------------------------------------------------------------


class ApiToken(BaseModel):
    """A bearer token for the REST API (``sbr login``): only its SHA-256 is kept."""

    user = pw.ForeignKeyField(User, on_delete="CASCADE", backref="tokens")
    user_id: int
    name = pw.CharField(max_length=100, default="")
    token_hash = pw.CharField(max_length=64, unique=True)
    created_at = pw.DateTimeField(default=utcnow)
    last_used_at = pw.DateTimeField(null=True)
    expires_at = pw.DateTimeField(null=True)
    revoked = pw.BooleanField(default=False)


ALL_MODELS: tuple[type[BaseModel], ...] = (
    Role, Permission, RolePermission, User, AuditLog,
    ProviderConnection, Destination, Instance,
    Policy, PolicyInstance, Schedule, Node, Workflow, Task, TaskLog, Backup,
    ApiToken,
)
