"""Sending notifications as mail through an SMTP relay (smtplib), SMTP errors translated."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid
from typing import TYPE_CHECKING

from sbr_core.errors import ProviderError
from sbr_core.providers import Notifier
from sbr_plugins.email.config import EmailConfig, addresses

if TYPE_CHECKING:  # the server's notify module pulls in the database layer
    from sbr_core.notify import Notification


class EmailNotifier(Notifier):
    """One mail per notification, to every configured recipient, in plain text."""

    name = "email"
    label = "E-mail (SMTP)"
    description = "Mail through an SMTP relay, with STARTTLS or SSL/TLS and optional login."
    Config = EmailConfig

    config: EmailConfig

    def send(self, notification: Notification) -> None:
        """Mail ``notification``; a recipient the relay refuses fails the delivery."""
        message = self.message(notification)
        sender = addresses(self.config.sender)[0][1]
        recipients = [address for _, address in addresses(self.config.recipients)]
        with self._connection("send the mail") as smtp:
            refused = smtp.send_message(message, from_addr=sender, to_addrs=recipients)
        if refused:
            # Some recipients have the mail: trying again would send it to them twice.
            raise ProviderError(f"{self._subject()}: the mail was sent, but the relay refused "
                                f"{_refusals(refused)}")

    def test_connection(self) -> None:
        """Connect, say EHLO, start TLS and log in as configured; send nothing."""
        with self._connection("connect"):
            pass

    def message(self, notification: Notification) -> EmailMessage:
        """The mail for ``notification``: plain text, marked as automatically sent."""
        config = self.config
        subject = " ".join(f"{config.subject_prefix} {notification.subject}".split())
        sender_name, sender = addresses(config.sender)[0]
        message = EmailMessage()
        message["Subject"] = subject
        message["From"] = formataddr((sender_name, sender))
        message["To"] = ", ".join(formataddr(pair) for pair in addresses(config.recipients))
        message["Date"] = formatdate(localtime=True)
        # A domain given here spares make_msgid a DNS lookup of this host's name.
        message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2])
        message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies
        message["X-SBR-Event"] = notification.kind.value
        message["X-SBR-Severity"] = notification.severity
        message["X-SBR-Notification-ID"] = notification.id
        message.set_content(f"{notification.body}\n-- \nSBR on {notification.origin}\n")
        return message

    # --- the SMTP session -----------------------------------------------------------------

    def _subject(self) -> str:
        return f"notifier {self.context.name!r}"

    def _where(self) -> str:
        return f"SMTP server {self.config.host}:{self.config.port}"

    @contextmanager
    def _connection(self, action: str) -> Iterator[smtplib.SMTP]:
        """An SMTP session, greeted, encrypted and logged in as configured."""
        config = self.config
        with self._translated(action):
            context = self._tls_context() if config.security != "none" else None
            smtp: smtplib.SMTP
            if config.security == "ssl":
                smtp = smtplib.SMTP_SSL(config.host, config.port, timeout=config.timeout,
                                        context=context)
            else:
                smtp = smtplib.SMTP(config.host, config.port, timeout=config.timeout)
            try:
                smtp.ehlo()
                if config.security == "starttls":
                    smtp.starttls(context=context)
                    smtp.ehlo()
                if config.username:
                    smtp.login(config.username, config.password.reveal())
                yield smtp
                smtp.quit()
            finally:
                smtp.close()

    def _tls_context(self) -> ssl.SSLContext:
        path = self.config.ca_bundle
        try:
            return ssl.create_default_context(cafile=path or None)
        except (OSError, ssl.SSLError) as exc:
            raise ProviderError(f"{self._subject()}: CA bundle {path} cannot be read: "
                                f"{getattr(exc, 'strerror', None) or exc}") from None

    @contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        """SMTP, TLS and socket errors as ProviderErrors that name the notifier and relay."""
        prefix = f"{self._subject()}: cannot {action} through {self._where()}"
        try:
            yield
        except ProviderError:
            raise
        except smtplib.SMTPAuthenticationError as exc:
            raise ProviderError(f"{prefix}: it refused the user name or password "
                                f"({_reply(exc)})") from None
        except smtplib.SMTPNotSupportedError as exc:
            raise ProviderError(f"{prefix}: {exc} (check the security setting)") from None
        except smtplib.SMTPRecipientsRefused as exc:
            temporary = all(400 <= code < 500 for code, _ in exc.recipients.values())
            raise ProviderError(f"{prefix}: it refused {_refusals(exc.recipients)}",
                                retryable=temporary) from None
        except smtplib.SMTPResponseException as exc:
            # 4xx is "try again later" (greylisting, a full queue); 5xx is final.
            raise ProviderError(f"{prefix}: {_reply(exc)}",
                                retryable=400 <= exc.smtp_code < 500) from None
        except smtplib.SMTPServerDisconnected as exc:
            # smtplib reports a read that timed out as a disconnection.
            if isinstance(exc.__context__, TimeoutError):
                raise ProviderError(f"{prefix}: no answer within {self.config.timeout:g} s",
                                    retryable=True) from None
            raise ProviderError(f"{prefix}: the connection was closed ({exc})",
                                retryable=True) from None
        except ssl.SSLCertVerificationError as exc:
            raise ProviderError(f"{prefix}: its TLS certificate is not trusted "
                                f"({exc.verify_message}); set a CA bundle") from None
        except ssl.SSLError as exc:
            raise ProviderError(f"{prefix}: TLS failed ({exc.reason or exc}); does the port "
                                "match the security setting?") from None
        except smtplib.SMTPException as exc:
            raise ProviderError(f"{prefix}: {exc}") from None
        except TimeoutError:
            raise ProviderError(f"{prefix}: no answer within {self.config.timeout:g} s",
                                retryable=True) from None
        except OSError as exc:
            raise ProviderError(f"{prefix}: {exc.strerror or exc}", retryable=True) from None


def _reply(exc: smtplib.SMTPResponseException) -> str:
    text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) \
        else str(exc.smtp_error)
    return f"{exc.smtp_code} {' '.join(text.split())}"


def _refusals(refused: dict[str, tuple[int, bytes]]) -> str:
    return ", ".join(f"{address} ({code} {message.decode('utf-8', 'replace').strip()})"
                     for address, (code, message) in sorted(refused.items()))
