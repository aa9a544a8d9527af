"""Workflows as rows: creating them with their tasks, and every state change after a claim.

The server owns these transitions; nodes ask for them over the node API. Each runs in one
transaction, fenced by the task's attempt number (see :mod:`.claims`), so a late report
from a node that lost its lease changes nothing.

States. Workflow: ``pending`` → ``running`` → ``succeeded`` | ``failed`` | ``cancelled``, with
``cancelling`` while a running task winds down. Task: ``waiting`` → ``queued`` → ``running``
→ ``succeeded`` | ``failed`` | ``cancelled``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import peewee as pw

from sbr_core.db.retry import retry_on_lock_conflict
from sbr_core.db.schema import Backup, Instance, Node, Policy, Task, TaskLog, Workflow, utcnow
from sbr_core.engine import expiry
from sbr_core.engine.claims import DEFAULT_TIMING, Claim, Timing
from sbr_core.errors import ConflictError, LeaseLost, NotFoundError, UsageError
from sbr_core.plugins import PluginHost

#: The core's steps of each workflow kind, in order (DESIGN.md, "Workflows and tasks").
CORE_STEPS: Mapping[str, tuple[str, ...]] = {
    "backup": ("export", "store"),
    "restore": ("restore",),
    "restore-import": ("restore", "import"),
    "mount": ("mount",),  # on-demand reads: nothing is restored first
    "snapshot": ("snapshot",),
    "prune": ("prune",),  # retention: forget expired backups, then collect garbage
}
#: Kinds of which an instance may have only one unfinished workflow at a time.
EXCLUSIVE_KINDS = frozenset({"backup", "snapshot"})
ACTIVE_STATES = ("pending", "running", "cancelling")
FINISHED_STATES = ("succeeded", "failed", "cancelled")
MAX_LOG_LINE = 4000
#: Someone is waiting for a restore: it goes before scheduled backups (policies 0-100,
#: 50 by default).
RESTORE_PRIORITY = 90


@attrs.frozen
class Finished:
    """What :func:`finish_task` did: the next task the node should run now (pinned to it),
    and the workflow's state when it ended (``None`` while it goes on); with what the
    events need to say of the finished task, so announcing it reads nothing again."""

    next: Claim | None
    workflow_state: str | None
    workflow_id: int = 0
    kind: str = ""  # "workflow.step", as TaskEvent names it
    instance_id: int | None = None
    error: str = ""
    instance_name: str = ""
    #: Once the workflow ended: its row as it now stands, and the backup it recorded.
    workflow: Workflow | None = None
    backup: Backup | None = None


def plan_steps(kind: str, host: PluginHost | None) -> list[tuple[str, bool]]:
    """The steps of a ``kind`` workflow with the plugin steps inserted beside their anchors:
    ``(step name, always_run)`` pairs."""
    if kind not in CORE_STEPS:
        known = ", ".join(CORE_STEPS)
        raise UsageError(f"kind: unknown workflow kind {kind!r} (known: {known})")
    steps: list[tuple[str, bool]] = [(name, False) for name in CORE_STEPS[kind]]
    if host is None:
        return steps
    for name, step in sorted(host.workflow_steps().items()):
        if kind not in step.workflows:
            continue
        names = [s for s, _ in steps]
        if step.anchor not in names:
            continue
        at = names.index(step.anchor) + (1 if step.position == "after" else 0)
        steps.insert(at, (name, bool(step.always_run)))
    return steps


def create_workflow(db: pw.Database, kind: str, *, instance: Instance | None = None,
                    policy: Policy | None = None, requested_by: str = "",
                    params: Mapping[str, Any] | None = None, priority: int | None = None,
                    host: PluginHost | None = None, max_attempts: int = 3) -> Workflow:
    """Create a workflow and all its tasks in one transaction; the first task is queued.

    A backup or snapshot of an instance that already has one pending or running is refused
    (ConflictError), under a lock, so two schedulers or two clicks never queue it twice.
    """
    created, busy = create_workflows(db, kind, [instance], policy=policy,
                                     requested_by=requested_by, params=params,
                                     priority=priority, host=host, max_attempts=max_attempts)
    if busy:
        assert instance is not None
        raise ConflictError(f"instance {instance.name!r} already has a {kind} "
                            f"pending or running (workflow {busy[0][1]})")
    return created[0]


@retry_on_lock_conflict
def create_workflows(db: pw.Database, kind: str, instances: Sequence[Instance | None], *,
                     policy: Policy | None = None, requested_by: str = "",
                     params: Mapping[str, Any] | None = None, priority: int | None = None,
                     host: PluginHost | None = None, max_attempts: int = 3
                     ) -> tuple[list[Workflow], list[tuple[Instance, int]]]:
    """One workflow per instance, all in one transaction (a scheduler firing for a
    thousand instances commits once). Instances that already have a ``kind`` workflow
    pending or running are skipped, under a lock; returns the workflows created and the
    skipped instances with the id of the workflow that holds each."""
    steps = plan_steps(kind, host)
    if priority is None:
        priority = policy.priority if policy is not None else 50
    if not 0 <= priority <= 100:
        raise UsageError(f"priority: must be from 0 to 100, not {priority}")
    created: list[Workflow] = []
    busy: list[tuple[Instance, int]] = []
    with db.atomic():
        holders: dict[int, int] = {}
        ids = [i.id for i in instances if i is not None]
        if ids and kind in EXCLUSIVE_KINDS:
            _lock_instances(db, ids)
            for chunk in range(0, len(ids), 500):
                for row in (Workflow.select(Workflow.id, Workflow.instance)
                            .where(Workflow.instance.in_(ids[chunk:chunk + 500])
                                   & (Workflow.kind == kind)
                                   & Workflow.state.in_(ACTIVE_STATES))):
                    holders[int(row.instance_id or 0)] = row.id
        tasks: list[dict[str, Any]] = []
        for instance in instances:
            if instance is not None and instance.id in holders:
                busy.append((instance, holders[instance.id]))
                continue
            workflow = Workflow.create(
                kind=kind, state="pending", instance=instance, policy=policy,
                requested_by=requested_by, params=dict(params or {}), priority=priority,
                provider_name=instance.connection.name if instance is not None else "",
                location=instance.location if instance is not None else "")
            if instance is not None:
                holders[instance.id] = workflow.id  # the same instance twice in one call
            created.append(workflow)
            tasks.extend(
                {"workflow": workflow.id, "step": name, "seq": seq,
                 "state": "queued" if seq == 0 else "waiting", "max_attempts": max_attempts,
                 "priority": priority,
                 "params": {"always_run": always_run} if always_run else {}}
                for seq, (name, always_run) in enumerate(steps))
        for chunk in range(0, len(tasks), 500):
            Task.insert_many(tasks[chunk:chunk + 500]).execute()
    return created, busy


def _lock_instances(db: pw.Database, instance_ids: Sequence[int]) -> None:
    """Serialise workflow creation per instance (SQLite: BEGIN IMMEDIATE already did)."""
    if not isinstance(db, pw.SqliteDatabase):
        for chunk in range(0, len(instance_ids), 500):
            list(Instance.select(Instance.id)
                 .where(Instance.id.in_(sorted(instance_ids[chunk:chunk + 500])))
                 .for_update())


def held_task(task_id: int, node: Node, attempt: int) -> Task:
    """The running task ``node`` holds with ``attempt``, read with its workflow and the
    workflow's instance name (one query); LeaseLost otherwise."""
    # Only the columns a heartbeat or finish reads: peewee renders each selected column on
    # every call, which was most of a node call's server time.
    task: Task | None = (Task.select(Task.id, Task.workflow, Task.step, Task.state, Task.node,
                                     Task.attempts, Workflow.id, Workflow.kind, Workflow.state,
                                     Workflow.instance, Workflow.policy, Workflow.params,
                                     Workflow.error, Workflow.created_at, Instance.id,
                                     Instance.name)
                         .join(Workflow)
                         .join(Instance, pw.JOIN.LEFT_OUTER)
                         .where(Task.id == task_id).first())
    if task is None:
        raise NotFoundError(f"task: no task {task_id}")
    if task.node_id != node.id or task.attempts != attempt or task.state != "running":
        raise LeaseLost(f"task {task_id} is no longer held by node {node.name!r} with "
                        f"attempt {attempt} (it is {task.state})")
    return task


