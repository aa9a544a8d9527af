"""Configured notifiers: stored as connections, chosen by their events, sent in the background.

Runs on SQLite and MariaDB (the ``database`` fixture), because the server's worker threads read
the notifier connections with their own database connections.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
import peewee as pw
import pytest

from sbr_core import connections, hookimpl, notify
from sbr_core.db.schema import ProviderConnection
from sbr_core.errors import ConfigError
from sbr_core.events import BackupEvent, NodeEvent, TaskEvent
from sbr_core.plugins import PluginHost
from sbr_core.providers import EventKind, Notifier, ProviderKind
from sbr_core.secretbox import SecretBox
from sbr_core.settings import Secret, setting
from sbr_plugins.email.notifier import EmailNotifier
from tests.integration.notify.conftest import (
    SMTP_PASSWORD,
    SMTP_USER,
    RelayCertificate,
    StartSmtp,
    WebhookReceiver,
    mailer,
)

NOTIFIER = ProviderKind.NOTIFIER
SUCCEEDED = BackupEvent(instance_name="web01", destination_name="nas1", workflow_id=5,
                        backup_id="b-0001", full=True, bytes_read=2 * 2**30,
                        bytes_stored=300 * 2**20, duration_s=95.0)
FAILED = BackupEvent(instance_name="web01", destination_name="nas1", workflow_id=6,
                     error="snapshot failed: the guest agent did not answer")
FAST = notify.Retry(attempts=2, delays=(0.0,))


def subjects(relay: Any) -> list[str]:
    import email

    return [email.message_from_bytes(m.content)["Subject"] for m in relay.received]


def test_a_notifier_that_wants_only_failures_gets_no_mail_for_a_success(
        database: pw.Database, host: PluginHost, box: SecretBox,
        smtp_server: StartSmtp) -> None:
    relay = smtp_server()
    connections.save(NOTIFIER, "failures-only", "email", relay.settings(), host=host, box=box)
    connections.save(NOTIFIER, "everything", "email",
                     relay.settings(on_backup_succeeded="yes", recipients="all@example.net"),
                     host=host, box=box)
    notifiers = notify.load_notifiers(host=host, box=box)
    assert [n.context.name for n in notifiers] == ["everything", "failures-only"]

    assert notify.dispatch(SUCCEEDED, notifiers, retry=FAST) == [
        notify.Delivery("everything", True, 1)]
    assert [m.rcpt_tos for m in relay.received] == [["all@example.net"]]
    assert "2.0 GiB" in relay.received[0].content.decode()

    relay.received.clear()
    assert [d.notifier for d in notify.dispatch(FAILED, notifiers, retry=FAST)] == [
        "everything", "failures-only"]
    assert subjects(relay) == ["[SBR] Backup of 'web01' failed"] * 2


def test_task_failures_are_told_once_and_other_task_states_not_at_all(
        host: PluginHost, smtp_server: StartSmtp) -> None:
    relay = smtp_server()
    notifiers = [mailer(relay.settings())]
    store_failed = TaskEvent(1, 6, "store", "failed", "web01", "node1", "destination full")
    restore_failed = TaskEvent(2, 8, "restore", "failed", "web01", "node1", "no space left")
    for event in (TaskEvent(2, 8, "restore", "running"), TaskEvent(2, 8, "restore", "succeeded"),
                  TaskEvent(2, 8, "restore", "cancelled"), store_failed):
        assert notify.dispatch(event, notifiers, retry=FAST) == []
    assert notify.dispatch(restore_failed, notifiers, retry=FAST)[0].ok
    assert subjects(relay) == ["[SBR] Task 2 (restore) for 'web01' failed"]
    assert notify.build_notification(store_failed) is None  # told as "backup failed"
    # the engine names a task's kind "workflow.step"
    engine_store_failed = TaskEvent(1, 6, "backup.store", "failed", "web01", "node1", "full")
    assert notify.build_notification(engine_store_failed) is None


def test_the_server_listener_sends_from_its_workers_what_the_database_configures(
        database: pw.Database, host: PluginHost, box: SecretBox, smtp_server: StartSmtp,
        certificate: RelayCertificate, webhook_receiver: WebhookReceiver) -> None:
    relay = smtp_server(tls="starttls", certificate=certificate, auth=True)
    connections.save(NOTIFIER, "ops-mail", "email",
                     relay.settings(security="starttls", ca_bundle=str(certificate.cert_file),
                                    username=SMTP_USER, password=SMTP_PASSWORD),
                     host=host, box=box)
    connections.save(NOTIFIER, "chatops", "webhook",
                     {"url": webhook_receiver.url, "on_node_lost": "no"}, host=host, box=box)
    listener = notify.install(host, box=box, retry=FAST)
    try:
        host.emit(NodeEvent("node2", last_seen=time.time() - 90, tasks_requeued=2))
        host.emit(TaskEvent(3, 9, "mount", "failed", "web01", "node1", "nbd export failed"))
        assert listener.wait_idle(timeout=30)
    finally:
        listener.close()
    assert sorted(subjects(relay)) == ["[SBR] Node 'node2' lost",
                                       "[SBR] Task 3 (mount) for 'web01' failed"]
    assert [r.headers["x-sbr-event"] for r in webhook_receiver.received] == ["task-failed"]


def test_a_broken_notifier_connection_is_skipped_and_the_others_still_send(
        database: pw.Database, host: PluginHost, box: SecretBox, smtp_server: StartSmtp,
        caplog: pytest.LogCaptureFixture) -> None:
    relay = smtp_server()
    connections.save(NOTIFIER, "good", "email", relay.settings(), host=host, box=box)
    ProviderConnection.create(name="gone", kind="notifier", plugin="pager", settings={})
    notifiers = notify.load_notifiers(host=host, box=box)
    assert [n.context.name for n in notifiers] == ["good"]
    assert "notifier 'gone' is skipped: no notifier plugin named 'pager'" in caplog.text


@pytest.mark.parametrize(("plugin", "values", "field"), [
    ("email", {"port": "0"}, "port"),
    ("email", {"recipients": ""}, "recipients"),
    ("email", {"recipients": "ops@example.net, not an address"}, "recipients"),
    ("email", {"sender": "a@example.net, b@example.net"}, "sender"),
    ("email", {"security": "tls13"}, "security"),
    ("email", {"username": "u", "password": "long-enough"}, "password"),  # in clear: refused
    ("email", {"timeout": "0"}, "timeout"),
    ("email", {"on_node_lost": "maybe"}, "on_node_lost"),
    ("webhook", {"url": "ftp://files.example.net/in"}, "url"),
    ("webhook", {"url": "https://user:pw@hooks.example.net/"}, "url"),
    ("webhook", {"url": "hooks.example.net/sbr"}, "url"),
])
def test_bad_settings_name_the_field_and_store_nothing(
        database: pw.Database, host: PluginHost, box: SecretBox, plugin: str,
        values: dict[str, str], field: str) -> None:
    base = ({"host": "smtp.example.net", "sender": "sbr@example.net",
             "recipients": "ops@example.net", "security": "none"}
            if plugin == "email" else {"url": "https://hooks.example.net/sbr"})
    with pytest.raises(ConfigError) as caught:
        connections.save(NOTIFIER, "n1", plugin, {**base, **values}, host=host, box=box)
    assert list(caught.value.problems) == [field]
    assert "notifier 'n1'" in str(caught.value)
    assert ProviderConnection.select().count() == 0


def test_secrets_are_never_described_nor_stored_in_clear(
        database: pw.Database, host: PluginHost, box: SecretBox) -> None:
    clear = {"password": "Smtp-Secret-Pa55", "secret": "Hmac-Secret-Value",
             "headers": "Authorization: Bearer Header-Token-77"}
    connections.save(NOTIFIER, "mail", "email",
                     {"host": "smtp.example.net", "sender": "sbr@example.net",
                      "recipients": "ops@example.net", "username": "sbr",
                      "password": clear["password"]}, host=host, box=box)
    connections.save(NOTIFIER, "hook", "webhook",
                     {"url": "https://hooks.example.net/sbr", "secret": clear["secret"],
                      "headers": clear["headers"]}, host=host, box=box)

    mail = connections.describe(NOTIFIER, "mail", host=host, box=box)
    hook = connections.describe(NOTIFIER, "hook", host=host, box=box)
    assert mail["settings"]["password"] == "(set)"
    assert hook["settings"]["secret"] == "(set)" and hook["settings"]["headers"] == "(set)"
    assert mail["settings"]["on_backup_failed"] is True  # the common event choices
    assert mail["settings"]["on_backup_succeeded"] is False
    rows = [(r.settings, r.secrets) for r in ProviderConnection.select()]
    for value in clear.values():
        assert value not in repr(mail) + repr(hook)
        assert value not in repr(rows)
    [opened] = [n for n in notify.load_notifiers(host=host, box=box)
                if n.context.name == "mail"]
    assert isinstance(opened, EmailNotifier)
    assert opened.config.password == Secret(clear["password"])


def test_a_notifier_whose_config_lacks_the_event_choices_is_unavailable() -> None:
    @attrs.frozen
    class PagerConfig:
        number: str = setting(label="Number")

    class Pager(Notifier):
        name = "pager"
        label = "Pager"
        Config = PagerConfig  # type: ignore[assignment]

        def send(self, notification: notify.Notification) -> None:
            """Never called: the host refuses the class."""

    class PagerPlugin:
        @hookimpl
        def sbr_register_notifiers(self) -> list[type]:
            return [Pager]

    host = PluginHost()
    host.add(PagerPlugin(), name="pager")
    assert host.notifiers() == {}
    record = host.record("pager")
    assert record.status == "unavailable"
    assert "does not derive from NotifierConfig" in record.reason


def test_notification_text_never_carries_a_known_secret() -> None:
    leaked = Secret("Leaky-Token-1234")
    event = BackupEvent("web01", "s3", 1, error=f"auth failed with key {leaked.reveal()}")
    notification = notify.build_notification(event)
    assert notification is not None and notification.kind is EventKind.BACKUP_FAILED
    assert leaked.reveal() not in notification.body + repr(notification.to_json())
    assert "auth failed with key ********" in notification.body
