"""A logging filter that blanks out any secret value SBR has seen: a backstop, not a licence."""

from __future__ import annotations

import logging
import threading

_lock = threading.Lock()
_secrets: set[str] = set()
_MIN_LENGTH = 4  # shorter values would blank out ordinary words


def remember_secret(value: str) -> None:
    """Register a clear-text secret so that log records never carry it."""
    if len(value) >= _MIN_LENGTH:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """Replace every remembered secret in ``text`` with asterisks."""
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for value in known:
        if value in text:
            text = text.replace(value, "********")
    return text


class RedactingFilter(logging.Filter):
    """Rewrites each record's message, traceback and stack with secrets blanked out."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        # An exception's message often quotes what failed; formatters reuse exc_text when
        # it is set, so format the traceback here, redacted, before any handler does.
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install() -> None:
    """Attach the filter to the root logger's handlers (call once at start-up)."""
    root = logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
