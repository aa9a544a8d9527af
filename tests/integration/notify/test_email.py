"""The e-mail notifier against a real SMTP relay (aiosmtpd): STARTTLS, SMTPS, login, failures."""

from __future__ import annotations

import email
import email.policy
import logging
import socket
import time
from collections.abc import Iterator

import pytest

from sbr_core import notify
from sbr_core.errors import ProviderError
from sbr_core.events import BackupEvent, NodeEvent
from sbr_core.plugins import PluginHost
from sbr_core.secretbox import SecretBox
from sbr_plugins.email.notifier import EmailNotifier
from tests.integration.notify.conftest import (
    SMTP_PASSWORD,
    SMTP_USER,
    RelayCertificate,
    StartSmtp,
    mailer,
)

FAILED = BackupEvent(instance_name="web01", destination_name="nas1", workflow_id=41,
                     error="export failed: disk 'sda' could not be read (I/O error)")
FAST = notify.Retry(attempts=2, delays=(0.0,))


def parsed(content: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def test_failed_backup_is_mailed_over_starttls_with_login(
        smtp_server: StartSmtp, certificate: RelayCertificate) -> None:
    relay = smtp_server(tls="starttls", certificate=certificate, auth=True)
    notifier = mailer(relay.settings(security="starttls", ca_bundle=str(certificate.cert_file),
                                     username=SMTP_USER, password=SMTP_PASSWORD))

    deliveries = notify.dispatch(FAILED, [notifier], retry=FAST)

    assert deliveries == [notify.Delivery("ops-mail", True, 1)]
    [mail] = relay.received
    assert mail.tls and mail.login == SMTP_USER
    assert mail.mail_from == "sbr@example.net"
    assert mail.rcpt_tos == ["ops@example.net", "ba@example.net"]
    message = parsed(mail.content)
    assert message["Subject"] == "[SBR] Backup of 'web01' failed"
    assert message["To"] == "ops@example.net, Backup Admin <ba@example.net>"
    assert message["X-SBR-Event"] == "backup-failed"
    assert message["Auto-Submitted"] == "auto-generated"
    body = message.get_content()
    assert "web01" in body and "nas1" in body
    assert "export failed: disk 'sda' could not be read (I/O error)" in body


# aiosmtpd knows only STARTTLS as TLS; on SMTPS the login is encrypted all the same.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
def test_smtps_delivers_from_the_first_byte_encrypted(
        smtp_server: StartSmtp, certificate: RelayCertificate) -> None:
    relay = smtp_server(tls="ssl", certificate=certificate, auth=True)
    notifier = mailer(relay.settings(security="ssl", ca_bundle=str(certificate.cert_file),
                                     username=SMTP_USER, password=SMTP_PASSWORD))

    notifier.send(notify.build_notification(NodeEvent("node2", time.time(), 3)))  # type: ignore[arg-type]

    [mail] = relay.received
    assert mail.tls
    assert parsed(mail.content)["Subject"] == "[SBR] Node 'node2' lost"


def test_test_connection_logs_in_and_names_a_refused_password(
        smtp_server: StartSmtp, certificate: RelayCertificate) -> None:
    relay = smtp_server(tls="starttls", certificate=certificate, auth=True)
    settings = relay.settings(security="starttls", ca_bundle=str(certificate.cert_file),
                              username=SMTP_USER, password=SMTP_PASSWORD)
    assert EmailNotifier.can_test_connection()
    mailer(settings).test_connection()
    assert relay.logins == [(SMTP_USER, True)]
    assert relay.received == []  # a test sends nothing

    with pytest.raises(ProviderError, match="refused the user name or password") as caught:
        mailer({**settings, "password": "wrong-password"}).test_connection()
    assert caught.value.retryable is False
    assert "wrong-password" not in str(caught.value)


def test_an_untrusted_certificate_is_refused_and_not_retried(
        smtp_server: StartSmtp, certificate: RelayCertificate) -> None:
    relay = smtp_server(tls="starttls", certificate=certificate)
    notifier = mailer(relay.settings(security="starttls"))  # no CA bundle: the system's

    [delivery] = notify.dispatch(FAILED, [notifier], retry=FAST)

    assert not delivery.ok and delivery.attempts == 1
    assert "TLS certificate is not trusted" in delivery.error
    assert relay.received == []


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_refused_connection_is_retried_then_logged_never_raised(
        caplog: pytest.LogCaptureFixture) -> None:
    notifier = mailer({"host": "127.0.0.1", "port": str(_closed_port()), "security": "none",
                       "sender": "sbr@example.net", "recipients": "ops@example.net"})
    caplog.set_level(logging.INFO, logger="sbr.notify")

    [delivery] = notify.dispatch(FAILED, [notifier], retry=FAST)

    assert not delivery.ok and delivery.attempts == 2
    assert "ops-mail" in delivery.error and "refused" in delivery.error.lower()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "'ops-mail'" in warnings[0].getMessage()
    assert "Backup of 'web01' failed" in warnings[0].getMessage()


@pytest.fixture
def silent_relay() -> Iterator[int]:
    """A port that accepts connections and never says a word: an SMTP server that hangs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


def test_a_hanging_relay_never_delays_the_task_that_emits(
        silent_relay: int, host: PluginHost, box: SecretBox,
        caplog: pytest.LogCaptureFixture) -> None:
    notifier = mailer({"host": "127.0.0.1", "port": str(silent_relay), "security": "none",
                       "sender": "sbr@example.net", "recipients": "ops@example.net",
                       "timeout": "0.5"})
    listener = notify.install(host, box=box, load=lambda: [notifier],
                              retry=notify.Retry(attempts=1))
    caplog.set_level(logging.WARNING, logger="sbr.notify")
    try:
        started = time.monotonic()
        host.emit(FAILED)  # through the sbr_backup_failed hook, as the workflow tells it
        assert time.monotonic() - started < 0.3
        assert listener.wait_idle(timeout=10)
    finally:
        listener.close()
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "no answer within 0.5 s" in warning.getMessage()
    assert host.record(notify.LISTENER_NAME).kinds == ("events",)
