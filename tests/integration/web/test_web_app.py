"""The web app over a real database: login, sessions, CSRF, roles enforced on the server."""

from __future__ import annotations

import re
from pathlib import Path

import peewee as pw
import pytest
from flask import Flask
from flask.testing import FlaskClient

from sbr_core import accounts
from sbr_core.db.migrations import LATEST
from sbr_core.db.schema import AuditLog
from sbr_core.db.url import parse_database_url
from sbr_core.plugins import PluginHost
from sbr_core.runtime import Runtime
from sbr_web import create_app

PASSWORD = "a long password"


@pytest.fixture
def app(database: pw.Database, database_url: str, tmp_path: Path) -> Flask:
    runtime = Runtime(tmp_path, parse_database_url(database_url))
    for name, role in (("root", "admin"), ("ops", "operator"), ("eve", "viewer"),
                       ("aud", "auditor")):
        accounts.add_user(name, PASSWORD, role=role)
    return create_app(runtime=runtime, db=database, host=PluginHost.discover())


def _csrf(client: FlaskClient, path: str = "/login") -> str:
    page = client.get(path).get_data(as_text=True)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


def login(client: FlaskClient, username: str, password: str = PASSWORD, **extra: str):
    token = _csrf(client)
    return client.post("/login", data={"username": username, "password": password,
                                       "csrf_token": token, **extra})


def test_health_needs_no_login_but_everything_else_does(app: Flask) -> None:
    client = app.test_client()
    assert client.get("/api/v1/health").get_json()["status"] == "ok"
    assert client.get("/api/v1/plugins").status_code == 401
    assert client.get("/api/v1/plugins").get_json() == {"error": "authentication required"}
    page = client.get("/plugins")
    assert page.status_code == 302 and "/login" in page.headers["Location"]


def test_login_then_plugins_page_lists_the_filesystem_plugin(app: Flask) -> None:
    client = app.test_client()
    response = login(client, "root", next="/plugins")
    assert response.status_code == 302 and response.headers["Location"] == "/plugins"
    page = client.get("/plugins").get_data(as_text=True)
    assert 'data-plugin="filesystem"' in page
    assert "available" in page and "Must be a mount point" in page
    plugins = client.get("/api/v1/plugins").get_json()
    assert {p["name"]: p["status"] for p in plugins}["filesystem"] == "available"
    assert AuditLog.select().where(AuditLog.action == "login").count() == 1


def test_wrong_password_is_refused_with_a_message_and_audited(app: Flask) -> None:
    client = app.test_client()
    response = login(client, "root", "not the password")
    assert response.status_code == 401
    page = response.get_data(as_text=True)
    assert "wrong user name or password" in page
    assert 'name="username" autocomplete="username" value="root"' in page
    assert client.get("/api/v1/me").status_code == 401
    assert AuditLog.select().where(AuditLog.action == "login.failed").count() == 1


def test_repeated_failures_are_throttled(app: Flask) -> None:
    client = app.test_client()
    codes = [login(client, "ops", f"guess {i}").status_code for i in range(6)]
    assert codes[:5] == [401] * 5 and codes[5] == 429
    assert login(client, "ops").status_code == 429  # even the right password, for a while


def test_roles_are_enforced_on_the_server(app: Flask) -> None:
    viewer = app.test_client()
    login(viewer, "eve")
    assert viewer.get("/plugins").status_code == 200
    assert viewer.get("/audit").status_code == 403
    assert viewer.get("/api/v1/audit").status_code == 403
    assert "Audit log" not in viewer.get("/").get_data(as_text=True)
    auditor = app.test_client()
    login(auditor, "aud")
    assert auditor.get("/audit").status_code == 200
    entries = auditor.get("/api/v1/audit?limit=5").get_json()
    assert entries[0]["action"] == "login" and entries[0]["user"] == "aud"
    assert auditor.get("/api/v1/audit?limit=0").status_code == 400


def test_form_posts_without_the_csrf_token_are_refused(app: Flask) -> None:
    client = app.test_client()
    response = client.post("/login", data={"username": "root", "password": PASSWORD})
    assert response.status_code == 400
    assert "reload the page" in response.get_data(as_text=True)


def test_json_login_for_scripts_and_logout(app: Flask) -> None:
    client = app.test_client()
    response = client.post("/login", json={"username": "ops", "password": PASSWORD})
    assert response.get_json() == {"username": "ops", "role": "operator"}
    me = client.get("/api/v1/me").get_json()
    assert me["permissions"] == ["operate", "view"]
    token = _csrf(client, "/")
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    assert client.get("/api/v1/me").status_code == 401


def test_login_never_redirects_off_site(app: Flask) -> None:
    client = app.test_client()
    response = login(client, "root", next="//evil.example/x")
    assert response.headers["Location"] == "/"


def test_dashboard_shows_real_counts(app: Flask) -> None:
    client = app.test_client()
    login(client, "root")
    page = client.get("/").get_data(as_text=True)
    assert re.search(r'<span class="value">4</span><span class="label">Users</span>', page)
    assert f"schema version {LATEST}" in page


def test_a_disabled_user_cannot_log_in(app: Flask) -> None:
    from sbr_core.db.schema import User

    User.update(active=False).where(User.username == "ops").execute()
    assert login(app.test_client(), "ops").status_code == 401


def test_a_password_change_ends_sessions_and_revokes_tokens(app: Flask) -> None:
    from sbr_core import apitokens
    from sbr_core.errors import AuthError

    client, bystander = app.test_client(), app.test_client()
    login(client, "ops")
    login(bystander, "eve")
    assert client.get("/plugins").status_code == 200
    _, token = apitokens.create_token(accounts.get_user("ops"), name="script")
    _, other = apitokens.create_token(accounts.get_user("eve"), name="script")

    assert accounts.set_password("ops", "a new long password") == 1
    page = client.get("/plugins")
    assert page.status_code == 302 and "/login" in page.headers["Location"]
    with pytest.raises(AuthError, match="revoked"):
        apitokens.authenticate(token)
    # nobody else is touched, and the new password opens a new session
    assert bystander.get("/plugins").status_code == 200
    assert apitokens.authenticate(other).user.username == "eve"
    login(client, "ops", "a new long password")
    assert client.get("/plugins").status_code == 200
