"""CSRF protection for form posts: a per-session token every form carries back."""

from __future__ import annotations

import hmac
import secrets

from flask import Flask, abort, request, session

from sbr_web.auth import bearer_token

_FIELD = "csrf_token"


def token() -> str:
    """This session's token, created on first use."""
    if _FIELD not in session:
        session[_FIELD] = secrets.token_urlsafe(32)
    value: str = session[_FIELD]
    return value


def init_app(app: Flask) -> None:
    """Check the token on every state-changing request that carries a session cookie.

    JSON API calls are exempt: browsers cannot send them cross-site without CORS, which the
    server never grants. So are requests that bring an ``Authorization: Bearer`` token: they
    are authenticated by the token alone, never by the cookie (see :mod:`sbr_web.auth`), and
    a browser cannot add that header cross-site either.
    """
    app.jinja_env.globals["csrf_token"] = token

    @app.before_request
    def _check() -> None:
        if request.method in ("GET", "HEAD", "OPTIONS") or request.is_json \
                or bearer_token() is not None:
            return
        sent = request.form.get(_FIELD, "") or request.headers.get("X-CSRF-Token", "")
        expected = session.get(_FIELD, "")
        if not expected or not hmac.compare_digest(sent, expected):
            abort(400, description="the form expired or did not come from this site; "
                                   "reload the page and try again")
