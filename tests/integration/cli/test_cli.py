"""The ``sbr`` command as an admin runs it: real subprocesses, real databases."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.request
from http.cookiejar import CookieJar
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from sbr_core.db.migrations import LATEST
from tests.cli_runs import SBR, assert_one_line_error, free_port, sbr, wait_for_server


def test_plugins_json_lists_the_filesystem_plugin(sbr_env: dict[str, str]) -> None:
    result = sbr("plugins", "--json", env=sbr_env)
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert plugins["filesystem"]["kinds"] == ["destination"]
    assert plugins["filesystem"]["status"] == "available"


def test_disabled_plugins_are_listed_as_disabled(sbr_env: dict[str, str]) -> None:
    result = sbr("plugins", "--json", env={**sbr_env, "SBR_DISABLE_PLUGINS": "filesystem"})
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert plugins["filesystem"]["status"] == "disabled"


def test_unknown_plugin_is_one_line(sbr_env: dict[str, str]) -> None:
    assert_one_line_error(sbr("plugins", "tape-robot", env=sbr_env),
                          "no plugin named 'tape-robot'", "filesystem")


@pytest.mark.parametrize(("url", "fragment"), [
    ("postgres://x@y/z", "unknown database type 'postgres'"),
    ("mysql://user@host", "must name one database"),
    ("mysql://user@host:notaport/db", "malformed"),
    ("sqlite://", "sqlite URL has no file path"),
    ("sqlite:///no/such/dir/sbr.db", "directory no/such/dir does not exist"),
])
def test_malformed_database_url_is_one_line(sbr_env: dict[str, str], url: str,
                                             fragment: str) -> None:
    assert_one_line_error(sbr("db", "upgrade", env={**sbr_env, "SBR_DATABASE_URL": url}),
                          fragment)


def test_unreachable_database_is_one_line(sbr_env: dict[str, str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        env = {**sbr_env, "SBR_DATABASE_URL": f"mysql://sbr:pw@127.0.0.1:{port}/sbr"}
        assert_one_line_error(sbr("db", "upgrade", env=env), "cannot reach the server")


def test_wrong_database_password_is_one_line_and_not_echoed(
        sbr_env: dict[str, str], mariadb: Any) -> None:
    url = mariadb.url(mariadb.new_database(), password="Wr0ngPassw0rd")
    result = sbr("db", "upgrade", env={**sbr_env, "SBR_DATABASE_URL": url})
    assert_one_line_error(result, "access denied for user 'sbr'")
    assert "Wr0ngPassw0rd" not in result.stderr + result.stdout


def test_upgrade_then_users_on_mariadb(sbr_env: dict[str, str], mariadb: Any) -> None:
    env = {**sbr_env, "SBR_DATABASE_URL": mariadb.url(mariadb.new_database())}
    upgraded = sbr("db", "upgrade", env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"schema version {LATEST}" in upgraded.stdout
    assert sbr("user", "add", "alice", "--role", "operator", "--password-stdin",
               env=env, stdin="a good password\n").returncode == 0
    assert "alice\toperator" in sbr("user", "list", env=env).stdout


def test_commands_refuse_an_outdated_schema(sbr_env: dict[str, str]) -> None:
    Path(sbr_env["SBR_DATA_DIR"]).mkdir()
    assert_one_line_error(sbr("user", "list", env=sbr_env), "run 'sbr db upgrade'")


def test_user_commands_name_bad_input(sbr_env: dict[str, str]) -> None:
    assert sbr("db", "upgrade", env=sbr_env).returncode == 0
    add = ("user", "add", "bob", "--password-stdin")
    assert sbr(*add, env=sbr_env, stdin="long enough\n").returncode == 0
    assert_one_line_error(sbr(*add, env=sbr_env, stdin="long enough\n"), "already exists")
    assert_one_line_error(sbr("user", "add", "carl", "--password-stdin", env=sbr_env,
                              stdin="short\n"), "at least 8")
    assert_one_line_error(sbr("user", "add", "dan", "--role", "boss", "--password-stdin",
                              env=sbr_env, stdin="long enough\n"), "no role named 'boss'")
    assert_one_line_error(sbr("user", "passwd", "nobody", "--password-stdin", env=sbr_env,
                              stdin="long enough\n"), "no user named 'nobody'")
    assert_one_line_error(sbr("user", "add", "erin", env=sbr_env), "--password-stdin")
    assert sbr("user", "passwd", "bob", "--password-stdin", env=sbr_env,
               stdin="another long one\n").returncode == 0


@pytest.fixture
def running_server(sbr_env: dict[str, str]):
    port = free_port()
    process = subprocess.Popen([*SBR, "server", "--port", str(port)], env=sbr_env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_server(f"http://127.0.0.1:{port}/api/v1/health", process)
        yield port, process
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_server_first_start_creates_admin_and_serves_login_and_plugins(
        running_server: tuple[int, Any], sbr_env: dict[str, str]) -> None:
    port, _ = running_server
    password_file = Path(sbr_env["SBR_DATA_DIR"]) / "initial-admin-password"
    assert password_file.stat().st_mode & 0o077 == 0
    key_file = Path(sbr_env["SBR_DATA_DIR"]) / "secret.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    base = f"http://127.0.0.1:{port}"
    login_page = opener.open(f"{base}/login").read().decode()
    token = login_page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    form = urllib.parse.urlencode({"username": "admin", "csrf_token": token,
                                   "password": password_file.read_text().strip(),
                                   "next": "/plugins"}).encode()
    page = opener.open(f"{base}/login", data=form).read().decode()
    assert 'data-plugin="filesystem"' in page
    api = json.loads(opener.open(f"{base}/api/v1/plugins").read())
    bundled = {e.name for e in entry_points(group="sbr")}
    assert {p["name"] for p in api} == bundled | {"sbr-notifications"}
    assert {"filesystem", "s3", "email", "webhook"} <= bundled


def test_second_server_on_a_taken_port_is_one_line(
        running_server: tuple[int, Any], sbr_env: dict[str, str]) -> None:
    port, _ = running_server
    assert_one_line_error(sbr("server", "--port", str(port), env=sbr_env), "already in use")
