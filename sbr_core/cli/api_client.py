"""The admin CLI's side of the REST API: JSON over HTTP with a user's bearer token.

Standard library only (:mod:`sbr_core.httpjson`), like the node's client. ``sbr login``
saves the server URL and a token to ``$XDG_CONFIG_HOME/sbr/credentials.json`` (mode
0600); ``$SBR_SERVER`` and ``$SBR_TOKEN`` override what is saved, so scripts need no file.
"""

from __future__ import annotations

import json
import os
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

from sbr_core.errors import SbrError, UsageError
from sbr_core.httpjson import NoAnswer, NotJson, Refused, call_json

API_PREFIX = "/api/v1"
NOT_LOGGED_IN = "not logged in: run `sbr login --server URL`"


class ApiError(SbrError):
    """The server refused a request, or could not be reached; ``status`` is the HTTP status
    (0 when there was no answer). The message is the server's own ``error`` text."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status
        # Same exit codes as the errors the server turned into these statuses.
        if status == 401 or status == 403:
            self.exit_code = 3
        elif 400 <= status < 500:
            self.exit_code = 2
        else:
            self.exit_code = 1
        self.http_status = status or 502


def credentials_path() -> Path:
    """Where ``sbr login`` keeps the server URL and token."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "sbr" / "credentials.json"


def load_credentials() -> dict[str, str]:
    """What ``sbr login`` saved (``server``, ``token``, ``username``), or ``{}``."""
    path = credentials_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UsageError(f"credentials: cannot read {path}: {exc}; run `sbr login` again") \
            from None
    if not isinstance(data, dict):
        raise UsageError(f"credentials: {path} is not a JSON object; run `sbr login` again")
    return {str(k): str(v) for k, v in data.items() if v is not None}


def save_credentials(data: dict[str, str]) -> Path:
    """Write the credentials file atomically, readable by its owner only."""
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".credentials.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=2)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_credentials() -> bool:
    """Delete the credentials file; False when there was none."""
    try:
        credentials_path().unlink()
    except FileNotFoundError:
        return False
    return True


def check_server_url(server: str) -> str:
    """``server`` without a trailing slash; UsageError unless it is an http(s) URL."""
    server = server.strip()
    parts = urllib.parse.urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"server: {server!r} is not an http:// or https:// URL")
    return server.rstrip("/")


def request_json(server: str, method: str, path: str, body: Any = None, *,
                 token: str | None = None, timeout: float = 30.0) -> Any:
    """One API call: ``method`` on ``server`` + ``/api/v1`` + ``path``; the parsed JSON
    answer (None when empty). ApiError for refusals and unreachable servers."""
    server = check_server_url(server)
    try:
        return call_json(server + API_PREFIX + path, method, body, token=token,
                         timeout=timeout)[1]
    except Refused as exc:
        raise _refusal(exc) from None
    except NoAnswer as exc:
        raise ApiError(f"cannot reach the server at {server}: {exc}") from None
    except NotJson:
        raise ApiError(f"the server at {server} did not answer with JSON "
                       f"({method} {path}); is it an SBR server?", status=502) from None


def _refusal(exc: Refused) -> ApiError:
    message = exc.message
    if exc.status == 401:
        return ApiError(f"{message or 'authentication required'}: run `sbr login`",
                        status=401)
    if exc.status == 403:
        return ApiError(f"permission denied: {message or 'your role does not allow this'}",
                        status=403)
    if exc.status == 404 and not message:
        message = f"not found: {exc.url}"
    return ApiError(message or f"the server answered HTTP {exc.status}", status=exc.status)


class ApiClient:
    """Calls ``/api/v1/*`` on ``server`` as the user the token belongs to."""

    def __init__(self, server: str, token: str, *, timeout: float = 30.0) -> None:
        self.server = check_server_url(server)
        self.token = token
        self.timeout = timeout

    @classmethod
    def from_environment(cls) -> ApiClient:
        """Server and token from ``$SBR_SERVER``/``$SBR_TOKEN``, else from ``sbr login``."""
        server = os.environ.get("SBR_SERVER", "").strip()
        token = os.environ.get("SBR_TOKEN", "").strip()
        if not (server and token):
            saved = load_credentials()
            saved_server = saved.get("server", "")
            # The saved token goes only to the server it came from.
            if not token and (not server or _same_server(server, saved_server)):
                token = saved.get("token", "")
            server = server or saved_server
        if not server or not token:
            raise UsageError(NOT_LOGGED_IN)
        return cls(server, token)

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        if not path.startswith("/"):
            path = "/" + path
        return request_json(self.server, method, path, body, token=self.token,
                            timeout=self.timeout)

    def get(self, path: str, **params: Any) -> Any:
        """GET ``path``; keyword arguments (None left out) become the query string."""
        query = {k: _query_value(v) for k, v in params.items() if v is not None}
        if query:
            path = f"{path}?{urllib.parse.urlencode(query)}"
        return self._call("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        """POST ``body`` as JSON to ``path``."""
        return self._call("POST", path, {} if body is None else body)

    def put(self, path: str, body: Any = None) -> Any:
        """PUT ``body`` as JSON to ``path``."""
        return self._call("PUT", path, {} if body is None else body)

    def delete(self, path: str, body: Any = None) -> Any:
        """DELETE ``path`` (with a JSON body, e.g. a confirmation)."""
        return self._call("DELETE", path, body)


def _same_server(one: str, other: str) -> bool:
    return one.strip().rstrip("/") == other.strip().rstrip("/")


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
