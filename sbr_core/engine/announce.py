"""Turning engine transitions into the events plugins hear (notifiers, auditors).

Events are announced after the transaction that made them true has committed; a listener
that raises is the plugin host's business (it logs and carries on), never the task's.
"""

from __future__ import annotations

import time
from typing import Any

from sbr_core.db.schema import Backup, Destination, Instance, Task, Workflow
from sbr_core.engine.claims import Claim, Reaped
from sbr_core.engine.workflows import Finished
from sbr_core.events import BackupEvent, NodeEvent, TaskEvent
from sbr_core.plugins import PluginHost


class Announcer:
    """Emits TaskEvent, BackupEvent and NodeEvent through ``host``."""

    def __init__(self, host: PluginHost) -> None:
        self.host = host

    def task_started(self, claim: Claim, node_name: str, *, workflow_kind: str,
                     instance_name: str) -> None:
        """A node took a task (claimed it, or was handed it when the one before ended)."""
        self.host.emit(TaskEvent(task_id=claim.task_id, workflow_id=claim.workflow_id,
                                 kind=f"{workflow_kind}.{claim.step}", state="running",
                                 instance_name=instance_name, node_name=node_name))

    def task_finished(self, task_id: int, state: str, node_name: str,
                      finished: Finished) -> None:
        self.host.emit(TaskEvent(task_id=task_id, workflow_id=finished.workflow_id,
                                 kind=finished.kind, state=state,
                                 instance_name=finished.instance_name, node_name=node_name,
                                 error=finished.error))
        if finished.workflow is not None:
            self._workflow_ended(finished.workflow, finished.instance_name, finished.backup)

    def workflow_ended(self, workflow_id: int) -> None:
        """Tell how a backup workflow ended, reading it afresh (a cancel, a reaped task)."""
        workflow = Workflow.get_by_id(workflow_id)
        backup = Backup.get_or_none(Backup.workflow == workflow.id) \
            if workflow.state == "succeeded" else None
        self._workflow_ended(workflow, _instance_name(workflow), backup)

    def _workflow_ended(self, workflow: Workflow, instance_name: str,
                        backup: Backup | None) -> None:
        if workflow.kind != "backup" or workflow.instance_id is None:
            return
        destination_name = Destination.select(Destination.name).where(
            Destination.id == (workflow.params or {}).get("destination_id")).scalar()
        base: dict[str, Any] = {
            "instance_name": instance_name, "destination_name": destination_name or "",
            "workflow_id": workflow.id}
        if workflow.state == "succeeded":
            if backup is not None:
                seconds = (backup.finished_at - workflow.created_at).total_seconds() \
                    if backup.finished_at else 0.0
                self.host.emit(BackupEvent(
                    **base, backup_id=backup.repo_backup_id, full=backup.kind == "full",
                    bytes_read=backup.bytes_logical, bytes_stored=backup.bytes_stored,
                    duration_s=seconds))
        elif workflow.state in ("failed", "cancelled"):
            self.host.emit(BackupEvent(**base, error=workflow.error or workflow.state))

    def reaped(self, reaped: list[Reaped]) -> None:
        by_node: dict[str, int] = {}
        for item in reaped:
            if item.node_name:
                by_node[item.node_name] = by_node.get(item.node_name, 0) + 1
        for name, count in sorted(by_node.items()):
            self.host.emit(NodeEvent(node_name=name, last_seen=time.time(),
                                     tasks_requeued=count))
        for item in reaped:
            if not item.requeued:
                self.workflow_ended(Task.get_by_id(item.task_id).workflow_id)


def _instance_name(workflow: Workflow) -> str:
    if workflow.instance_id is None:
        return ""
    instance = Instance.get_or_none(Instance.id == workflow.instance_id)
    return instance.name if instance is not None else ""
