"""JSON calls over HTTP with the standard library: what the node's client and the admin
CLI's client share. Each maps the outcomes to its own errors.

:class:`JsonSession` keeps one connection open per thread (HTTP/1.1 keep-alive): a node
calls its server several times a second, and a new TCP connection and request opener for
each call cost both ends more than the call's own work. :func:`call_json` is the one-off.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import urllib.parse
from typing import Any


class Refused(Exception):
    """The server answered with an error status; ``message`` is its ``error`` text."""

    def __init__(self, status: int, message: str, url: str) -> None:
        super().__init__(message or f"HTTP {status}")
        self.status, self.message, self.url = status, message, url


class NoAnswer(Exception):
    """The server could not be reached, or did not answer in time."""


class NotJson(Exception):
    """The answer was not JSON (something else listens there)."""


# A kept-alive connection the server closed while idle fails like this on the next request,
# before the server read any of it: that one request is sent again on a new connection.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class JsonSession:
    """Calls under ``base_url`` (http or https: the callers check) over a connection kept
    open per thread."""

    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 30.0,
                 calls_per_connection: int = 0) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{base_url!r} is not an http:// or https:// URL")
        self.base_url = base_url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._prefix = parts.path.rstrip("/")
        self.token, self.timeout = token, timeout
        # 0: keep a connection as long as it lasts. A server with several worker processes
        # gets each new connection from the kernel at random; a client that opens a new one
        # now and then is spread over them in time, not tied to one for good.
        self.calls_per_connection = calls_per_connection
        self._local = threading.local()

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """``method`` on ``base_url + path``, ``body`` sent as JSON; the status and the
        parsed answer (None when empty)."""
        url = self.base_url + path
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            status, raw = self._exchange(method, self._prefix + path, data, headers)
        except (OSError, http.client.HTTPException, TimeoutError) as exc:
            self.close()
            raise NoAnswer(str(exc) or type(exc).__name__) from None
        if status >= 400:
            raise Refused(status, _error_text(raw), url)
        if not raw:
            return status, None
        try:
            return status, json.loads(raw)
        except ValueError:
            raise NotJson(url) from None

    def _exchange(self, method: str, target: str, data: bytes | None,
                  headers: dict[str, str]) -> tuple[int, bytes]:
        connection = getattr(self._local, "connection", None)
        reused = connection is not None
        if connection is None:
            connection = self._connect()
        try:
            connection.request(method, target, body=data, headers=headers)
            response = connection.getresponse()
        except _STALE:
            connection.close()
            self._local.connection = None
            if not reused:
                raise
            connection = self._connect()
            connection.request(method, target, body=data, headers=headers)
            response = connection.getresponse()
        raw = response.read()
        self._local.calls = getattr(self._local, "calls", 0) + 1
        if response.will_close or (self.calls_per_connection
                                   and self._local.calls >= self.calls_per_connection):
            connection.close()
            self._local.connection = None
        return response.status, raw

    def _connect(self) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        connection = kind(self._host, self._port, timeout=self.timeout)
        connection.connect()
        # Small requests and answers go out at once, not after the peer's delayed ACK.
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._local.connection, self._local.calls = connection, 0
        return connection

    def close(self) -> None:
        """Close this thread's connection (the next call opens a new one)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


def call_json(url: str, method: str, body: Any = None, *, token: str | None = None,
              timeout: float = 30.0) -> tuple[int, Any]:
    """One call on its own connection; see :meth:`JsonSession.call`."""
    parts = urllib.parse.urlsplit(url)
    target = urllib.parse.urlunsplit(("", "", parts.path, parts.query, ""))
    try:
        session = JsonSession(f"{parts.scheme}://{parts.netloc}", token=token,
                              timeout=timeout)
    except ValueError as exc:
        raise NoAnswer(str(exc)) from None
    try:
        return session.call(method, target or "/", body)
    finally:
        session.close()


def _error_text(raw: bytes) -> str:
    try:
        answer = json.loads(raw)
    except ValueError:
        return ""
    return str(answer.get("error", "")) if isinstance(answer, dict) else ""
