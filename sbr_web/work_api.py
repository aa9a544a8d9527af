"""The admin REST API for work: backups, restores and the task list (``/api/v1``).

Reads need ``view``; starting a backup or a restore and cancelling need ``operate``;
deleting a backup needs ``configure``. A task
here is a workflow (a backup's export and store together): ``/tasks/ID`` takes a workflow
id and shows its steps. Every bad request is a 400 whose message names the field; an
unknown id in the path is a 404; a clash with the current state is a 409.
"""

from __future__ import annotations

import ipaddress
import posixpath
import secrets
from collections.abc import Iterable
from typing import Any

import flask_login
from flask import Blueprint, current_app, jsonify, request

from sbr_core import audit
from sbr_core.db.schema import Backup, Destination, Instance, Policy, Workflow
from sbr_core.engine import expiry, mount, views, workflows
from sbr_core.errors import ConfigError, ConflictError, NotFoundError
from sbr_core.providers.items import RESTORE_CONFLICTS
from sbr_web.auth import require_permission

blueprint = Blueprint("work_api", __name__, url_prefix="/api/v1")

MAX_LIMIT = 1000
#: The largest id either database stores (a signed 64-bit integer).
MAX_ID = 2**63 - 1
_TRUE = ("1", "true", "yes")
_FALSE = ("0", "false", "no")
TASK_STATES: dict[str, tuple[str, ...]] = {
    "active": workflows.ACTIVE_STATES, "finished": workflows.FINISHED_STATES,
    "all": workflows.ACTIVE_STATES + workflows.FINISHED_STATES,
}


def _engine() -> dict[str, Any]:
    engine: dict[str, Any] = current_app.extensions["sbr"]
    return engine


def _actor() -> str:
    return str(flask_login.current_user.username)


# --- what the request says ----------------------------------------------------------------


def _body(subject: str, allowed: Iterable[str]) -> dict[str, Any]:
    """The JSON object sent; ConfigError names a body that is not one, and unknown fields."""
    if not request.get_data():
        return {}
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        raise ConfigError(subject, {"body": "must be a JSON object"})
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise ConfigError(subject, {str(name): "unknown field" for name in unknown})
    return body


def _args(subject: str, allowed: Iterable[str]) -> dict[str, str]:
    """The query parameters, each once; unknown ones are refused by name."""
    problems = {name: "unknown parameter" for name in sorted(set(request.args) - set(allowed))}
    problems.update({name: "given more than once" for name in request.args
                     if len(request.args.getlist(name)) > 1})
    if problems:
        raise ConfigError(subject, problems)
    return {name: request.args[name] for name in request.args}


def _whole(value: str, name: str, *, low: int = 0, high: int | None = None) -> int:
    """A whole number from a URL (path or query); 400 naming ``name`` otherwise."""
    text = value.strip()
    if not text.isascii() or not text.isdigit():
        raise ConfigError("invalid request", {name: f"must be a whole number, not {value!r}"})
    number = int(text) if len(text) <= 20 else MAX_ID + 1
    high = MAX_ID if high is None else high
    if number < low or number > high:
        shown = text if len(text) <= 20 else text[:20] + "…"
        raise ConfigError("invalid request", {name: f"must be from {low} to {high}, not {shown}"})
    return number


def _flag(args: dict[str, str], name: str) -> bool:
    value = args.get(name, "0").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError("invalid request", {name: f"must be 1 or 0, not {args[name]!r}"})


def _paging(args: dict[str, str], default: int = 100) -> tuple[int, int | None]:
    limit = _whole(args["limit"], "limit", low=1, high=MAX_LIMIT) if "limit" in args \
        else default
    before = _whole(args["before"], "before", low=1) if "before" in args else None
    return limit, before


