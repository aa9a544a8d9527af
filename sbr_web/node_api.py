"""The node API (``/api/v1/node``): how data-mover nodes claim work and report on it.

Every call carries ``Authorization: Bearer <node token>`` (see :mod:`sbr_core.engine.nodes`);
user sessions have no access here, and node tokens have none elsewhere. Reports on a task
carry the attempt of the claim; a stale one gets 409 and the node drops the task.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, current_app, g, jsonify

from sbr_core.engine import claims, nodes, workflows
from sbr_core.engine.orders import work_order
from sbr_core.errors import AuthError, UsageError
from sbr_web.auth import bearer_token
from sbr_web.errors import json_body

blueprint = Blueprint("node_api", __name__, url_prefix="/api/v1/node")
log = logging.getLogger(__name__)


@blueprint.before_request
def _authenticate() -> Any:
    token = bearer_token()
    if not token:
        return jsonify(error="a node token is required (Authorization: Bearer …)"), 401
    try:
        g.node = nodes.authenticate(token)
    except AuthError as exc:
        return jsonify(error=str(exc)), 401
    return None


def _engine() -> dict[str, Any]:
    engine: dict[str, Any] = current_app.extensions["sbr"]
    return engine


def _timing() -> claims.Timing:
    timing: claims.Timing = _engine().get("timing", claims.DEFAULT_TIMING)
    return timing


def _int(body: dict[str, Any], name: str, *, required: bool = True) -> int | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{name}: must be a whole number")
    return value


def _log_lines(body: dict[str, Any]) -> list[tuple[str, str]]:
    lines = body.get("log", [])
    if not isinstance(lines, list):
        raise UsageError("log: must be a list of [level, message] pairs")
    result = []
    for line in lines[:1000]:
        if not (isinstance(line, list) and len(line) == 2):
            raise UsageError("log: must be a list of [level, message] pairs")
        result.append((str(line[0]), str(line[1])))
    return result


@blueprint.route("/register", methods=["POST"])
def register() -> Any:
    """A node starting up: its version, staging path and free space."""
    body = json_body()
    nodes.register(g.node, version=str(body.get("version", "")),
                   staging_path=str(body.get("staging_path", "")),
                   free_bytes=_int(body, "free_bytes", required=False) or 0)
    return jsonify(node=g.node.name, concurrency=g.node.concurrency,
                   lease_seconds=_timing().lease.total_seconds(),
                   heartbeat_seconds=_timing().heartbeat_seconds)


@blueprint.route("/claim", methods=["POST"])
def claim() -> Any:
    """The next task for this node with its work order, or 204 when there is none."""
    engine = _engine()
    got = claims.claim(engine["db"], g.node, timing=_timing())
    if got is None:
        return "", 204
    order = work_order(got, engine["box"])
    engine["events"].task_started(got, g.node.name, workflow_kind=order["workflow"]["kind"],
                                  instance_name=(order["instance"] or {}).get("name", ""))
    return jsonify(order)


@blueprint.route("/tasks/<int:task_id>/heartbeat", methods=["POST"])
def heartbeat(task_id: int) -> Any:
    """Renew the lease, report progress and log lines; answers whether to cancel."""
    body = json_body()
    cancel = workflows.heartbeat(
        _engine()["db"], task_id, g.node, _int(body, "attempt") or 0,
        done=_int(body, "done", required=False), total=_int(body, "total", required=False),
        speed=_int(body, "speed", required=False), log=_log_lines(body), timing=_timing())
    return jsonify(cancel=cancel)


@blueprint.route("/tasks/<int:task_id>/finish", methods=["POST"])
def finish(task_id: int) -> Any:
    """How a task ended; answers with the next task of the workflow, if any, for this
    node to run now: its id, attempt and step only, because the rest of the work order is
    the one the claim gave (building it again cost a third of a workflow's server time)."""
    engine = _engine()
    body = json_body()
    result = body.get("result") or {}
    if not isinstance(result, dict):
        raise UsageError("result: must be an object")
    state = str(body.get("state", ""))
    done = workflows.finish_task(
        engine["db"], task_id, g.node, _int(body, "attempt") or 0, state=state,
        result=result, error=str(body.get("error", "")), log=_log_lines(body),
        timing=_timing())
    engine["events"].task_finished(task_id, state, g.node.name, done)
    if done.next is None:
        return jsonify(next=None, workflow_state=done.workflow_state)
    engine["events"].task_started(done.next, g.node.name,
                                  workflow_kind=done.kind.partition(".")[0],
                                  instance_name=done.instance_name)
    task = {"id": done.next.task_id, "attempt": done.next.attempt, "step": done.next.step}
    return jsonify(next={"task": task}, workflow_state=None)
