"""Workflows, tasks and backups as the admin sees them: the JSON of the REST API and the UI.

Plain functions over rows, no Flask: the API's routes, the CLI's tables and the future
pages all read the same shapes. Times are ISO 8601 UTC with a ``Z``; sizes are bytes;
speeds bytes per second; an ETA is in whole seconds (``None`` when it cannot be known).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import peewee as pw

from sbr_core.db.schema import (
    Backup,
    Destination,
    Instance,
    Node,
    Policy,
    PolicyInstance,
    Task,
    TaskLog,
    Workflow,
)

#: Workflow params that only the one who started it sees (in the answer to the request):
#: a mount's export name is the key to its disks.
PRIVATE_PARAMS = ("export",)
#: Log lines one call hands back at most; ``more`` says that another call (``after=``) has more.
LOG_PAGE = 1000


def iso(moment: dt.datetime | None) -> str | None:
    """A naive UTC column value as ``2024-05-01T02:00:00Z``."""
    return moment.isoformat() + "Z" if moment is not None else None


# --- backups ------------------------------------------------------------------------------


def _ref(row: Any, field: str) -> int | None:
    """The id a foreign key holds, without loading the row it points to."""
    value = getattr(row, f"{field}_id")
    return int(value) if value is not None else None


def backup_query() -> Any:
    """Backups with their instance, destination and policy joined (newest first)."""
    return (Backup.select(Backup, Instance.id, Instance.name, Destination.id,
                          Destination.name, Policy.id, Policy.name)
            .join(Instance, on=(Backup.instance == Instance.id))
            .switch(Backup).join(Destination, on=(Backup.destination == Destination.id))
            .switch(Backup).join(Policy, pw.JOIN.LEFT_OUTER, on=(Backup.policy == Policy.id))
            .order_by(Backup.id.desc()))


def backup_json(row: Backup) -> dict[str, Any]:
    """One catalog row (read through :func:`backup_query`, so no query per field)."""
    policy = row.policy if _ref(row, "policy") is not None else None
    return {
        "id": row.id, "instance": row.instance.name, "instance_id": row.instance.id,
        "destination": row.destination.name, "destination_id": row.destination.id,
        "kind": row.kind, "state": row.state,
        "started_at": iso(row.started_at), "finished_at": iso(row.finished_at),
        "bytes_logical": row.bytes_logical, "bytes_stored": row.bytes_stored,
        "repo_backup_id": row.repo_backup_id,
        "policy": policy.name if policy is not None else None,
        "workflow_id": _ref(row, "workflow"), "expires_at": iso(row.expires_at),
    }


def backup_policy(instance: Instance) -> tuple[Policy, Destination] | None:
    """The enabled backup policy with a destination that protects ``instance`` with the
    highest priority, the oldest winning a tie; with its destination. Members are the
    stored ones: rules are re-evaluated when a policy is saved and on every inventory
    sync, so an instance found a moment ago already has its policy."""
    policy: Policy | None = (
        Policy.select(Policy, Destination)
        .join(Destination, on=(Policy.destination == Destination.id))
        .switch(Policy)
        .join(PolicyInstance, on=(PolicyInstance.policy == Policy.id))
        .where((PolicyInstance.instance == instance.id) & (Policy.kind == "backup")
               & (Policy.enabled == True))  # noqa: E712
        .order_by(Policy.priority.desc(), Policy.id).first())
    if policy is None or policy.destination is None:
        return None
    return policy, policy.destination


# --- workflows and tasks ------------------------------------------------------------------


def progress_json(task: Task) -> dict[str, Any]:
    """Bytes done of total, the percentage, the speed and the time left of a task."""
    done, total, speed = task.progress_done, task.progress_total, task.speed_bps
    percent = round(min(done, total) * 100.0 / total, 1) if total > 0 else None
    eta = None
    if task.state == "running" and speed > 0 and total > done:
        eta = round((total - done) / speed)
    return {"done": done, "total": total, "percent": percent, "speed": speed,
            "eta_seconds": eta}


def task_json(task: Task, node_names: dict[int, str]) -> dict[str, Any]:
    """Every detail of one task."""
    return {
        "id": task.id, "step": task.step, "seq": task.seq, "state": task.state,
        "node": node_names.get(task.node_id) if task.node_id is not None else None,
        "attempts": task.attempts, "max_attempts": task.max_attempts,
        "progress": progress_json(task),
        "not_before": iso(task.not_before), "started_at": iso(task.started_at),
        "finished_at": iso(task.finished_at), "error": task.error,
        "result": _figures(task.result),
    }


def _figures(result: Any) -> dict[str, Any]:
    """The plain figures of a step's result (counts, sizes, ids): nested values such as a
    backup's platform state are the engine's business, not the admin's."""
    if not isinstance(result, dict):
        return {}
    return {str(k): v for k, v in result.items()
            if v is None or isinstance(v, bool | int | float | str)}