def _instances(ref: object, field: str = "instance") -> list[Instance]:
    """The instances ``ref`` names: a JSON number is an id; text is a name, or an id when
    no instance has that name. 400 naming ``field`` when it names none."""
    found: list[Instance] = []
    if isinstance(ref, int) and not isinstance(ref, bool):
        if not 1 <= ref <= MAX_ID:
            raise ConfigError("invalid request", {field: f"no instance {ref}"})
        found = list(Instance.select().where(Instance.id == ref))
    elif isinstance(ref, str) and ref.strip():
        found = list(Instance.select().where(Instance.name == ref).order_by(Instance.id))
        text = ref.strip()
        if not found and text.isascii() and text.isdigit() and len(text) <= 18:
            found = list(Instance.select().where(Instance.id == int(text)))
    else:
        raise ConfigError("invalid request", {field: "must be an instance id or name"})
    if not found:
        raise ConfigError("invalid request", {field: f"no instance {ref!r}"})
    return found


def _one_instance(ref: object) -> Instance:
    found = _instances(ref)
    if len(found) > 1:
        ids = ", ".join(str(i.id) for i in found)
        raise ConfigError("invalid request", {
            "instance": f"{ref!r} names {len(found)} instances (ids {ids}); give the id"})
    return found[0]


def _destination(name: object) -> Destination:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("invalid request", {"destination": "must be a destination name"})
    row: Destination | None = Destination.get_or_none(Destination.name == name)
    if row is None:
        raise ConfigError("invalid request", {"destination": f"no destination {name!r}"})
    return row


def _backup(raw_id: str) -> Backup:
    backup_id = _whole(raw_id, "id", low=1)
    rows = list(views.backup_query().where(Backup.id == backup_id))
    if not rows:
        raise NotFoundError(f"backup: no backup {backup_id}")
    row: Backup = rows[0]
    return row


def _workflow(raw_id: str) -> Workflow:
    workflow_id = _whole(raw_id, "id", low=1)
    row: Workflow | None = Workflow.get_or_none(Workflow.id == workflow_id)
    if row is None:
        raise NotFoundError(f"task: no task {workflow_id}")
    return row


def _created(workflow: Workflow, **extra: Any) -> Any:
    response = jsonify({**views.workflow_detail(workflow), **extra})
    response.status_code = 201
    response.headers["Location"] = f"/api/v1/tasks/{workflow.id}"
    return response


# --- backups ------------------------------------------------------------------------------


@blueprint.route("/backups", methods=["POST"])
@require_permission("operate")
def start_backup() -> Any:
    """Start a backup now: ``{instance, destination?, full?}``. Without a destination, the
    one of the instance's backup policy with the highest priority."""
    body = _body("backup request", ("instance", "destination", "full"))
    if "instance" not in body:
        raise ConfigError("backup request", {"instance": "required (an instance id or name)"})
    full = body.get("full", False)
    if not isinstance(full, bool):
        raise ConfigError("backup request", {"full": "must be true or false"})
    instance = _one_instance(body["instance"])
    chosen = views.backup_policy(instance)
    policy: Policy | None = chosen[0] if chosen is not None else None
    if body.get("destination") is not None:
        destination = _destination(body["destination"])
        if chosen is not None and chosen[1].id != destination.id:
            policy = None  # a backup outside the policy: its retention does not apply
    elif chosen is None:
        raise ConfigError("backup request", {
            "destination": f"required: instance {instance.name!r} has no enabled backup "
                           "policy with a destination"})
    else:
        destination = chosen[1]
    params: dict[str, Any] = {"destination_id": destination.id, "full": full}
    if policy is not None and policy.options:
        params["options"] = dict(policy.options)  # how the policy backs it up (quiesce)
    engine = _engine()
    workflow = workflows.create_workflow(
        engine["db"], "backup", instance=instance, policy=policy, params=params,
        requested_by=_actor(), host=engine["host"])
    audit.record("backup.start", actor=_actor(), target=instance.name,
                 detail={"workflow_id": workflow.id, "instance_id": instance.id,
                         "destination": destination.name, "full": full,
                         "policy": policy.name if policy is not None else None},
                 remote_addr=request.remote_addr or "")
    return _created(workflow)


