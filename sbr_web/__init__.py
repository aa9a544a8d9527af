"""The SBR web app: admin UI and REST API over one database, built by :func:`create_app`."""

from __future__ import annotations

from typing import Any

import peewee as pw
from flask import Flask

from sbr_core.plugins import PluginHost
from sbr_core.runtime import Runtime
from sbr_core.secretbox import SecretBox, derive_key, load_or_create_key


def create_app(*, runtime: Runtime, db: pw.Database, host: PluginHost,
               config: dict[str, Any] | None = None) -> Flask:
    """Build the Flask app. The database must be open and its schema current."""
    from sbr_core.engine.announce import Announcer
    from sbr_web import admin_api, api, auth, csrf, errors, node_api, ui, work_api

    server_key = load_or_create_key(runtime.key_file)
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=derive_key(server_key, "web-session"),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        REMEMBER_COOKIE_HTTPONLY=True,
        MAX_CONTENT_LENGTH=16 * 1024 * 1024,
    )
    app.config.update(config or {})
    app.extensions["sbr"] = {"runtime": runtime, "db": db, "host": host,
                             "box": SecretBox(server_key), "events": Announcer(host)}

    @app.before_request
    def _connect() -> None:
        db.connect(reuse_if_open=True)

    # Each worker thread keeps its connection from one request to the next (peewee's are
    # per thread). Opening one per request cost 18 ms on MariaDB (the handshake) and 4 ms
    # on SQLite (closing the last connection checkpoints the WAL): more than a node API
    # call's own work. A MariaDB connection the server dropped is reopened on next use.

    auth.init_app(app)
    csrf.init_app(app)
    app.register_blueprint(auth.blueprint)
    app.register_blueprint(ui.blueprint)
    app.register_blueprint(api.blueprint)
    app.register_blueprint(admin_api.blueprint)
    app.register_blueprint(node_api.blueprint)
    app.register_blueprint(work_api.blueprint)
    errors.init_app(app)
    _register_plugin_blueprints(app, host)
    ui.register_error_pages(app)
    return app


def _register_plugin_blueprints(app: Flask, host: PluginHost) -> None:
    """Mount plugin blueprints; every route of theirs needs a logged-in user."""
    from sbr_web.auth import require_login_for_blueprint

    for plugin_name, blueprint in host.blueprints():
        try:
            require_login_for_blueprint(blueprint)
            app.register_blueprint(blueprint)
        except Exception as exc:  # a bad blueprint disables that plugin's pages only
            host.mark_unavailable(plugin_name, f"web blueprint refused: {exc}")
