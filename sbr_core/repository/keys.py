"""Key management: export the wrapped key for safe keeping, change the passphrase."""

from __future__ import annotations

import os

from sbr_core.errors import UsageError
from sbr_core.repository import crypto
from sbr_core.repository.repo import Repository


def _keys_of(repo: Repository) -> crypto.MasterKeys:
    keys = getattr(repo.sealer, "keys", None)
    if not isinstance(keys, crypto.MasterKeys):
        raise UsageError("the repository is not encrypted: it has no key")
    return keys


def export_key(repo: Repository, passphrase: str) -> bytes:
    """A key file for this repository, wrapped by ``passphrase`` (the one it was opened
    with), to keep apart from the repository."""
    return crypto.key_file_bytes(crypto.wrap_keys(_keys_of(repo), passphrase, repo.config.id))


def change_passphrase(repo: Repository, new_passphrase: str) -> None:
    """Write a key file for the new passphrase, then remove the others."""
    if not new_passphrase:
        raise UsageError("the new passphrase must not be empty")
    keys = _keys_of(repo)
    old = [info.key for info in repo.destination.list("keys/")]
    repo.destination.put(f"keys/{os.urandom(16).hex()}", crypto.key_file_bytes(
        crypto.wrap_keys(keys, new_passphrase, repo.config.id)))
    for key in old:
        repo.destination.delete(key)
