"""One JSON call over HTTP with the standard library: what the node's client and the
admin CLI's client share. Each maps the outcomes to its own errors."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
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


def call_json(url: str, method: str, body: Any = None, *, token: str | None = None,
              timeout: float = 30.0) -> tuple[int, Any]:
    """``method`` on ``url`` (http or https: the callers check), ``body`` sent as JSON;
    the status and parsed answer (None when empty)."""
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method,  # noqa: S310
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        try:
            answer = json.loads(exc.read())
            message = str(answer.get("error", "")) if isinstance(answer, dict) else ""
        except (ValueError, OSError):
            message = ""
        raise Refused(exc.code, message, url) from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise NoAnswer(str(getattr(exc, "reason", exc))) from None
    if not raw:
        return status, None
    try:
        return status, json.loads(raw)
    except ValueError:
        raise NotJson(url) from None
