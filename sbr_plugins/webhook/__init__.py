"""The ``webhook`` notifier: POSTs each notification as JSON to a URL, optionally signed."""

from __future__ import annotations

from sbr_core import hookimpl


@hookimpl
def sbr_register_notifiers() -> list[type]:
    """Contribute the webhook notifier (standard library only: urllib, hmac)."""
    from sbr_plugins.webhook.notifier import WebhookNotifier

    return [WebhookNotifier]
