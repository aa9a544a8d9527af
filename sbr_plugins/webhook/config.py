"""Settings of the webhook notifier, and the extra headers they may carry."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import attrs

from sbr_core.providers import NotifierConfig
from sbr_core.settings import Secret, setting

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: Headers SBR sets itself; an extra header may not replace them.
RESERVED_HEADERS = frozenset({"content-type", "content-length", "host", "transfer-encoding",
                              "connection", "x-sbr-signature", "x-sbr-event",
                              "x-sbr-delivery"})


def extra_headers(text: str) -> dict[str, str]:
    """The ``Name: value`` lines of ``text`` (blank lines ignored) as a dict.

    Raises ValueError naming the line, never quoting it: the lines often hold a token.
    """
    out: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not _TOKEN.fullmatch(name):
            raise ValueError(f"line {number} is not 'Name: value'")
        if name.lower() in RESERVED_HEADERS:
            raise ValueError(f"line {number}: SBR sets the {name} header itself")
        if any(ord(c) < 32 and c != "\t" for c in value):
            raise ValueError(f"line {number}: the value holds control characters")
        out[name] = value.strip()
    return out


def _url(_: Any, __: attrs.Attribute[str], value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{shown_url(value)!r} is not an http:// or https:// URL")
    if parts.username or parts.password:
        raise ValueError("the URL must not carry credentials: put them in an extra header "
                         "(Authorization: …), which is stored encrypted")
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ValueError(f"{shown_url(value)!r} has an invalid port") from None


def _headers(_: Any, __: attrs.Attribute[Secret], value: Secret) -> None:
    extra_headers(value.reveal())


def shown_url(url: str) -> str:
    """The URL without its query and credentials, for messages (a query often holds a
    token)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}" if parts.scheme else url.split("?")[0]


@attrs.frozen
class WebhookConfig(NotifierConfig):
    """Settings of a webhook notifier (the event choices and timeout come from
    :class:`~sbr_core.providers.NotifierConfig`)."""

    url: str = setting(label="URL", help="Where each notification is POSTed as JSON "
                       "(https:// or http://). Redirects are not followed.", validator=_url)
    secret: Secret = setting(
        label="Signing secret",
        help="When set, each request carries X-SBR-Signature: sha256=<hex HMAC-SHA256 of the "
        "body under this secret>, so the receiver can check it came from SBR. Stored "
        "encrypted, never shown again.",
        secret=True, default=Secret(""))
    headers: Secret = setting(
        label="Extra headers",
        help="One 'Name: value' per line, e.g. 'Authorization: Bearer …'. Stored encrypted, "
        "as such headers usually hold a token, and never shown again.",
        secret=True, default=Secret(""), validator=_headers)
    ca_bundle: str = setting(label="CA bundle", help="Path on the server of a PEM file of the "
                             "CA certificates to trust for an https:// URL; empty for the "
                             "system's.", default="")
