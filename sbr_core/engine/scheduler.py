"""The scheduler pass: which policies are due, who belongs to them, and the workflows
that come of it. Runs in the server's engine loop (:mod:`.service`).

Membership is stored, not computed at fire time: explicit members are rows the admin
made (``source = "explicit"``), and :func:`refresh_membership` keeps the ``rule`` rows in
step with the inventory, so a pass over a thousand instances reads rows instead of matching
regular expressions. Each due schedule gets its workflows in one transaction; an instance
that already has one of that kind pending or running is skipped, never queued twice
(docs/engine.md, "Scheduling").
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Iterable

import attrs
import peewee as pw

from sbr_core.db.schema import (
    Backup,
    Destination,
    Instance,
    Policy,
    PolicyInstance,
    ProviderConnection,
    Schedule,
    Workflow,
    utcnow,
)
from sbr_core.engine import rules as membership_rules
from sbr_core.engine import schedules
from sbr_core.engine.workflows import ACTIVE_STATES, create_workflows
from sbr_core.errors import ConfigError
from sbr_core.plugins import PluginHost

log = logging.getLogger(__name__)

#: How many backups one prune workflow forgets; more wait for the next one.
PRUNE_BATCH = 500


@attrs.define
class PassReport:
    """What one scheduler pass did."""

    fired: int = 0  # schedules that ran
    skipped_windows: int = 0  # due schedules whose window had closed
    created: int = 0  # workflows created
    busy: int = 0  # instances skipped: one already pending or running
    broken: list[str] = attrs.field(factory=list)  # schedules that cannot be read


def _as_utc(moment: dt.datetime | None) -> dt.datetime | None:
    return moment.replace(tzinfo=dt.UTC) if moment is not None else None


def _naive(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.UTC).replace(tzinfo=None)


def refresh_membership(db: pw.Database, policies: Iterable[Policy] | None = None) -> int:
    """Re-evaluate the rules of ``policies`` (all by default) against the present
    inventory and store the result as ``rule`` members; explicit members stay as they are.
    Returns how many member rows were added or removed."""
    policy_list = list(policies) if policies is not None else list(Policy.select())
    if not policy_list:
        return 0
    views = {
        row.id: membership_rules.InstanceView(name=row.name, tags=tuple(row.tags or ()),
                                              location=row.location,
                                              provider=row.connection.name)
        for row in Instance.select(Instance, ProviderConnection).join(ProviderConnection)
        .where(Instance.present == True)  # noqa: E712
    }
    changed = 0
    with db.atomic():
        for policy in policy_list:
            try:
                parsed = membership_rules.parse_rules(policy.rules or [])
            except ConfigError as exc:  # stored before a stricter check: match nothing
                log.warning("policy %r: its rules cannot be read (%s); they match nothing",
                            policy.name, exc)
                parsed = ()
            wanted = {instance_id for instance_id, view in views.items()
                      if membership_rules.matches(parsed, view)}
            current = {row.instance_id: row.source for row in
                       PolicyInstance.select(PolicyInstance.instance, PolicyInstance.source)
                       .where(PolicyInstance.policy == policy.id)}
            stale = [i for i, source in current.items() if source == "rule" and i not in wanted]
            new = sorted(wanted - current.keys())
            if stale:
                changed += (PolicyInstance.delete()
                            .where((PolicyInstance.policy == policy.id)
                                   & PolicyInstance.instance.in_(stale)
                                   & (PolicyInstance.source == "rule")).execute())
            if new:
                PolicyInstance.insert_many(
                    [{"policy": policy.id, "instance": i, "source": "rule"} for i in new]
                ).execute()
                changed += len(new)
    return changed


def members(policy: Policy) -> list[Instance]:
    """The present instances that belong to ``policy`` (explicit and by rule), by id."""
    return list(Instance.select(Instance, ProviderConnection)
                .join(ProviderConnection)
                .switch(Instance)
                .join(PolicyInstance, on=(PolicyInstance.instance == Instance.id))
                .where((PolicyInstance.policy == policy.id)
                       & (Instance.present == True))  # noqa: E712
                .order_by(Instance.id))


def schedule_pass(db: pw.Database, *, host: PluginHost | None = None,
                  now: dt.datetime | None = None) -> PassReport:
    """Fire every enabled schedule of an enabled policy that is due at ``now``."""
    now_utc = _as_utc(now or utcnow())
    assert now_utc is not None
    report = PassReport()
    due_rows = list(Schedule.select(Schedule, Policy).join(Policy)
                    .where((Schedule.enabled == True) & (Policy.enabled == True)  # noqa: E712
                           & (Schedule.next_run_at.is_null()
                              | (Schedule.next_run_at <= _naive(now_utc))))
                    .order_by(Policy.priority.desc(), Schedule.id))
    fired: dict[int, Policy] = {}
    for row in due_rows:
        try:
            parsed = schedules.stored_schedule(
                row, field=f"policy {row.policy.name!r} schedule {row.id}")
            run, next_run = schedules.due(parsed, _as_utc(row.next_run_at), now_utc)
        except ConfigError as exc:
            report.broken.append(f"policy {row.policy.name!r}, schedule {row.id}: {exc}")
            log.error("policy %r: schedule %d cannot run: %s", row.policy.name, row.id, exc)
            Schedule.update(enabled=False).where(Schedule.id == row.id).execute()
            continue
        changes = {Schedule.next_run_at: _naive(next_run)}
        if run:
            changes[Schedule.last_run_at] = _naive(now_utc)
            report.fired += 1
            fired.setdefault(row.policy.id, row.policy)  # two schedules due at once: one run
        elif row.next_run_at is not None:
            report.skipped_windows += 1
            log.warning("policy %r: its %s window was missed; next run at %s",
                        row.policy.name, row.kind, next_run.isoformat())
        Schedule.update(changes).where(Schedule.id == row.id).execute()
    for policy in fired.values():
        _run_policy(db, policy, host, report)
    return report


def _run_policy(db: pw.Database, policy: Policy, host: PluginHost | None,
                report: PassReport) -> None:
    kind = "snapshot" if policy.kind == "snapshot" else "backup"
    params: dict[str, object] = {}
    if kind == "backup":
        if policy.destination_id is None:
            report.broken.append(f"policy {policy.name!r}: no destination")
            log.error("policy %r is due but has no destination", policy.name)
            return
        params["destination_id"] = policy.destination_id
    else:
        params["keep_snapshots"] = int((policy.retention or {}).get("keep_snapshots", 0))
        params["policy"] = policy.name  # names its snapshots, so pruning finds only its own
    if policy.options:
        params["options"] = dict(policy.options)
    instances = members(policy)
    created, busy = create_workflows(db, kind, instances, policy=policy, params=params,
                                     requested_by=f"policy:{policy.name}", host=host)
    report.created += len(created)
    report.busy += len(busy)
    if busy:
        log.info("policy %r: %d instance(s) still have a %s pending or running; not queued "
                 "again", policy.name, len(busy), kind)


def prune_pass(db: pw.Database, *, host: PluginHost | None = None) -> int:
    """Start a ``prune`` workflow for each destination that holds expired backups and
    has none pending or running; returns how many were started."""
    waiting: dict[int, list[int]] = defaultdict(list)
    for row in (Backup.select(Backup.id, Backup.destination)
                .where(Backup.state == "expired").order_by(Backup.id)):
        waiting[row.destination_id].append(row.id)
    if not waiting:
        return 0
    busy = {int((w.params or {}).get("destination_id", 0)) for w in
            Workflow.select(Workflow.params).where((Workflow.kind == "prune")
                                                   & Workflow.state.in_(ACTIVE_STATES))}
    started = 0
    for destination_id, backup_ids in sorted(waiting.items()):
        if destination_id in busy:
            continue
        name = Destination.select(Destination.name).where(
            Destination.id == destination_id).scalar()
        created, _ = create_workflows(
            db, "prune", [None], requested_by="retention", host=host,
            params={"destination_id": destination_id, "destination": name,
                    "backup_ids": backup_ids[:PRUNE_BATCH]})
        started += len(created)
    return started
