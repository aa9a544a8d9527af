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
    g,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)

from sbr_core import accounts, apitokens, audit
from sbr_core.db.schema import User
from sbr_core.errors import AuthError, NotFoundError, UsageError
from sbr_web.errors import json_body

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
        self._stamp = accounts.session_stamp(row)

    def get_id(self) -> str:
        """What the session keeps: the id and a stamp of the password, so that a password
        change ends every session opened with the old one."""
        return f"{self.id}:{self._stamp}"

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
        if bearer_token() is not None:  # a request that brings a token is judged by it alone
            return None
        number, _, stamp = user_id.partition(":")
        if not number.isdigit():
            return None
        row = User.get_or_none(User.id == int(number))
        if row is None or not row.active or stamp != accounts.session_stamp(row):
            return None
        return WebUser(row)

    @login_manager.request_loader
    def _load_from_token(_: Any) -> WebUser | None:
        token = bearer_token()
        if token is None:
            return None
        try:
            row = apitokens.authenticate(token)
        except AuthError as exc:
            g.sbr_auth_error = str(exc)
            return None
        g.sbr_token_id = row.id  # for "current" (``sbr logout``) and the token list
        return WebUser(row.user)

    @login_manager.unauthorized_handler
    def _unauthorized() -> Any:
        refused = g.get("sbr_auth_error")
        if refused:
            return jsonify(error=refused), 401
        if _wants_json() or bearer_token() is not None:
            return jsonify(error="authentication required"), 401
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))


def bearer_token() -> str | None:
    """The token of an ``Authorization: Bearer …`` header, or None when there is none."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


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


# --- API tokens (``sbr login`` and scripts) -----------------------------------------------


@blueprint.route("/api/v1/tokens", methods=["POST"])
def create_token() -> Any:
    """Log in for scripts: ``{username, password, name?, expires_in_days?}`` gives a bearer
    token ``{id, token, name, expires_at, username, role}``, shown this once."""
    body = json_body()
    username = body.get("username")
    password = body.get("password")
    if not isinstance(username, str) or not username.strip():
        raise UsageError("username: required")
    if not isinstance(password, str) or not password:
        raise UsageError("password: required")
    name = body.get("name", "")
    if not isinstance(name, str):
        raise UsageError("name: must be text")
    days = body.get("expires_in_days", apitokens.DEFAULT_LIFETIME_DAYS)
    if days is None:  # every token of the API expires
        raise UsageError(f"expires_in_days: must be a whole number from 1 to "
                         f"{apitokens.MAX_LIFETIME_DAYS}")
    username = username.strip()
    address = request.remote_addr or ""
    if _throttle().blocked(f"user:{username}", f"addr:{address}"):
        audit.record("login.blocked", actor=username, remote_addr=address,
                     detail={"via": "api-token"})
        return jsonify(error="too many failed logins; wait a few minutes and try again"), 429
    try:
        row = accounts.authenticate(username, password)
    except AuthError as exc:
        _throttle().fail(f"user:{username}", f"addr:{address}")
        audit.record("login.failed", actor=username, remote_addr=address,
                     detail={"via": "api-token"})
        return jsonify(error=str(exc)), 401
    _throttle().clear(f"user:{username}")
    token_row, token = apitokens.create_token(row, name=name, days=days)
    shown = apitokens.describe(token_row)
    audit.record("token.create", actor=row.username, target=f"token {token_row.id}",
                 detail={"name": token_row.name, "expires_at": shown["expires_at"]},
                 remote_addr=address)
    return jsonify(id=token_row.id, token=token, name=token_row.name,
                   expires_at=shown["expires_at"], username=row.username,
                   role=row.role.name), 201


@blueprint.route("/api/v1/tokens", methods=["GET"])
@require_permission("view")
def list_tokens() -> Any:
    """The caller's own tokens (never the tokens or their hashes)."""
    user = User.get_by_id(int(flask_login.current_user.id))
    current = _current_token_id()
    return jsonify([{**apitokens.describe(t), "current": t.id == current}
                    for t in apitokens.tokens_of(user)])


@blueprint.route("/api/v1/tokens/<token_ref>", methods=["DELETE"])
@require_permission("view")
def revoke_token(token_ref: str) -> Any:
    """Revoke a token: one's own, or anyone's with ``manage-users``; ``current`` is the
    token this request came with (``sbr logout``)."""
    user = flask_login.current_user
    if token_ref == "current":  # noqa: S105 - a path word, not a password
        token_id = _current_token_id()
        if token_id is None:
            raise UsageError("token: this request did not come with an API token")
    elif token_ref.isdigit():
        token_id = int(token_ref)
    else:
        raise UsageError(f"token: {token_ref!r} is not a token id")
    row = apitokens.get_token(token_id)
    if row.user_id != int(user.id) and not user.can("manage-users"):
        raise NotFoundError(f"token: no API token with id {token_id}")
    row = apitokens.revoke_token(row.id)
    audit.record("token.revoke", actor=user.username, target=f"token {row.id}",
                 detail={"name": row.name, "owner": row.user.username},
                 remote_addr=request.remote_addr or "")
    return jsonify(apitokens.describe(row))


def _current_token_id() -> int | None:
    token_id: int | None = g.get("sbr_token_id")
    return token_id