@retry_on_lock_conflict
def heartbeat(db: pw.Database, task_id: int, node: Node, attempt: int, *,
              done: int | None = None, total: int | None = None, speed: int | None = None,
              log: Sequence[tuple[str, str]] = (), now: dt.datetime | None = None,
              timing: Timing = DEFAULT_TIMING) -> bool:
    """Renew a task's lease, record its progress and log lines; True when its workflow is
    being cancelled (the node stops the step)."""
    now = now or utcnow()
    with db.atomic():
        task = held_task(task_id, node, attempt)
        changes: dict[Any, Any] = {Task.lease_expires_at: now + timing.lease}
        if done is not None:
            changes[Task.progress_done] = max(0, int(done))
        if total is not None:
            changes[Task.progress_total] = max(0, int(total))
        if speed is not None:
            changes[Task.speed_bps] = max(0, int(speed))
        Task.update(changes).where(Task.id == task.id).execute()
        _append_log(task.id, log, now)
        Node.update(last_seen_at=now, state="online").where(Node.id == node.id).execute()
    return bool(task.workflow.state == "cancelling")


def _append_log(task_id: int, lines: Sequence[tuple[str, str]], now: dt.datetime) -> None:
    rows = [{"task": task_id, "at": now, "level": str(level)[:8],
             "message": str(message)[:MAX_LOG_LINE]} for level, message in lines]
    if rows:
        TaskLog.insert_many(rows).execute()


