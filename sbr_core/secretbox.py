"""Encryption at rest for provider secrets, with the server's key file.

The key file (32 random bytes, base64) is created on first start with mode 0600 beside the
database. Each value is sealed with AES-256-GCM under a fresh nonce; the stored form is
``sbr1:<base64 nonce+ciphertext>``. Losing the key file means re-entering every secret.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sbr_core.errors import SecretError

_PREFIX = "sbr1:"
_NONCE_BYTES = 12


def load_or_create_key(path: Path) -> bytes:
    """Read the server key, creating it (0600) if it does not exist yet.

    The new key is written whole to a temp file and linked into place, so a crash never
    leaves a truncated key file, and two processes starting at once agree on one key.
    """
    if not path.exists():
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, base64.b64encode(AESGCM.generate_key(bit_length=256)) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temp, path)  # fails if another process made the key first: use theirs
        except FileExistsError:
            pass
        finally:
            os.unlink(temp)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(
            f"key file {path} is readable by others (mode {stat.S_IMODE(mode):o}); "
            f"run: chmod 600 {path}"
        )
    try:
        key = base64.b64decode(path.read_bytes().strip(), validate=True)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise SecretError(f"key file {path} is damaged: expected 32 base64-encoded bytes")
    return key


class SecretBox:
    """Seals and opens small secrets with the server key."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, values: dict[str, Any]) -> str:
        """Encrypt a mapping of secret settings into one storable string."""
        nonce = os.urandom(_NONCE_BYTES)
        blob = self._aead.encrypt(nonce, json.dumps(values).encode(), None)
        return _PREFIX + base64.b64encode(nonce + blob).decode()

    def open(self, sealed: str | None) -> dict[str, Any]:
        """Decrypt what :meth:`seal` produced; an empty value opens to ``{}``."""
        if not sealed:
            return {}
        if not sealed.startswith(_PREFIX):
            raise SecretError("stored secret has an unknown format")
        try:
            raw = base64.b64decode(sealed[len(_PREFIX):], validate=True)
        except ValueError:
            raw = b""
        if len(raw) <= _NONCE_BYTES:
            raise SecretError("stored secret is damaged (not a sealed value)")
        try:
            data = self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], None)
        except InvalidTag:
            raise SecretError(
                "stored secrets cannot be decrypted with this server's key file "
                "(was the key file replaced?)"
            ) from None
        result: dict[str, Any] = json.loads(data)
        return result


def derive_key(key: bytes, purpose: str) -> bytes:
    """A separate key for another purpose (e.g. signing web sessions) from the server key."""
    import hashlib
    import hmac

    return hmac.new(key, f"sbr:{purpose}".encode(), hashlib.sha256).digest()
