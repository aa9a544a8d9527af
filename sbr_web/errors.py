"""SBR's errors as HTTP answers for the JSON APIs, and strict JSON request bodies."""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, request

from sbr_core.errors import SbrError, UsageError


def json_body() -> dict[str, Any]:
    """The request's JSON object; UsageError (400) for anything else."""
    body = request.get_json(silent=True)
    if body is None and not request.data:
        return {}
    if not isinstance(body, dict):
        raise UsageError("the request body must be a JSON object")
    return body


def init_app(app: Flask) -> None:
    """Answer API requests that raise an SbrError with its message and its ``http_status``."""

    @app.errorhandler(SbrError)
    def _sbr_error(exc: SbrError) -> Any:
        return jsonify(error=str(exc)), exc.http_status
