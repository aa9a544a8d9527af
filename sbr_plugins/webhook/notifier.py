"""Sending notifications as signed JSON POSTs (urllib), HTTP errors translated.

The body is :meth:`sbr_core.notify.Notification.to_json` as UTF-8 JSON. Headers:
``Content-Type: application/json``, ``X-SBR-Event`` (e.g. ``backup-failed``),
``X-SBR-Delivery`` (the notification id, the same on every retry) and, with a secret,
``X-SBR-Signature: sha256=<hex HMAC-SHA256 of the exact body bytes>``. Any 2xx answer is
success; redirects are not followed (the body would be lost or sent elsewhere).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import ssl
import urllib.error
import urllib.request
from email.message import Message
from typing import TYPE_CHECKING, Any

from sbr_core import __version__
from sbr_core.errors import ProviderError
from sbr_core.providers import Notifier
from sbr_plugins.webhook.config import WebhookConfig, extra_headers, shown_url

if TYPE_CHECKING:  # the server's notify module pulls in the database layer
    from sbr_core.notify import Notification

#: Answers worth another try later: timeouts, throttling, server-side trouble.
RETRYABLE_STATUS = frozenset({408, 425, 429})
SIGNATURE_HEADER = "X-SBR-Signature"


def signature(secret: str, body: bytes) -> str:
    """The ``X-SBR-Signature`` value of ``body`` under ``secret``: ``sha256=<hex>``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Turn every 3xx into an HTTPError: a POST must reach the configured URL itself."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class WebhookNotifier(Notifier):
    """One POST per notification to the configured URL."""

    name = "webhook"
    label = "Webhook"
    description = "POSTs each notification as JSON to a URL, signed with a shared secret."
    Config = WebhookConfig

    config: WebhookConfig

    def request(self, notification: Notification) -> urllib.request.Request:
        """The POST request for ``notification``, signed when a secret is set."""
        body = json.dumps(notification.to_json(), ensure_ascii=False,
                          separators=(",", ":")).encode("utf-8")
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": f"SBR/{__version__}",
            "X-SBR-Event": notification.kind.value,
            "X-SBR-Delivery": notification.id,
        }
        headers.update(extra_headers(self.config.headers.reveal()))
        if self.config.secret:
            headers[SIGNATURE_HEADER] = signature(self.config.secret.reveal(), body)
        # The Config admits only http:// and https:// URLs (no file:, no custom schemes).
        return urllib.request.Request(self.config.url, data=body,  # noqa: S310
                                      headers=headers, method="POST")

    def send(self, notification: Notification) -> None:
        """POST ``notification``; anything but a 2xx answer fails the delivery."""
        request = self.request(notification)
        where = f"notifier {self.context.name!r}: POST {shown_url(self.config.url)}"
        try:
            with self._opener().open(request, timeout=self.config.timeout) as response:
                status = response.status
                response.read(65536)  # let the server finish; the body is not used
        except urllib.error.HTTPError as exc:
            exc.close()
            raise self._status_error(where, exc.code, exc.reason, exc.headers) from None
        except urllib.error.URLError as exc:
            raise _connection_error(where, exc.reason, self.config.timeout) from None
        except (http.client.HTTPException, OSError) as exc:
            raise _connection_error(where, exc, self.config.timeout) from None
        if not 200 <= status < 300:
            raise ProviderError(f"{where}: answered HTTP {status}, not 2xx")

    def _opener(self) -> urllib.request.OpenerDirector:
        handlers: list[Any] = [_NoRedirect()]
        if self.config.url.startswith("https:"):
            path = self.config.ca_bundle
            try:
                context = ssl.create_default_context(cafile=path or None)
            except (OSError, ssl.SSLError) as exc:
                raise ProviderError(f"notifier {self.context.name!r}: CA bundle {path} cannot "
                                    f"be read: {getattr(exc, 'strerror', None) or exc}") from None
            handlers.append(urllib.request.HTTPSHandler(context=context))
        return urllib.request.build_opener(*handlers)

    @staticmethod
    def _status_error(where: str, status: int, reason: str, headers: Message) -> ProviderError:
        if 300 <= status < 400:
            return ProviderError(f"{where}: answered HTTP {status} {reason}, a redirect to "
                                 f"{headers.get('Location', '?')}; configure the final URL")
        retryable = status in RETRYABLE_STATUS or status >= 500
        return ProviderError(f"{where}: answered HTTP {status} {reason}", retryable=retryable,
                             retry_after=_retry_after(headers.get("Retry-After")))


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (its HTTP-date form is rare for webhooks and ignored)."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _connection_error(where: str, reason: object, timeout: float) -> ProviderError:
    if isinstance(reason, ssl.SSLCertVerificationError):
        return ProviderError(f"{where}: the TLS certificate is not trusted "
                             f"({reason.verify_message}); set a CA bundle")
    if isinstance(reason, TimeoutError):
        return ProviderError(f"{where}: no answer within {timeout:g} s", retryable=True)
    text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    return ProviderError(f"{where}: {text}", retryable=True)
