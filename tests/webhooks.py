"""A webhook receiver for tests: a real HTTP server on loopback that records each POST."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import attrs


@attrs.define
class ReceivedRequest:
    """One request the test webhook receiver got."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@attrs.define
class WebhookReceiver:
    """A running HTTP server; answers ``status`` (and ``extra_headers``) to every POST."""

    url: str
    received: list[ReceivedRequest]
    status: int = 204
    extra_headers: dict[str, str] = attrs.Factory(dict)

    def events(self) -> list[str]:
        """The ``X-SBR-Event`` of each request so far, in order."""
        return [request.headers.get("x-sbr-event", "") for request in self.received]

    def wait_for(self, event: str, timeout: float = 30) -> ReceivedRequest:
        """The first request telling ``event``, waiting for it to come."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for request in list(self.received):
                if request.headers.get("x-sbr-event") == event:
                    return request
            time.sleep(0.05)
        raise AssertionError(f"no {event} webhook within {timeout:.0f} s; got {self.events()}")


@contextmanager
def receiving_webhooks() -> Iterator[WebhookReceiver]:
    """http.server in a thread on 127.0.0.1, on a port the kernel picks."""
    receiver = WebhookReceiver("", [])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            receiver.received.append(ReceivedRequest(
                "POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(receiver.status)
            for name, value in receiver.extra_headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep the test output quiet

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    receiver.url = f"http://127.0.0.1:{httpd.server_address[1]}/hooks/sbr"
    try:
        yield receiver
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