@blueprint.route("/backups", methods=["GET"])
@require_permission("view")
def list_backups() -> Any:
    """Catalog rows, newest first: ``?instance=`` (id or name), ``?destination=``,
    ``?all=1`` (also backups that are not complete), ``?limit=``/``?before=ID``."""
    args = _args("backup list", ("instance", "destination", "all", "limit", "before"))
    limit, before = _paging(args)
    query = views.backup_query().limit(limit)
    if "instance" in args:
        query = query.where(Backup.instance.in_([i.id for i in _instances(args["instance"])]))
    if "destination" in args:
        query = query.where(Backup.destination == _destination(args["destination"]).id)
    if not _flag(args, "all"):
        query = query.where(Backup.state == "complete")
    if before is not None:
        query = query.where(Backup.id < before)
    return jsonify([views.backup_json(row) for row in query])


@blueprint.route("/backups/<raw_id>", methods=["GET"])
@require_permission("view")
def get_backup(raw_id: str) -> Any:
    """One catalog row."""
    _args("backup", ())
    return jsonify(views.backup_json(_backup(raw_id)))


@blueprint.route("/backups/<raw_id>", methods=["DELETE"])
@require_permission("configure")
def delete_backup(raw_id: str) -> Any:
    """Delete a backup: it expires now, and the next prune removes it from its repository
    and then from the catalog (202). ``{confirm: ID}`` must repeat its id."""
    backup = _backup(raw_id)
    body = _body("delete request", ("confirm",))
    confirm = body.get("confirm")
    if isinstance(confirm, bool) or confirm != backup.id:
        raise ConfigError("delete request", {
            "confirm": f"deleting backup {backup.id} of {backup.instance.name!r} cannot be "
                       f"undone once it is pruned: set confirm to {backup.id} to go on"})
    expiry.expire_by_hand(_engine()["db"], backup)
    audit.record("backup.delete", actor=_actor(), target=backup.instance.name,
                 detail={"backup_id": backup.id, "kind": backup.kind,
                         "destination": backup.destination.name},
                 remote_addr=request.remote_addr or "")
    response = jsonify(views.backup_json(_backup(raw_id)))
    response.status_code = 202
    return response


@blueprint.route("/backups/<raw_id>/restore", methods=["POST"])
@require_permission("operate")
def start_restore(raw_id: str) -> Any:
    """Restore a backup, one of two ways:

    - ``{to: absolute path, include?: path}``: the files into a directory on any node
      (``include``: only that path of the backup, and all below it); for a VM backup ``to``
      is a directory that gets one image per disk, ``format`` (``raw`` or ``qcow2``) and
      ``disks`` (keys; all by default) choose what.
    - ``{instance: id or name, into?: folder, conflict?: rename|skip|overwrite, include?}``:
      back into an instance of the same plugin through its provider, on a node that serves
      its connection. The backup's own instance is its original location; ``into`` is a
      folder inside the instance to restore below; ``conflict`` says what to do with what
      exists already (``rename``, the default, keeps both).
    """
    backup = _backup(raw_id)
    body = _body("restore request", ("to", "include", "format", "disks", "instance", "into",
                                     "conflict"))
    problems: dict[str, str] = {}
    include = body.get("include", "")
    if include is None:
        include = ""
    if not isinstance(include, str) or "\0" in include:
        problems["include"] = "must be a path in the backup (text)"
    if "instance" in body:
        return _restore_into_instance(backup, body, include, problems)
    for key in ("into", "conflict"):
        if key in body:
            problems[key] = "only with instance (a restore into an instance)"
    target = body.get("to")
    if target is None:
        problems["to"] = ("required: an absolute path on the node, or give instance to "
                          "restore into an instance")
    elif not isinstance(target, str) or not posixpath.isabs(target) or "\0" in target:
        problems["to"] = f"must be an absolute path on the node, not {target!r}"
    fmt = body.get("format", "raw")
    if fmt not in ("raw", "qcow2"):
        problems["format"] = f"must be raw or qcow2, not {fmt!r}"
    disks = _disk_keys(body.get("disks"), problems)
    if problems:
        raise ConfigError("restore request", problems)
    _restorable(backup)
    engine = _engine()
    params: dict[str, Any] = {"backup_id": backup.id, "path": target, "include": include}
    if "format" in body:
        params["format"] = fmt
    if disks:
        params["disks"] = disks
    workflow = workflows.create_workflow(
        engine["db"], "restore", instance=None, params=params,
        requested_by=_actor(), host=engine["host"],
        priority=workflows.RESTORE_PRIORITY)
    audit.record("restore.start", actor=_actor(), target=backup.instance.name,
                 detail={"workflow_id": workflow.id, "backup_id": backup.id, "to": target,
                         "include": include},
                 remote_addr=request.remote_addr or "")
    return _created(workflow)


