"""The JSON REST API, version 1. Everything but health and login requires a session."""

from __future__ import annotations

from typing import Any

import flask_login
from flask import Blueprint, current_app, jsonify

from sbr_core import __version__
from sbr_core.db.migrations import LATEST, current_version
from sbr_core.plugins import PluginHost
from sbr_web.auth import require_permission

blueprint = Blueprint("api", __name__, url_prefix="/api/v1")


@blueprint.route("/health")
def health() -> Any:
    """Liveness for load balancers and monitoring: no authentication, no details."""
    db = current_app.extensions["sbr"]["db"]
    try:
        schema_ok = current_version(db) == LATEST
    except Exception:
        schema_ok = False
    status = 200 if schema_ok else 503
    return jsonify(status="ok" if schema_ok else "database unavailable",
                   version=__version__), status


@blueprint.route("/me")
@require_permission("view")
def me() -> Any:
    """The logged-in user, their role and permissions."""
    user = flask_login.current_user
    return jsonify(username=user.username, role=user.role,
                   permissions=sorted(user.permissions))


@blueprint.route("/plugins")
@require_permission("view")
def plugins() -> Any:
    """Every plugin, as ``sbr plugins --json`` prints it."""
    host: PluginHost = current_app.extensions["sbr"]["host"]
    return jsonify([r.to_json() for r in host.records()])


@blueprint.route("/audit")
@require_permission("audit")
def audit_log() -> Any:
    """Audit entries, newest first; ``?limit=`` (at most 1000) and ``?before=ID`` to page."""
    from flask import request

    from sbr_core.db.schema import AuditLog

    limit = request.args.get("limit", 100, type=int)
    before = request.args.get("before", type=int)
    if limit is None or not 1 <= limit <= 1000:
        return jsonify(error="limit: must be a whole number from 1 to 1000"), 400
    query = AuditLog.select().order_by(AuditLog.id.desc()).limit(limit)
    if before is not None:
        query = query.where(AuditLog.id < before)
    return jsonify([
        {"id": r.id, "at": r.at.isoformat() + "Z", "user": r.username, "action": r.action,
         "target": r.target, "detail": r.detail, "remote_addr": r.remote_addr}
        for r in query
    ])
