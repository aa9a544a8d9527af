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
