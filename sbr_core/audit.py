"""The audit log: who did what, when, from where. Every admin action writes one row."""

from __future__ import annotations

import getpass
from typing import Any

from sbr_core.db.schema import AuditLog


def record(action: str, *, actor: str, target: str = "", detail: dict[str, Any] | None = None,
           remote_addr: str = "") -> None:
    """Append an audit row. ``detail`` must never hold secrets."""
    AuditLog.create(username=actor[:150], action=action, target=target[:255], detail=detail,
                    remote_addr=remote_addr[:64])


def cli_actor() -> str:
    """How the CLI names who acted: the local account."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"