def _restore_into_instance(backup: Backup, body: dict[str, Any], include: str,
                           problems: dict[str, str]) -> Any:
    for key in ("to", "format", "disks"):
        if key in body:
            problems[key] = "not with instance: a restore into an instance writes entries " \
                            "through its provider (to is for a directory on a node)"
    into = body.get("into", "")
    if into is None:
        into = ""
    if not isinstance(into, str) or "\0" in into or posixpath.isabs(into) \
            or ".." in into.split("/"):
        problems["into"] = f"must be a folder inside the instance (relative, no ..), not {into!r}"
    conflict = body.get("conflict", "rename")
    if conflict not in RESTORE_CONFLICTS:
        problems["conflict"] = f"must be one of {', '.join(RESTORE_CONFLICTS)}, not {conflict!r}"
    target: Instance | None = None
    try:
        target = _one_instance(body["instance"])
    except ConfigError as exc:
        problems.update(exc.problems)
    if target is not None:
        source = Instance.get_by_id(backup.instance_id)  # the catalog row has only its name
        if source.kind == "vm" or target.kind == "vm":
            problems["instance"] = ("VM backups go back to their hypervisor with "
                                    "POST /backups/ID/import (sbr import)")
        elif target.connection.plugin != source.connection.plugin:
            problems["instance"] = (f"backup {backup.id} is of a {source.connection.plugin} "
                                    f"instance; {target.name!r} is of "
                                    f"{target.connection.plugin}")
    if problems:
        raise ConfigError("restore request", problems)
    assert target is not None
    _restorable(backup)
    engine = _engine()
    params = {"backup_id": backup.id, "mode": "instance", "include": include, "into": into,
              "conflict": conflict}
    workflow = workflows.create_workflow(
        engine["db"], "restore", instance=target, params=params, requested_by=_actor(),
        host=engine["host"], priority=workflows.RESTORE_PRIORITY)
    audit.record("restore.start", actor=_actor(), target=target.name,
                 detail={"workflow_id": workflow.id, "backup_id": backup.id,
                         "backup_of": backup.instance.name, "instance_id": target.id,
                         "into": into, "conflict": conflict, "include": include},
                 remote_addr=request.remote_addr or "")
    return _created(workflow)


def _restorable(backup: Backup) -> None:
    if backup.state != "complete":
        raise ConflictError(f"backup {backup.id} is {backup.state}, not complete")


def _disk_keys(value: Any, problems: dict[str, str]) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        problems["disks"] = "must be a list of disk keys (e.g. [\"vda\"])"
        return []
    return list(value)


_IMPORT_FIELDS = ("name", "directory", "pool", "disk_targets", "disk_format", "network_map",
                  "power_on", "new_identity", "disks", "replace", "confirm")


