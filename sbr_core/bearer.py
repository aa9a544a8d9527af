"""Bearer tokens as nodes and API users hold them: 256 random bits behind a prefix that
says what the token is for (``sbrn_`` a node, ``sbru_`` a user). The server keeps only the
SHA-256; a fast hash is enough for random secrets this long."""

from __future__ import annotations

import hashlib
import secrets


def token_digest(token: str) -> str:
    """The SHA-256 (hex) stored for ``token``."""
    return hashlib.sha256(token.encode()).hexdigest()


def mint(prefix: str) -> tuple[str, str]:
    """A new token with ``prefix``, and its digest."""
    token = prefix + secrets.token_urlsafe(32)
    return token, token_digest(token)
