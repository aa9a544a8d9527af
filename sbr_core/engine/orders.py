"""The work order a node receives with a claim: everything it needs to run the workflow.

Settings travel with their secrets opened (the node builds the providers itself, with its
own plugins), so the node API must only ever be served over TLS or loopback. The
repository passphrase of each destination is made on first use and kept sealed.
"""

from __future__ import annotations

import secrets
from typing import Any

import peewee as pw

from sbr_core.db.schema import Backup, Destination, Instance, ProviderConnection, Task, Workflow
from sbr_core.engine.claims import Claim
from sbr_core.engine.expiry import prune_order
from sbr_core.secretbox import SecretBox


def repository_passphrase(destination: Destination, box: SecretBox) -> str:
    """The passphrase of the repository on ``destination``; made (and sealed) on first use."""
    if destination.repository_secret:
        return str(box.open(destination.repository_secret)["passphrase"])
    passphrase = secrets.token_urlsafe(32)
    sealed = box.seal({"passphrase": passphrase})
    changed = (Destination.update(repository_secret=sealed)
               .where((Destination.id == destination.id) & (Destination.repository_secret == ""))
               .execute())
    if not changed:  # another request made it first: use theirs
        destination = Destination.get_by_id(destination.id)
        return str(box.open(destination.repository_secret)["passphrase"])
    return passphrase


def instance_json(row: Instance) -> dict[str, Any]:
    return {"id": row.id, "external_id": row.external_id, "name": row.name, "kind": row.kind,
            "state": row.state, "location": row.location, "tags": list(row.tags or []),
            "attributes": dict(row.attributes or {})}


def _connection_json(row: ProviderConnection, box: SecretBox) -> dict[str, Any]:
    return {"name": row.name, "kind": row.kind, "plugin": row.plugin,
            "settings": {**row.settings, **box.open(row.secrets)}}


def _destination_json(row: Destination, box: SecretBox) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "plugin": row.plugin,
            "settings": {**row.settings, **box.open(row.secrets)},
            "passphrase": repository_passphrase(row, box)}


def _other_chains(instance: Instance, destination_id: Any) -> list[dict[str, Any]]:
    """The newest complete backup of ``instance`` on each other destination: the next
    backup of those chains starts from its platform state (a checkpoint), which the
    plugin must therefore keep."""
    newest: Any = (Backup.select(Backup.destination, pw.fn.MAX(Backup.id).alias("last"))
              .where((Backup.instance == instance.id) & (Backup.state == "complete")
                     & (Backup.destination != destination_id))
              .group_by(Backup.destination))
    ids = [last for _, last in newest.tuples()]
    return [{"backup_id": row.repo_backup_id, "platform_state": dict(row.platform_state or {})}
            for row in Backup.select().where(Backup.id.in_(ids))] if ids else []


def work_order(claim: Claim, box: SecretBox) -> dict[str, Any]:
    """The JSON a node gets for a claimed task."""
    workflow = (Workflow.select(Workflow.id, Workflow.kind, Workflow.params, Workflow.instance,
                                Instance.id, Instance.external_id, Instance.name, Instance.kind,
                                Instance.state, Instance.location, Instance.tags,
                                Instance.attributes, Instance.connection,
                                ProviderConnection.id, ProviderConnection.name,
                                ProviderConnection.kind, ProviderConnection.plugin,
                                ProviderConnection.settings, ProviderConnection.secrets)
                .join(Instance, pw.JOIN.LEFT_OUTER)
                .join(ProviderConnection, pw.JOIN.LEFT_OUTER)
                .where(Workflow.id == claim.workflow_id).get())
    params = dict(workflow.params or {})
    steps = [{"id": t.id, "step": t.step, "seq": t.seq,
              "always_run": bool((t.params or {}).get("always_run"))}
             for t in Task.select(Task.id, Task.step, Task.seq, Task.params)
             .where(Task.workflow == workflow.id).order_by(Task.seq)]
    order: dict[str, Any] = {
        "task": {"id": claim.task_id, "attempt": claim.attempt, "step": claim.step},
        "workflow": {"id": workflow.id, "kind": workflow.kind, "params": params,
                     "steps": steps},
        "instance": None, "provider": None, "destination": None, "parent": None,
        "backup": None,
    }
    instance: Instance | None = workflow.instance
    if instance is not None:
        order["instance"] = instance_json(instance)
        order["provider"] = _connection_json(instance.connection, box)
    destination_id = params.get("destination_id")
    backup_ref = params.get("backup_id")
    if destination_id is not None and backup_ref is None:
        order["destination"] = _destination_json(Destination.get_by_id(destination_id), box)
    if workflow.kind == "backup" and instance is not None and not params.get("full"):
        parent = (Backup.select(Backup.repo_backup_id, Backup.platform_state)
                  .where((Backup.instance == instance.id)
                         & (Backup.destination == destination_id)
                         & (Backup.state == "complete"))
                  .order_by(Backup.finished_at.desc(), Backup.id.desc()).first())
        if parent is not None:
            order["parent"] = {"backup_id": parent.repo_backup_id,
                               "platform_state": dict(parent.platform_state or {})}
        order["retained"] = _other_chains(instance, destination_id)
    if workflow.kind == "prune":
        order["prune"] = prune_order(params)
    if backup_ref is not None:  # a restore reads where that backup is
        backup = Backup.get_by_id(backup_ref)
        order["backup"] = {"id": backup.id, "repo_backup_id": backup.repo_backup_id,
                           "kind": backup.kind}
        if order["provider"] is None:  # a restore runs anywhere; its plugin writes images
            connection = ProviderConnection.get_or_none(
                ProviderConnection.id == Instance.select(Instance.connection).where(
                    Instance.id == backup.instance_id))
            if connection is not None:
                order["provider"] = _connection_json(connection, box)
        order["destination"] = _destination_json(backup.destination, box)
    return order