@retry_on_lock_conflict
def finish_task(db: pw.Database, task_id: int, node: Node, attempt: int, *, state: str,
                result: Mapping[str, Any] | None = None, error: str = "",
                log: Sequence[tuple[str, str]] = (),
                now: dt.datetime | None = None, timing: Timing = DEFAULT_TIMING) -> Finished:
    """Record how a task ended and move its workflow on, in one transaction.

    ``succeeded``: the next task is started on the same node and returned. A backup's
    ``store`` result becomes its catalog row here, so the backup is visible exactly when the
    task counts as done. ``failed`` / ``cancelled``: the remaining tasks are cancelled,
    except ``always_run`` ones (a thaw, a clean-up), which still run.
    """
    if state not in FINISHED_STATES:
        raise UsageError(f"state: must be one of {', '.join(FINISHED_STATES)}, not {state!r}")
    now = now or utcnow()
    with db.atomic():
        task = held_task(task_id, node, attempt)
        workflow = task.workflow
        instance = workflow.instance if workflow.instance_id is not None else None
        changes: dict[Any, Any] = {Task.state: state, Task.result: dict(result or {}),
                                   Task.error: error[:MAX_LOG_LINE], Task.finished_at: now,
                                   Task.lease_expires_at: None}
        if state == "succeeded":  # a task shorter than a heartbeat never reported its end
            changes[Task.progress_done] = pw.Case(
                None, [(Task.progress_total > Task.progress_done, Task.progress_total)],
                Task.progress_done)
        Task.update(changes).where(Task.id == task.id).execute()
        _append_log(task.id, log, now)
        backup = None
        if state == "succeeded" and workflow.kind == "backup" and task.step == "store":
            backup = _record_backup(workflow, dict(result or {}), now)
            if workflow.policy is not None and workflow.instance_id is not None:
                # retention runs after each backup
                expiry.expire_backups(db, policies=[workflow.policy],
                                      instance_ids=[workflow.instance_id], now=now)
        if state == "succeeded" and workflow.kind == "prune" and task.step == "prune":
            expiry.forgotten(workflow, dict(result or {}))
        if state != "succeeded" and not workflow.error:
            workflow.error = error or f"{task.step} was {state}"
            Workflow.update(error=workflow.error).where(Workflow.id == workflow.id).execute()
        told: dict[str, Any] = {"workflow_id": workflow.id,
                                "kind": f"{workflow.kind}.{task.step}",
                                "instance_id": workflow.instance_id, "error": error[:MAX_LOG_LINE],
                                "instance_name": instance.name if instance is not None else ""}
        failing = bool(workflow.error) or workflow.state == "cancelling"
        later = list(Task.select(Task.id, Task.step, Task.attempts, Task.params)
                     .where((Task.workflow == workflow.id)
                                         & (Task.state == "waiting")).order_by(Task.seq))
        for following in later:
            if failing and not following.params.get("always_run"):
                Task.update(state="cancelled", finished_at=now).where(
                    Task.id == following.id).execute()
                continue
            next_attempt = following.attempts + 1
            Task.update(state="running", node=node, attempts=next_attempt, started_at=now,
                        lease_expires_at=now + timing.lease).where(
                Task.id == following.id).execute()
            return Finished(Claim(following.id, next_attempt, workflow.id, following.step),
                            None, **told)
        if workflow.state == "cancelling" or state == "cancelled":
            final = "cancelled"
        else:
            final = "failed" if workflow.error else "succeeded"
        Workflow.update(state=final, finished_at=now).where(Workflow.id == workflow.id).execute()
        workflow.state, workflow.finished_at = final, now
        return Finished(None, final, **told, workflow=workflow, backup=backup)


