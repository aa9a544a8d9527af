"""JSON over HTTP as nodes and the CLI use it, against a real HTTP server on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from sbr_core.httpjson import JsonSession, NoAnswer, NotJson, Refused, call_json
from tests.cli_runs import free_port


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server: _Server

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.seen.append((self.path, self.client_address[1],
                                 self.headers.get("Authorization"), json.loads(body or b"null")))
        if self.path == "/refuse":
            self._answer(409, json.dumps({"error": "attempt 2 is stale"}).encode())
        elif self.path == "/html":
            self._answer(200, b"<html>not json</html>")
        elif self.path == "/empty":
            self._answer(204, b"")
        else:
            self._answer(200, json.dumps({"echo": self.path}).encode())
        if self.path == "/then-close":
            self.close_connection = True  # as a server does with a connection left idle

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        if body:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.seen: list[tuple[str, int, str | None, Any]] = []


@pytest.fixture
def server() -> Iterator[_Server]:
    httpd = _Server(free_port())
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _base(server: _Server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_calls_share_one_connection_and_carry_the_token(server: _Server) -> None:
    session = JsonSession(_base(server) + "/api", token="sbrn_secret")
    assert session.call("POST", "/a", {"n": 1}) == (200, {"echo": "/api/a"})
    assert session.call("POST", "/b") == (200, {"echo": "/api/b"})
    assert [s[0] for s in server.seen] == ["/api/a", "/api/b"]
    assert server.seen[0][1] == server.seen[1][1]  # the same client port: one connection
    assert {s[2] for s in server.seen} == {"Bearer sbrn_secret"}
    assert server.seen[0][3] == {"n": 1}


def test_a_connection_the_server_closed_is_replaced_and_the_call_made_once(
        server: _Server) -> None:
    session = JsonSession(_base(server))
    session.call("POST", "/then-close")
    assert session.call("POST", "/after") == (200, {"echo": "/after"})
    assert [s[0] for s in server.seen] == ["/then-close", "/after"]
    assert server.seen[0][1] != server.seen[1][1]


def test_each_thread_has_its_own_connection(server: _Server) -> None:
    session = JsonSession(_base(server))
    session.call("POST", "/main")
    other = threading.Thread(target=session.call, args=("POST", "/thread"))
    other.start()
    other.join(10)
    ports = {path: port for path, port, _, _ in server.seen}
    assert ports["/main"] != ports["/thread"]


def test_errors_are_told_apart(server: _Server) -> None:
    session = JsonSession(_base(server))
    with pytest.raises(Refused) as refused:
        session.call("POST", "/refuse")
    assert (refused.value.status, refused.value.message) == (409, "attempt 2 is stale")
    with pytest.raises(NotJson):
        session.call("POST", "/html")
    assert session.call("POST", "/empty") == (204, None)
    with pytest.raises(NoAnswer):
        JsonSession(f"http://127.0.0.1:{free_port()}").call("GET", "/")


def test_the_one_off_call_takes_a_whole_url(server: _Server) -> None:
    assert call_json(_base(server) + "/x?y=1", "POST", {}) == (200, {"echo": "/x?y=1"})
    with pytest.raises(NoAnswer):
        call_json("ftp://example.invalid/", "GET")


def test_a_session_can_open_a_new_connection_every_few_calls(server: _Server) -> None:
    session = JsonSession(_base(server), calls_per_connection=2)
    for index in range(5):
        session.call("POST", f"/{index}")
    ports = [port for _, port, _, _ in server.seen]
    assert ports[0] == ports[1] != ports[2] == ports[3] != ports[4]
