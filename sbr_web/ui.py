"""Admin UI pages: the dashboard and the Plugins page."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from sbr_core import __version__
from sbr_core.db.migrations import current_version
from sbr_core.db.schema import Backup, Destination, Instance, ProviderConnection, Task, User
from sbr_core.plugins import PluginHost
from sbr_core.providers import ProviderKind
from sbr_core.settings import settings_of
from sbr_web.auth import require_permission

blueprint = Blueprint("ui", __name__)


def plugin_host() -> PluginHost:
    """The app's plugin host."""
    host: PluginHost = current_app.extensions["sbr"]["host"]
    return host


@blueprint.app_context_processor
def _globals() -> dict[str, Any]:
    return {"sbr_version": __version__}


@blueprint.route("/")
@require_permission("view")
def dashboard() -> Any:
    """What is configured and what is going on, at a glance."""
    db = current_app.extensions["sbr"]["db"]
    records = plugin_host().records()
    counts = {
        "Provider connections": ProviderConnection.select().count(),
        "Destinations": Destination.select().count(),
        "Protected instances": Instance.select().where(Instance.present).count(),
        "Backups": Backup.select().count(),
        "Tasks running": Task.select().where(Task.state == "running").count(),
        "Tasks waiting": Task.select().where(Task.state == "pending").count(),
        "Users": User.select().count(),
    }
    return render_template(
        "dashboard.html",
        counts=counts,
        plugins_available=sum(r.status == "available" for r in records),
        plugins_other=[r for r in records if r.status != "available"],
        schema_version=current_version(db),
        database=current_app.extensions["sbr"]["runtime"].database_url.safe(),
    )


@blueprint.route("/plugins")
@require_permission("view")
def plugins() -> Any:
    """Every plugin with its status, kinds, providers and their settings."""
    host = plugin_host()
    records = host.records()
    settings = {}
    for record in records:
        for provider in record.providers:
            cls = host.providers(ProviderKind(provider.kind))[provider.name]
            settings[(provider.kind, provider.name)] = settings_of(cls.Config)
    return render_template("plugins.html", records=records, settings=settings)


def register_error_pages(app: Flask) -> None:
    """HTML error pages for the UI, JSON bodies for the API."""

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Any:
        message = exc.description or exc.name
        if request.path.startswith("/api/") or request.is_json:
            return jsonify(error=message), exc.code
        return render_template("error.html", code=exc.code, name=exc.name,
                               message=message), exc.code


@blueprint.route("/audit")
@require_permission("audit")
def audit_log() -> Any:
    """The newest audit entries: who did what, when, from where."""
    from sbr_core.db.schema import AuditLog

    page = max(request.args.get("page", 1, type=int) or 1, 1)
    rows = AuditLog.select().order_by(AuditLog.id.desc()).paginate(page, 100)
    return render_template("audit.html", rows=list(rows), page=page)
