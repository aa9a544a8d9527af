"""Retention in the catalog: which backups a policy no longer keeps, and the prune
workflows that delete them from their repositories.

Expiry happens in two steps so that nothing is ever half deleted:

1. :func:`expire_backups` marks the backups no retention rule keeps ``expired`` in the
   catalog. From then on they are not listed, not restored, and never an incremental's
   parent. It runs in the transaction that records each new backup (retention "after each
   backup") and on every engine pass, for policies whose rules or clock moved on.
2. The scheduler's ``prune_pass`` gives each destination holding expired backups one ``prune``
   workflow. A node forgets their manifests and collects the garbage; when that task
   succeeds, the same transaction deletes the catalog rows (:func:`forgotten`).

A policy's retention applies to the backups that policy made, per instance; backups taken
on demand are kept until an admin deletes them. Periods are counted in the timezone of the
policy's first schedule.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import peewee as pw

from sbr_core.db.schema import Backup, Policy, Schedule, Workflow, utcnow
from sbr_core.errors import ConfigError, ConflictError
from sbr_core.repository.retention import parse_retention, select_kept

log = logging.getLogger(__name__)

def _zone(policy: Policy) -> dt.tzinfo:
    first = (Schedule.select(Schedule.timezone).where(Schedule.policy == policy.id)
             .order_by(Schedule.id).first())
    try:
        return ZoneInfo(first.timezone) if first is not None else dt.UTC
    except (ZoneInfoNotFoundError, ValueError):
        return dt.UTC


def expire_backups(db: pw.Database, *, policies: Iterable[Policy] | None = None,
                   instance_ids: Sequence[int] | None = None,
                   now: dt.datetime | None = None) -> int:
    """Mark ``expired`` the complete backups that no rule of their policy keeps; returns
    how many. Call inside or outside a transaction."""
    now_utc = (now or utcnow()).replace(tzinfo=dt.UTC)
    selected = list(policies) if policies is not None else list(
        Policy.select().where(Policy.kind == "backup"))
    expired = 0
    with db.atomic():
        for policy in selected:
            try:
                rules = parse_retention(policy.retention or None)
            except ConfigError as exc:  # refused at save time; never delete on a guess
                log.error("policy %r: retention cannot be read (%s); nothing expires",
                          policy.name, exc)
                continue
            if not rules.any():
                continue  # no rules keep everything
            query = (Backup.select(Backup.id, Backup.instance, Backup.finished_at,
                                   Backup.started_at)
                     .where((Backup.policy == policy.id) & (Backup.state == "complete")))
            if instance_ids is not None:
                query = query.where(Backup.instance.in_(list(instance_ids)))
            series: dict[int, list[tuple[str, dt.datetime]]] = defaultdict(list)
            for row in query:
                when = (row.finished_at or row.started_at).replace(tzinfo=dt.UTC)
                series[row.instance_id].append((str(row.id), when))
            zone = _zone(policy)
            doomed: list[int] = []
            for backups in series.values():
                kept = select_kept(backups, rules, now=now_utc, tz=zone)
                doomed.extend(int(backup_id) for backup_id, _ in backups
                              if backup_id not in kept)
            for chunk in range(0, len(doomed), 500):
                expired += (Backup.update(state="expired", expires_at=now_utc.replace(
                    tzinfo=None)).where(Backup.id.in_(doomed[chunk:chunk + 500])
                                        & (Backup.state == "complete")).execute())
            if doomed:
                log.info("policy %r: %d backup(s) expired by retention", policy.name,
                         len(doomed))
    return expired


def expire_by_hand(db: pw.Database, backup: Backup, *, now: dt.datetime | None = None
                   ) -> None:
    """An admin deletes ``backup``: it expires now, whatever its policy, and the next
    prune removes it from its repository and the catalog. Only a complete backup can
    go; ConflictError otherwise. Every other backup stays restorable (each manifest is a
    whole picture); the next incremental of the instance starts from the newest backup
    left."""
    with db.atomic():
        changed = (Backup.update(state="expired", expires_at=now or utcnow())
                   .where((Backup.id == backup.id) & (Backup.state == "complete")).execute())
    if not changed:
        state = Backup.get_by_id(backup.id).state
        raise ConflictError(f"backup {backup.id} is {state}: only a complete backup can be "
                            "deleted" + (" (it is being deleted already)"
                                         if state == "expired" else ""))
    log.info("backup %d expired by hand", backup.id)


def prune_order(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What a prune task's work order lists: each expired backup's catalog and
    repository ids."""
    ids = [int(i) for i in params.get("backup_ids") or ()]
    return [{"id": row.id, "repo_backup_id": row.repo_backup_id}
            for row in Backup.select(Backup.id, Backup.repo_backup_id)
            .where(Backup.id.in_(ids) & (Backup.state == "expired")).order_by(Backup.id)]


def forgotten(workflow: Workflow, result: Mapping[str, Any]) -> int:
    """A prune task succeeded: delete the catalog rows of the backups it forgot (run in
    the transaction that records the task's success)."""
    ids = [int(i) for i in result.get("forgotten") or ()]
    allowed = {int(i) for i in (workflow.params or {}).get("backup_ids") or ()}
    ids = [i for i in ids if i in allowed]
    if not ids:
        return 0
    deleted: int = Backup.delete().where(Backup.id.in_(ids)
                                         & (Backup.state == "expired")).execute()
    return deleted
