"""Backup destinations: the small object interface the repository writes through.

Keys are ``/``-separated relative names made of letters, digits and ``._-``
(e.g. ``packs/ab/ab12….pack``). Every write is atomic: a reader sees the whole object or
none of it, whatever happens to the writer.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterator
from typing import BinaryIO, ClassVar

import attrs

from sbr_core.errors import UsageError
from sbr_core.providers.base import Provider, ProviderKind

_KEY_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


@attrs.frozen
class ObjectInfo:
    """An object's key, size in bytes and modification time (seconds since the epoch)."""

    key: str
    size: int
    mtime: float


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid object key, else raise UsageError naming the problem."""
    if not isinstance(key, str) or not key:
        raise UsageError("object key must be a non-empty string")
    parts = key.split("/")
    for part in parts:
        if not _KEY_PART.fullmatch(part):
            raise UsageError(
                f"object key {key!r} is invalid: each '/'-separated part must be letters, "
                "digits and ._- and must not start with '.' or '-'"
            )
    return key


def check_prefix(prefix: str) -> str:
    """Validate a listing prefix: empty, or a key, optionally ending with '/'."""
    if prefix:
        check_key(prefix.rstrip("/"))
    return prefix


class Destination(Provider):
    """Where backups are kept. The repository format sits on top of these five calls."""

    kind: ClassVar[ProviderKind] = ProviderKind.DESTINATION

    @abc.abstractmethod
    def put(self, key: str, data: bytes | BinaryIO) -> None:
        """Store an object atomically, replacing any object of that key.

        ``data`` is bytes or a binary stream read to its end (large packs stream).
        Raises DestinationFull (nothing stored), DestinationReadOnly, DestinationUnavailable.
        """

    @abc.abstractmethod
    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """Read an object, or ``length`` bytes of it from ``offset``. Raises ObjectNotFound."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield the objects whose key starts with ``prefix``, in no promised order."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object; removing one that does not exist is not an error."""

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size and time of one object. Raises ObjectNotFound."""
