"""Fixtures for notifications: a real SMTP server (aiosmtpd) and a real HTTP server on loopback,
each on a port the kernel picks, a TLS certificate made for the test, and a plugin host with the
two bundled notifiers."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from sbr_core.config import structure_config
from sbr_core.plugins import PluginHost
from sbr_core.providers import ProviderContext
from sbr_core.secretbox import SecretBox, load_or_create_key
from sbr_plugins.email.notifier import EmailNotifier
from tests.services import service_unavailable
from tests.webhooks import WebhookReceiver, receiving_webhooks

SMTP_USER = "sbr-mailer"
SMTP_PASSWORD = "Mail-Pa55word-for-tests"


@pytest.fixture(autouse=True)
def no_proxy_for_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib would send loopback requests through a proxy named in the environment."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def host() -> PluginHost:
    """A fresh host with the bundled e-mail and webhook notifiers, as their entry points add
    them."""
    import sbr_plugins.email
    import sbr_plugins.webhook

    plugins = PluginHost()
    plugins.add(sbr_plugins.email, name="email")
    plugins.add(sbr_plugins.webhook, name="webhook")
    return plugins


@pytest.fixture
def box(tmp_path: Path) -> SecretBox:
    return SecretBox(load_or_create_key(tmp_path / "secret.key"))


# --- TLS -----------------------------------------------------------------------------------


@attrs.frozen
class RelayCertificate:
    """A self-signed certificate for 127.0.0.1 and localhost: PEM files and contexts."""

    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> RelayCertificate:
    """Made with ``cryptography`` (EC P-256, quick); clients trust it through ``ca_bundle``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sbr test relay")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "relay.pem", folder / "relay.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return RelayCertificate(cert_file, key_file)


# --- SMTP ----------------------------------------------------------------------------------


@attrs.define
class ReceivedMail:
    """One message the test relay accepted."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool
    login: str | None


@attrs.define
class SmtpServer:
    """A running aiosmtpd relay and what it received."""

    port: int
    received: list[ReceivedMail]
    logins: list[tuple[str, bool]]  # (user, accepted)

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """E-mail notifier settings that reach this relay."""
        values: dict[str, Any] = {"host": "127.0.0.1", "port": str(self.port),
                                  "security": "none", "sender": "SBR <sbr@example.net>",
                                  "recipients": "ops@example.net, Backup Admin <ba@example.net>",
                                  "timeout": "5"}
        values.update(overrides)
        return values


StartSmtp = Callable[..., SmtpServer]


def mailer(values: dict[str, Any], name: str = "ops-mail") -> EmailNotifier:
    """An e-mail notifier built from settings as an admin would type them."""
    config = structure_config(EmailNotifier.Config, values, subject=f"notifier {name!r}")
    return EmailNotifier(config, context=ProviderContext(name=name))


@pytest.fixture
def smtp_server() -> Iterator[StartSmtp]:
    """Start relays: ``start(tls=None|"starttls"|"ssl", certificate=…, auth=False)``."""
    try:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult
    except ImportError:
        service_unavailable("aiosmtpd is not installed (pip install -e '.[test]')")
        raise

    class _Controller(Controller):
        """Listens on port 0 and learns the port the kernel gave before checking it."""

        def _trigger_server(self) -> None:
            server: Any = self.server
            self.port = server.sockets[0].getsockname()[1]
            super()._trigger_server()  # type: ignore[no-untyped-call]

    running: list[Any] = []

    def start(tls: str | None = None, certificate: RelayCertificate | None = None,
              auth: bool = False) -> SmtpServer:
        server = SmtpServer(0, [], [])

        class Handler:
            async def handle_DATA(self, smtp: Any, session: Any, envelope: Any) -> str:
                login = session.auth_data if session.authenticated else None
                # After STARTTLS, and on SMTPS from the start, the transport speaks TLS.
                tls = smtp.transport.get_extra_info("ssl_object") is not None
                server.received.append(ReceivedMail(
                    envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content,
                    tls, login))
                return "250 OK"

        def authenticator(smtp: Any, session: Any, envelope: Any, mechanism: str,
                          auth_data: Any) -> AuthResult:
            user = auth_data.login.decode()
            ok = user == SMTP_USER and auth_data.password.decode() == SMTP_PASSWORD
            server.logins.append((user, ok))
            return AuthResult(success=ok, handled=False, auth_data=user)

        kwargs: dict[str, Any] = {"hostname": "127.0.0.1", "port": 0,
                                  "server_hostname": "relay.test", "ready_timeout": 10}
        if tls == "starttls":
            assert certificate is not None
            kwargs.update(tls_context=certificate.server_context(), require_starttls=True)
        elif tls == "ssl":
            assert certificate is not None
            kwargs.update(ssl_context=certificate.server_context())
        if auth:
            # aiosmtpd counts only STARTTLS as TLS; SMTPS is encrypted from the start.
            kwargs.update(authenticator=authenticator, auth_required=True,
                          auth_require_tls=tls != "ssl")
        controller = _Controller(Handler(), **kwargs)
        controller.start()
        running.append(controller)
        server.port = controller.port
        return server

    yield start
    for controller in running:
        controller.stop()


# --- HTTP ----------------------------------------------------------------------------------


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """http.server in a thread on 127.0.0.1, on a port the kernel picks."""
    with receiving_webhooks() as receiver:
        yield receiver