@blueprint.route("/backups/<raw_id>/import", methods=["POST"])
@require_permission("operate")
def start_import(raw_id: str) -> Any:
    """Recreate a backed-up VM: ``{name, directory | pool, disk_format?, network_map?,
    power_on?, new_identity?, disks?, disk_targets?}`` as a new VM, or ``{replace: true,
    confirm: "<VM name>"}`` over the original, which must be shut off."""
    backup = _backup(raw_id)
    body = _body("import request", _IMPORT_FIELDS)
    problems: dict[str, str] = {}
    replace = body.get("replace", False)
    if not isinstance(replace, bool):
        problems["replace"] = "must be true or false"
    name = body.get("name")
    if replace:
        if body.get("confirm") != backup.instance.name:
            problems["confirm"] = (f"replacing VM {backup.instance.name!r} overwrites its "
                                   "disks: set confirm to its name to go on")
    elif not isinstance(name, str) or not name.strip() or len(name) > 200 \
            or any(c in name for c in "/\0<>&'\""):
        problems["name"] = "required: the new VM's name (no / < > & ' \")"
    directory = body.get("directory")
    if directory is not None and (not isinstance(directory, str)
                                  or not posixpath.isabs(directory)):
        problems["directory"] = f"must be an absolute path on the node, not {directory!r}"
    if body.get("pool") is not None and not isinstance(body.get("pool"), str):
        problems["pool"] = "must be a storage pool name"
    if not replace and not body.get("directory") and not body.get("pool") \
            and not body.get("disk_targets"):
        problems["directory"] = "say where the disks go: directory, pool or disk_targets"
    fmt = body.get("disk_format", "")
    if fmt not in ("", "raw", "qcow2"):
        problems["disk_format"] = f"must be raw or qcow2, not {fmt!r}"
    for key in ("network_map", "disk_targets"):
        value = body.get(key, {})
        if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            problems[key] = "must map names to names (text to text)"
    targets = body.get("disk_targets") or {}
    if isinstance(targets, dict) and any(not posixpath.isabs(str(v)) for v in targets.values()):
        problems["disk_targets"] = "each disk's target must be an absolute path on the node"
    for key in ("power_on", "new_identity"):
        if key in body and not isinstance(body[key], bool):
            problems[key] = "must be true or false"
    disks = _disk_keys(body.get("disks"), problems)
    if problems:
        raise ConfigError("import request", problems)
    if backup.state != "complete":
        raise ConflictError(f"backup {backup.id} is {backup.state}, not complete")
    instance = Instance.get_by_id(backup.instance_id)  # the catalog row has only its name
    if instance.kind != "vm":
        raise ConflictError(f"backup {backup.id} is of a {instance.kind}, not a VM")
    params: dict[str, Any] = {k: body[k] for k in _IMPORT_FIELDS
                              if k in body and k not in ("confirm", "disks")}
    params.update(backup_id=backup.id, disks=disks)
    engine = _engine()
    workflow = workflows.create_workflow(
        engine["db"], "restore-import", instance=instance, params=params,
        requested_by=_actor(), host=engine["host"], priority=workflows.RESTORE_PRIORITY)
    audit.record("import.start", actor=_actor(), target=instance.name,
                 detail={"workflow_id": workflow.id, "backup_id": backup.id,
                         "name": name, "replace": bool(replace)},
                 remote_addr=request.remote_addr or "")
    return _created(workflow)


