"""Logging in and out, who the current user is, and what they may do.

Permissions are checked here, on the server, for pages and API routes alike; the templates
hide buttons only as a courtesy.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import flask_login
from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)

from sbr_core import accounts, audit
from sbr_core.db.schema import User
from sbr_core.errors import AuthError

blueprint = Blueprint("auth", __name__)
login_manager = flask_login.LoginManager()

F = TypeVar("F", bound=Callable[..., Any])

_MAX_FAILURES = 5
_FAILURE_WINDOW_S = 300.0


class WebUser(flask_login.UserMixin):
    """The logged-in user as the web app sees it."""

    def __init__(self, row: User) -> None:
        self.id = str(row.id)
        self.username: str = row.username
        self.role: str = row.role.name
        self.permissions = accounts.permissions_of(row)

    def can(self, permission: str) -> bool:
        """Whether the user's role grants ``permission``."""
        return permission in self.permissions


class _Throttle:
    """Refuses logins after repeated failures for one user name or one address."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: dict[str, list[float]] = {}

    def blocked(self, *keys: str) -> bool:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                recent = [t for t in self._failures.get(key, []) if now - t < _FAILURE_WINDOW_S]
                self._failures[key] = recent
                if len(recent) >= _MAX_FAILURES:
                    return True
        return False

    def fail(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._failures.setdefault(key, []).append(time.monotonic())

    def clear(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)


def _throttle() -> _Throttle:
    throttle: _Throttle = current_app.extensions["sbr.login_throttle"]
    return throttle


def init_app(app: Flask) -> None:
    """Attach flask-login and the login throttle to the app."""
    app.extensions["sbr.login_throttle"] = _Throttle()
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Please log in."

    @login_manager.user_loader
    def _load(user_id: str) -> WebUser | None:
        row = User.get_or_none(User.id == int(user_id))
        return WebUser(row) if row is not None and row.active else None

    @login_manager.unauthorized_handler
    def _unauthorized() -> Any:
        if _wants_json():
            return jsonify(error="authentication required"), 401
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))


def _wants_json() -> bool:
    return request.path.startswith("/api/") or request.is_json


def require_permission(permission: str) -> Callable[[F], F]:
    """Decorator: a logged-in user whose role grants ``permission``, or 401/403."""
    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            user = flask_login.current_user
            if not user.is_authenticated:
                return login_manager.unauthorized()
            if not user.can(permission):
                abort(403, description=f"your role does not grant '{permission}'")
            return view(*args, **kwargs)
        return wrapper  # type: ignore[return-value]
    return decorate


def require_login_for_blueprint(bp: Blueprint) -> None:
    """Make every route of a (plugin) blueprint require a logged-in user."""
    def _check() -> Any:
        if not flask_login.current_user.is_authenticated:
            return login_manager.unauthorized()
        return None
    bp.before_request(_check)


def _safe_next(target: str | None) -> str:
    """Only redirect within this site after login."""
    if target and target.startswith("/") and not urlsplit(target).netloc \
            and not target.startswith("//"):
        return target
    return url_for("ui.dashboard")


@blueprint.route("/login", methods=["GET", "POST"])
def login() -> Any:
    """The login form (and ``POST`` JSON ``{username, password}`` for scripts)."""
    if request.method == "GET":
        return render_template("login.html", next=request.args.get("next", ""), username="")
    sent = request.get_json(silent=True) if request.is_json else request.form
    data: Any = sent if isinstance(sent, dict) or hasattr(sent, "get") else {}
    username = str(data.get("username", "")).strip()
    password = str(data.get("password", ""))
    address = request.remote_addr or ""
    if _throttle().blocked(f"user:{username}", f"addr:{address}"):
        audit.record("login.blocked", actor=username, remote_addr=address)
        return _login_failed("too many failed logins; wait a few minutes and try again", 429)
    try:
        row = accounts.authenticate(username, password)
    except AuthError as exc:
        _throttle().fail(f"user:{username}", f"addr:{address}")
        audit.record("login.failed", actor=username, remote_addr=address)
        return _login_failed(str(exc), 401)
    _throttle().clear(f"user:{username}")
    flask_login.login_user(WebUser(row))
    audit.record("login", actor=row.username, remote_addr=address)
    if request.is_json:
        return jsonify(username=row.username, role=row.role.name)
    return redirect(_safe_next(request.form.get("next")))


def _login_failed(message: str, status: int) -> Any:
    if request.is_json:
        return jsonify(error=message), status
    flash(message, "error")
    return render_template("login.html", next=request.form.get("next", ""),
                           username=request.form.get("username", "")), status


@blueprint.route("/logout", methods=["POST"])
def logout() -> Any:
    """End the session."""
    if flask_login.current_user.is_authenticated:
        audit.record("logout", actor=flask_login.current_user.username,
                     remote_addr=request.remote_addr or "")
    flask_login.logout_user()
    return redirect(url_for("auth.login"))