def current_task(tasks: list[Task]) -> Task | None:
    """The task a workflow is at: the running one, else the first not finished, else the
    last that ran (the one that failed or finished it)."""
    for task in tasks:
        if task.state == "running":
            return task
    for task in tasks:
        if task.state in ("queued", "waiting"):
            return task
    ran = [t for t in tasks if t.state != "cancelled" or t.started_at is not None]
    return ran[-1] if ran else (tasks[-1] if tasks else None)


def workflow_json(workflow: Workflow, tasks: list[Task], *, instance_names: dict[int, str],
                  node_names: dict[int, str], destination_names: dict[int, str]
                  ) -> dict[str, Any]:
    """A workflow as the task list shows it: its state, what it is at, a compact step list."""
    params = {key: "(hidden)" if key in PRIVATE_PARAMS else value
              for key, value in (workflow.params or {}).items()}
    current = current_task(tasks)
    at: dict[str, Any] | None = None
    if current is not None:
        at = {"task_id": current.id, "step": current.step, "state": current.state,
              "node": node_names.get(current.node_id) if current.node_id else None,
              "attempts": current.attempts, "progress": progress_json(current)}
    destination_id = params.get("destination_id")
    return {
        "id": workflow.id, "kind": workflow.kind, "state": workflow.state,
        "instance": (instance_names.get(workflow.instance_id)
                     if workflow.instance_id is not None else None),
        "instance_id": workflow.instance_id,
        "destination": (destination_names.get(destination_id)
                        if isinstance(destination_id, int) else None),
        "params": params, "priority": workflow.priority, "error": workflow.error,
        "requested_by": workflow.requested_by,
        "created_at": iso(workflow.created_at), "finished_at": iso(workflow.finished_at),
        "current": at,
        "steps": [{"step": t.step, "state": t.state} for t in tasks],
    }


def workflows_json(rows: Iterable[Workflow]) -> list[dict[str, Any]]:
    """Many workflows with their tasks, in a fixed number of queries."""
    flows = list(rows)
    if not flows:
        return []
    ids = [w.id for w in flows]
    tasks: dict[int, list[Task]] = {i: [] for i in ids}
    for task in Task.select().where(Task.workflow.in_(ids)).order_by(Task.seq, Task.id):
        tasks[task.workflow_id].append(task)
    names = _names(flows, [t for group in tasks.values() for t in group])
    return [workflow_json(w, tasks[w.id], **names) for w in flows]


def workflow_detail(workflow: Workflow, *, log_after: int = 0) -> dict[str, Any]:
    """A workflow with every task, its log lines after the log id ``log_after``
    (``log_more``: a further call with the last id gets the rest) and, for a backup that
    made one, its catalog row."""
    tasks = list(Task.select().where(Task.workflow == workflow.id).order_by(Task.seq, Task.id))
    names = _names([workflow], tasks)
    result = workflow_json(workflow, tasks, **names)
    result["tasks"] = [task_json(t, names["node_names"]) for t in tasks]
    steps = {t.id: t.step for t in tasks}
    lines = list(TaskLog.select()
                 .where(TaskLog.task.in_(list(steps) or [0]) & (TaskLog.id > log_after))
                 .order_by(TaskLog.id).limit(LOG_PAGE + 1))
    result["log"] = [{"id": line.id, "task_id": _ref(line, "task"),
                      "step": steps.get(_ref(line, "task") or 0, ""), "at": iso(line.at),
                      "level": line.level, "message": line.message}
                     for line in lines[:LOG_PAGE]]
    result["log_more"] = len(lines) > LOG_PAGE
    result["backup"] = None
    if workflow.kind == "backup":
        made = list(backup_query().where(Backup.workflow == workflow.id).limit(1))
        result["backup"] = backup_json(made[0]) if made else None
    return result


def _names(flows: list[Workflow], tasks: list[Task]) -> dict[str, dict[int, str]]:
    instance_ids = {w.instance_id for w in flows if w.instance_id is not None}
    node_ids = {t.node_id for t in tasks if t.node_id is not None}
    destination_ids = {d for w in flows
                       if isinstance(d := (w.params or {}).get("destination_id"), int)}
    return {
        "instance_names": _name_map(Instance, instance_ids),
        "node_names": _name_map(Node, node_ids),
        "destination_names": _name_map(Destination, destination_ids),
    }


def _name_map(model: Any, ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    return {row.id: row.name for row in
            model.select(model.id, model.name).where(model.id.in_(sorted(ids)))}