@blueprint.route("/backups/<raw_id>/mount", methods=["POST"])
@require_permission("operate")
def start_mount(raw_id: str) -> Any:
    """Serve a VM backup's disks over NBD from a node, read-only, without restoring them:
    ``{listen?: IP address (127.0.0.1), port?: 0-65535 (0: any free one), minutes?: 1-10080
    (60), disks?: [keys]}``. The answer carries ``export``, the secret export name (shown
    only here); the mount task's log says ``serving nbd://HOST:PORT/``, and a disk is read at
    ``nbd://HOST:PORT/EXPORT/DISK``. Cancelling the task ends the mount."""
    backup = _backup(raw_id)
    body = _body("mount request", ("listen", "port", "minutes", "disks"))
    problems: dict[str, str] = {}
    listen = body.get("listen", "127.0.0.1")
    try:
        ipaddress.ip_address(listen if isinstance(listen, str) else "")
    except ValueError:
        problems["listen"] = ("must be an IP address of the node to listen on (0.0.0.0 for "
                              f"all), not {listen!r}")
    port = body.get("port", 0)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        problems["port"] = f"must be a TCP port from 0 (any free one) to 65535, not {port!r}"
    minutes = body.get("minutes", mount.DEFAULT_MINUTES)
    if isinstance(minutes, bool) or not isinstance(minutes, int) \
            or not 1 <= minutes <= mount.MAX_MINUTES:
        problems["minutes"] = (f"must be a whole number of minutes from 1 to "
                               f"{mount.MAX_MINUTES}, not {minutes!r}")
    disks = _disk_keys(body.get("disks"), problems)
    if problems:
        raise ConfigError("mount request", problems)
    _restorable(backup)
    instance = Instance.get_by_id(backup.instance_id)  # the catalog row has only its name
    if instance.kind != "vm":
        raise ConflictError(f"backup {backup.id} is of a {instance.kind}: a mount serves VM "
                            "disks; restore files with POST /backups/ID/restore {to, include}")
    export = secrets.token_urlsafe(24)
    params: dict[str, Any] = {"backup_id": backup.id, "listen": listen, "port": port,
                              "minutes": minutes, "disks": disks, "export": export}
    engine = _engine()
    workflow = workflows.create_workflow(
        engine["db"], "mount", instance=None, params=params, requested_by=_actor(),
        host=engine["host"], priority=workflows.RESTORE_PRIORITY)
    audit.record("mount.start", actor=_actor(), target=instance.name,
                 detail={"workflow_id": workflow.id, "backup_id": backup.id, "listen": listen,
                         "port": port, "minutes": minutes, "disks": disks},
                 remote_addr=request.remote_addr or "")
    return _created(workflow, export=export)


# --- tasks --------------------------------------------------------------------------------


@blueprint.route("/tasks", methods=["GET"])
@require_permission("view")
def list_tasks() -> Any:
    """Workflows newest first: ``?state=active|finished|all`` (all by default),
    ``?limit=``/``?before=ID``."""
    args = _args("task list", ("state", "limit", "before"))
    state = args.get("state", "all")
    if state not in TASK_STATES:
        raise ConfigError("task list", {"state": f"must be one of {', '.join(TASK_STATES)}, "
                                                 f"not {state!r}"})
    limit, before = _paging(args)
    query = (Workflow.select().where(Workflow.state.in_(TASK_STATES[state]))
             .order_by(Workflow.id.desc()).limit(limit))
    if before is not None:
        query = query.where(Workflow.id < before)
    return jsonify(views.workflows_json(query))


@blueprint.route("/tasks/<raw_id>", methods=["GET"])
@require_permission("view")
def get_task(raw_id: str) -> Any:
    """A workflow with every task and its log; ``?after=LOG_ID`` for the lines after."""
    args = _args("task", ("after",))
    after = _whole(args["after"], "after") if "after" in args else 0
    return jsonify(views.workflow_detail(_workflow(raw_id), log_after=after))


@blueprint.route("/tasks/<raw_id>/cancel", methods=["POST"])
@require_permission("operate")
def cancel_task(raw_id: str) -> Any:
    """Cancel a workflow: what has not started is cancelled now, a running step unwinds."""
    workflow = _workflow(raw_id)
    _body("cancel request", ())
    engine = _engine()
    state = workflows.cancel_workflow(engine["db"], workflow.id)
    audit.record("task.cancel", actor=_actor(), target=f"task {workflow.id}",
                 detail={"workflow_id": workflow.id, "kind": workflow.kind, "state": state},
                 remote_addr=request.remote_addr or "")
    if state == "cancelled":
        engine["events"].workflow_ended(workflow.id)
    return jsonify(views.workflow_detail(Workflow.get_by_id(workflow.id)))
