"""The ``email`` notifier: tells people about failed backups and lost nodes by mail (SMTP)."""

from __future__ import annotations

from sbr_core import hookimpl


@hookimpl
def sbr_register_notifiers() -> list[type]:
    """Contribute the e-mail notifier (standard library only: smtplib, email)."""
    from sbr_plugins.email.notifier import EmailNotifier

    return [EmailNotifier]
