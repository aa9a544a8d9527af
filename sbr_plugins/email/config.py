"""Settings of the e-mail notifier, and the address lists they hold."""

from __future__ import annotations

import re
from email.utils import getaddresses
from typing import Any

import attrs

from sbr_core.providers import NotifierConfig
from sbr_core.settings import Secret, setting

SECURITY = ("starttls", "ssl", "none")
_ADDRESS = re.compile(r"[^@\s<>(),;:\"\[\]\\]+@[^@\s<>(),;:\"\[\]\\]+")


def addresses(text: str) -> list[tuple[str, str]]:
    """(display name, address) pairs of a list separated by commas, semicolons or new lines.

    Raises ValueError naming the first entry that is not an address.
    """
    pairs = getaddresses([text.replace(";", ",").replace("\n", ",")])
    out = []
    for name, address in pairs:
        if not name and not address:
            continue
        if not _ADDRESS.fullmatch(address):
            raise ValueError(f"{address or name!r} is not an e-mail address")
        out.append((name, address))
    return out


def _host(_: Any, __: attrs.Attribute[str], value: str) -> None:
    if not value or any(c.isspace() or c in "/:@" for c in value.strip("[]")):
        raise ValueError("give the SMTP server's host name or IP address, without port or "
                         "scheme (e.g. smtp.example.net)")


def _port(_: Any, __: attrs.Attribute[int], value: int) -> None:
    if not 1 <= value <= 65535:
        raise ValueError(f"must be between 1 and 65535, got {value}")


def _sender(_: Any, __: attrs.Attribute[str], value: str) -> None:
    if len(addresses(value)) != 1:
        raise ValueError("give exactly one address (e.g. SBR <sbr@example.net>)")


def _recipients(_: Any, __: attrs.Attribute[str], value: str) -> None:
    if not addresses(value):
        raise ValueError("give at least one address")


def _subject_prefix(_: Any, __: attrs.Attribute[str], value: str) -> None:
    if "\n" in value or "\r" in value:
        raise ValueError("must be one line")


def _password(instance: EmailConfig, _: attrs.Attribute[Secret], value: Secret) -> None:
    # Validators run once every field is set, so the other fields can be looked at here.
    if bool(instance.username) != bool(value):
        raise ValueError("give both the user name and the password, or neither")
    if value and instance.security == "none":
        raise ValueError("a password is sent only over an encrypted connection: choose "
                         "security 'starttls' or 'ssl'")


@attrs.frozen
class EmailConfig(NotifierConfig):
    """Settings of an e-mail notifier (the event choices and timeout come from
    :class:`~sbr_core.providers.NotifierConfig`)."""

    host: str = setting(label="SMTP server", help="Host name or IP address of the mail relay.",
                        validator=_host)
    sender: str = setting(label="From", help="Sender address, e.g. SBR <sbr@example.net>.",
                          validator=_sender)
    recipients: str = setting(label="To", help="Recipient addresses, separated by commas.",
                              validator=_recipients)
    port: int = setting(label="Port", help="587 for STARTTLS, 465 for SSL/TLS, 25 for a "
                        "relay without encryption.", default=587, validator=_port)
    security: str = setting(
        label="Security",
        help="'starttls' upgrades the connection after connecting (port 587), 'ssl' speaks "
        "TLS from the start (port 465), 'none' sends in clear (a local relay only).",
        choices=SECURITY, default="starttls")
    username: str = setting(label="User name", help="Empty when the relay needs no login.",
                            default="")
    password: Secret = setting(label="Password", help="Stored encrypted, never shown again.",
                               secret=True, default=Secret(""), validator=_password)
    subject_prefix: str = setting(label="Subject prefix", help="Put before every subject, so "
                                  "that mail filters can sort SBR's mail.", default="[SBR]",
                                  validator=_subject_prefix)
    ca_bundle: str = setting(label="CA bundle", help="Path on the server of a PEM file of the "
                             "CA certificates to trust for the relay; empty for the system's.",
                             default="")
