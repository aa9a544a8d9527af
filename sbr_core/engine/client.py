"""The node's side of the node API: JSON over HTTP with the node's bearer token.

Standard library only (:mod:`sbr_core.httpjson`): a node needs a handful of calls, over a
connection kept open per thread.
"""

from __future__ import annotations

from typing import Any

from sbr_core.errors import AuthError, LeaseLost, SbrError, UsageError
from sbr_core.httpjson import JsonSession, NoAnswer, NotJson, Refused

#: A node opens a new connection after this many calls, so that the server's worker
#: processes (``sbr server --workers``) share the nodes' calls over time.
CALLS_PER_CONNECTION = 50


class ServerUnreachable(SbrError):
    """The server did not answer (down, restarting, network): try again later."""


class NodeClient:
    """Calls ``/api/v1/node/*`` on ``server_url`` as the node the token belongs to."""

    def __init__(self, server_url: str, token: str, *, timeout: float = 30.0) -> None:
        if not server_url.startswith(("http://", "https://")):
            raise UsageError(f"server: {server_url!r} is not an http:// or https:// URL")
        self.base = server_url.rstrip("/") + "/api/v1/node"
        self.session = JsonSession(self.base, token=token, timeout=timeout,
                                   calls_per_connection=CALLS_PER_CONNECTION)

    def _post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        try:
            return self.session.call("POST", path, body)
        except Refused as exc:
            message = exc.message or f"HTTP {exc.status}"
            if exc.status == 401:
                raise AuthError(f"the server refused this node's token: {message}") from None
            if exc.status == 409:
                raise LeaseLost(message) from None
            if exc.status >= 500:
                raise ServerUnreachable(f"server error: {message}") from None
            raise UsageError(f"the server refused the request: {message}") from None
        except (NoAnswer, NotJson) as exc:
            raise ServerUnreachable(f"cannot reach the server at {self.base}: {exc}") \
                from None

    def register(self, *, version: str, staging_path: str, free_bytes: int) -> dict[str, Any]:
        _, answer = self._post("/register", {"version": version, "staging_path": staging_path,
                                             "free_bytes": free_bytes})
        return dict(answer or {})

    def claim(self) -> dict[str, Any] | None:
        """A work order, or None when there is no work for this node."""
        status, answer = self._post("/claim", {})
        return dict(answer) if status == 200 and answer else None

    def heartbeat(self, task_id: int, attempt: int, *, done: int, total: int, speed: int,
                  log: list[tuple[str, str]]) -> bool:
        """Renew the lease; True when the workflow is being cancelled. LeaseLost when the
        task is no longer this node's."""
        _, answer = self._post(f"/tasks/{task_id}/heartbeat", {
            "attempt": attempt, "done": done, "total": total, "speed": speed,
            "log": [list(line) for line in log]})
        return bool((answer or {}).get("cancel"))

    def finish(self, task_id: int, attempt: int, *, state: str,
               result: dict[str, Any] | None, error: str,
               log: list[tuple[str, str]]) -> dict[str, Any] | None:
        """Report the end of a task; returns the next task of the workflow, if any, as
        ``{"task": {...}}``: the rest of its work order is the claim's."""
        _, answer = self._post(f"/tasks/{task_id}/finish", {
            "attempt": attempt, "state": state, "result": result or {}, "error": error,
            "log": [list(line) for line in log]})
        following = (answer or {}).get("next")
        return dict(following) if following else None
