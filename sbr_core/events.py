"""Events the core announces through the event hooks (notifiers and auditors listen)."""

from __future__ import annotations

import attrs


@attrs.frozen
class TaskEvent:
    """A task started or finished. ``kind`` is ``workflow.step`` (``backup.store``);
    ``state`` is ``running``, ``succeeded``, ``failed`` or ``cancelled``; ``error`` says why
    when it failed."""

    task_id: int
    workflow_id: int
    kind: str
    state: str
    instance_name: str = ""
    node_name: str = ""
    error: str = ""


@attrs.frozen
class BackupEvent:
    """A backup of an instance completed (``backup_id`` set) or failed (``error`` set)."""

    instance_name: str
    destination_name: str
    workflow_id: int
    backup_id: str = ""
    full: bool = False
    bytes_read: int = 0
    bytes_stored: int = 0
    duration_s: float = 0.0
    error: str = ""


@attrs.frozen
class NodeEvent:
    """A node stopped sending heartbeats and its lease ran out."""

    node_name: str
    last_seen: float
    tasks_requeued: int = 0
