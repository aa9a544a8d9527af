"""A real ``sbr server`` for the admin REST API and CLI tests, over HTTP.

``serving()`` starts ``sbr server --no-local-node --tick 0.5`` as a subprocess on a free
loopback port, over the ``database_url`` of the test (SQLite and MariaDB), with three users
made beforehand, all with the password :data:`PASSWORD`:

==========  ==========  ======================================
user        role        may
==========  ==========  ======================================
admin       admin       everything
operator    operator    view, operate (run backups, restores)
viewer      viewer      view
==========  ==========  ======================================

What it gives (:class:`ApiServer`):

- ``url``: ``http://127.0.0.1:PORT``; ``env``: the environment for ``sbr`` subprocesses
  (its data directory and database; ``XDG_CONFIG_HOME`` in the test's tmp_path, so
  ``sbr login`` never touches the real home); ``data_dir``; ``db`` (the open database of
  the ``database`` fixture: models are bound to it in the test process).
- ``token(user)``: a bearer token for that user (made once per test, through
  ``POST /api/v1/tokens``); ``client(user)``: an :class:`ApiClient` with it.
- ``call(method, path, body=None, user=None, token=None, raw=None, headers=None)``: one
  raw HTTP request to ``/api/v1`` + path that never raises; returns ``(status, json)``
  (``raw`` sends those bytes as the body instead of JSON, for malformed-body tests).
- ``sbr(*args, stdin="")``: run the real ``sbr`` command with ``env``.

The server's stderr is checked for tracebacks when the test ends.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sbr_core import accounts
from sbr_core.cli.api_client import ApiClient
from sbr_core.engine import nodes
from tests.cli_runs import SBR, free_port, sbr, terminate, wait_for_server

PASSWORD = "a long password"
USERS = {"admin": "admin", "operator": "operator", "viewer": "viewer"}


class ApiServer:
    """A running server and what tests need to talk to it (see the module doc)."""

    def __init__(self, url: str, env: dict[str, str], data_dir: Path, db: Any) -> None:
        self.url = url
        self.env = env
        self.data_dir = data_dir
        self.db = db
        self._tokens: dict[str, str] = {}

    def token(self, user: str = "admin") -> str:
        """A bearer token for ``user`` (one of :data:`USERS`), made on first use."""
        if user not in self._tokens:
            status, answer = self.call("POST", "/tokens", {
                "username": user, "password": PASSWORD, "name": f"test-{user}"})
            assert status == 201, answer
            self._tokens[user] = answer["token"]
        return self._tokens[user]

    def client(self, user: str = "admin") -> ApiClient:
        """An ApiClient acting as ``user``."""
        return ApiClient(self.url, self.token(user))

    def call(self, method: str, path: str, body: Any = None, *, user: str | None = None,
             token: str | None = None, raw: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """One request to ``/api/v1`` + ``path``; (status, parsed JSON or None). Never raises
        for an HTTP error status."""
        sent = dict(headers or {})
        data = raw
        if data is None and body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        if user is not None:
            token = self.token(user)
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.url + "/api/v1" + path, data=data,  # noqa: S310
                                         method=method, headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
                status, text = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read()
        return status, json.loads(text) if text else None

    def sbr(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        """Run ``sbr ARGS`` with this server's environment."""
        return sbr(*args, env=self.env, stdin=stdin, timeout=120)

    @contextmanager
    def node(self, name: str, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
        """A real ``sbr node`` ``name`` working for this server (polling fast, staging and
        log under ``tmp_path``); stopped, and its log checked for tracebacks, on leaving."""
        _, token = nodes.add_node(name)
        log = tmp_path / f"node-{name}.log"
        with log.open("w") as output:
            process = subprocess.Popen(
                [*SBR, "node", "--server", self.url, "--token", token, "--poll", "0.2",
                 "--heartbeat", "0.5", "--staging-dir", str(tmp_path / f"stage-{name}")],
                env=self.env, stdout=output, stderr=subprocess.STDOUT, text=True)
        try:
            yield process
        finally:
            terminate(process)
            assert "Traceback" not in log.read_text(), log.read_text()


class Cli:
    """Runs ``sbr`` as one user of the server (SBR_SERVER and SBR_TOKEN set)."""

    def __init__(self, server: ApiServer, user: str) -> None:
        self.env = {**server.env, "SBR_SERVER": server.url, "SBR_TOKEN": server.token(user)}

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return sbr(*args, env=self.env, timeout=timeout)


@contextmanager
def serving(tmp_path: Path, database: Any, database_url: str) -> Iterator[ApiServer]:
    """A real ``sbr server`` over ``database``, with admin/operator/viewer users; stopped,
    and its output checked for tracebacks, on leaving."""
    for name, role in USERS.items():
        accounts.add_user(name, PASSWORD, role=role)
    data = tmp_path / "server-data"
    data.mkdir()
    config_home = tmp_path / "config"
    env = {**os.environ, "SBR_DATA_DIR": str(data), "SBR_DATABASE_URL": database_url,
           "XDG_CONFIG_HOME": str(config_home)}
    for key in ("SBR_SERVER", "SBR_TOKEN", "SBR_DISABLE_PLUGINS"):
        env.pop(key, None)
    port = free_port()
    log = tmp_path / "server.log"  # a file, not a pipe: a chatty server never blocks on it
    with log.open("w") as output:
        process = subprocess.Popen(
            [*SBR, "server", "--port", str(port), "--no-local-node", "--tick", "0.5"],
            env=env, stdout=output, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_for_server(url + "/api/v1/health", process)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; server output:\n{log.read_text()}") from None
        yield ApiServer(url, env, data, database)
    finally:
        terminate(process)
        text = log.read_text()
        assert "Traceback" not in text, text
