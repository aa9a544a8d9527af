"""The webhook notifier against a real HTTP server (http.server in a thread)."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest

from sbr_core import notify
from sbr_core.config import structure_config
from sbr_core.events import BackupEvent, TaskEvent
from sbr_core.providers import ProviderContext
from sbr_plugins.webhook.notifier import WebhookNotifier
from tests.webhooks import WebhookReceiver

SHARED_SECRET = "hook-Signing-Secret-42"
FAILED = BackupEvent(instance_name="db02", destination_name="s3-eu", workflow_id=7,
                     error="store failed: bucket refused the write (AccessDenied)")
FAST = notify.Retry(attempts=3, delays=(0.0,))


def webhook(values: dict[str, Any], name: str = "chatops") -> WebhookNotifier:
    """A webhook notifier built from settings as an admin would type them."""
    config = structure_config(WebhookNotifier.Config, values, subject=f"notifier {name!r}")
    return WebhookNotifier(config, context=ProviderContext(name=name))


def test_failed_backup_is_posted_as_json_with_a_valid_signature(
        webhook_receiver: WebhookReceiver) -> None:
    notifier = webhook({"url": webhook_receiver.url + "?team=ops", "secret": SHARED_SECRET,
                        "headers": "Authorization: Bearer t0ken-xyz\nX-Team: ops"})

    assert notify.dispatch(FAILED, [notifier], retry=FAST) == [
        notify.Delivery("chatops", True, 1)]

    [request] = webhook_receiver.received
    assert request.method == "POST" and request.path == "/hooks/sbr?team=ops"
    expected = hmac.new(SHARED_SECRET.encode(), request.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request.headers["x-sbr-signature"], f"sha256={expected}")
    assert request.headers["content-type"].startswith("application/json")
    assert request.headers["x-sbr-event"] == "backup-failed"
    assert request.headers["authorization"] == "Bearer t0ken-xyz"
    assert request.headers["x-team"] == "ops"
    payload = json.loads(request.body)
    assert payload["event"] == "backup-failed" and payload["severity"] == "error"
    assert payload["subject"] == "Backup of 'db02' failed"
    assert payload["data"]["instance_name"] == "db02"
    assert payload["data"]["error"] == FAILED.error
    assert payload["id"] == request.headers["x-sbr-delivery"]


def test_without_a_secret_nothing_is_signed(webhook_receiver: WebhookReceiver) -> None:
    event = TaskEvent(task_id=3, workflow_id=9, kind="restore", state="failed",
                      instance_name="db02", error="target path is read-only")
    notify.dispatch(event, [webhook({"url": webhook_receiver.url})], retry=FAST)
    [request] = webhook_receiver.received
    assert "x-sbr-signature" not in request.headers
    assert json.loads(request.body)["event"] == "task-failed"


def test_a_server_error_is_retried_and_fails_with_the_status(
        webhook_receiver: WebhookReceiver) -> None:
    webhook_receiver.status = 503
    [delivery] = notify.dispatch(FAILED, [webhook({"url": webhook_receiver.url})], retry=FAST)
    assert not delivery.ok and delivery.attempts == 3
    assert "HTTP 503" in delivery.error and "'chatops'" in delivery.error
    assert len(webhook_receiver.received) == 3
    ids = {r.headers["x-sbr-delivery"] for r in webhook_receiver.received}
    assert len(ids) == 1  # a receiver can drop repeats


def test_a_client_error_is_not_retried(webhook_receiver: WebhookReceiver) -> None:
    webhook_receiver.status = 404
    [delivery] = notify.dispatch(FAILED, [webhook({"url": webhook_receiver.url})], retry=FAST)
    assert not delivery.ok and delivery.attempts == 1
    assert "HTTP 404" in delivery.error


def test_a_redirect_is_not_followed(webhook_receiver: WebhookReceiver) -> None:
    webhook_receiver.status = 307
    webhook_receiver.extra_headers = {"Location": "http://127.0.0.1:9/elsewhere"}
    [delivery] = notify.dispatch(FAILED, [webhook({"url": webhook_receiver.url})], retry=FAST)
    assert not delivery.ok
    assert "HTTP 307" in delivery.error and "configure the final URL" in delivery.error
    assert len(webhook_receiver.received) == 1


@pytest.mark.parametrize("headers", ["no colon here", "X-SBR-Signature: forged",
                                     "Bad Name: x"])
def test_bad_extra_headers_are_refused_without_quoting_them(headers: str) -> None:
    from sbr_core.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        webhook({"url": "https://hooks.example.net/sbr", "headers": headers})
    assert set(caught.value.problems) == {"headers"}
    assert headers not in str(caught.value)