def _record_backup(workflow: Workflow, result: dict[str, Any], now: dt.datetime) -> Backup:
    try:
        backup_id = str(result["backup_id"])
        destination_id = int(workflow.params["destination_id"])
    except (KeyError, TypeError, ValueError):
        raise UsageError("result: a store result needs backup_id (and the workflow a "
                         "destination)") from None
    return Backup.create(
        instance=workflow.instance_id, destination=destination_id, policy=workflow.policy_id,
        workflow=workflow.id, repo_backup_id=backup_id,
        kind="full" if result.get("full") else "incremental",
        started_at=workflow.created_at, finished_at=now,
        bytes_logical=int(result.get("bytes_logical", 0)),
        bytes_stored=int(result.get("bytes_stored", 0)),
        platform_state=dict(result.get("platform_state") or {}))


@retry_on_lock_conflict
def cancel_workflow(db: pw.Database, workflow_id: int, *,
                    now: dt.datetime | None = None) -> str:
    """Ask a workflow to stop: tasks not started are cancelled now; a running one learns it
    at its next heartbeat and unwinds. Returns the workflow's new state."""
    now = now or utcnow()
    with db.atomic():
        workflow: Workflow | None = Workflow.get_or_none(Workflow.id == workflow_id)
        if workflow is None:
            raise NotFoundError(f"workflow: no workflow {workflow_id}")
        if workflow.state in FINISHED_STATES:
            raise ConflictError(f"workflow {workflow_id} already {workflow.state}")
        Task.update(state="cancelled", finished_at=now).where(
            (Task.workflow == workflow_id) & Task.state.in_(("waiting", "queued"))).execute()
        running = Task.select().where((Task.workflow == workflow_id)
                                      & (Task.state == "running")).exists()
        state = "cancelling" if running else "cancelled"
        Workflow.update(state=state, error=workflow.error or "cancelled by request",
                        finished_at=None if running else now).where(
            Workflow.id == workflow_id).execute()
    return state
