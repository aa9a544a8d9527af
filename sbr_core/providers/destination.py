"""Backup destinations: the small object interface the repository writes through.

Keys are ``/``-separated relative names made of letters, digits and ``._-``
(e.g. ``packs/ab/ab12….pack``). Every write is atomic: a reader sees the whole object or
none of it, whatever happens to the writer. The repository writes each data key once
(content-addressed) and uses ``if_absent`` where it needs an atomic create (locks), so
destinations that cannot overwrite in place (archives such as IBM Spectrum Protect) fit.
"""

from __future__ import annotations

import abc
import io
import os
import re
from collections.abc import Iterable, Iterator
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


@attrs.frozen
class DestinationCapabilities:
    """What a destination can do cheaply; the repository plans pack sizes and reads by it.

    ``ranged_read``: ``get(offset, length)`` transfers only that range (false for archives
    that retrieve whole objects). ``atomic_overwrite``: a put over an existing key replaces it
    atomically. ``early_delete``: objects may be deleted before a retention period ends.
    ``high_latency``: each call may wait for a tape or a remote archive, so batch reads with
    :meth:`Destination.get_many` and cache indexes locally.
    """

    ranged_read: bool = True
    atomic_overwrite: bool = True
    early_delete: bool = True
    high_latency: bool = False
    preferred_object_size: int = 16 * 2**20


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


def is_valid_key(key: str) -> bool:
    """Whether ``key`` is a valid object key (names that are not, such as a file system's
    lost+found or an S3 console's folder marker, are not objects)."""
    try:
        check_key(key)
    except UsageError:
        return False
    return True


def check_prefix(prefix: str) -> str:
    """Validate a listing prefix: empty, or a key, optionally ending with '/'."""
    if prefix:
        check_key(prefix.rstrip("/"))
    return prefix


class Destination(Provider):
    """Where backups are kept. The repository format sits on top of these five calls."""

    kind: ClassVar[ProviderKind] = ProviderKind.DESTINATION
    capabilities: ClassVar[DestinationCapabilities] = DestinationCapabilities()

    @abc.abstractmethod
    def put(self, key: str, data: bytes | BinaryIO, *, if_absent: bool = False) -> None:
        """Store an object atomically, replacing any object of that key.

        ``data`` is bytes or a binary stream read to its end (large packs stream). With
        ``if_absent`` the put succeeds only if no object has that key, atomically, and raises
        ObjectExists otherwise. Raises DestinationFull (nothing stored), DestinationReadOnly,
        DestinationUnavailable.
        """

    @abc.abstractmethod
    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """Read an object, or ``length`` bytes of it from ``offset``. Raises ObjectNotFound."""

    def open(self, key: str) -> BinaryIO:
        """A stream of a whole object, for reading large objects in bounded memory.

        The default reads the object with :meth:`get`; destinations that can stream override.
        """
        return io.BytesIO(self.get(key))

    def get_many(self, keys: Iterable[str]) -> Iterator[tuple[str, bytes]]:
        """Read several whole objects, in any order; archives override it to fetch them in
        one request. Raises ObjectNotFound for a missing one."""
        for key in keys:
            yield key, self.get(key)

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield the objects whose key starts with ``prefix``, in no promised order."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object; removing one that does not exist is not an error. Raises
        DestinationRetentionLocked when the destination keeps it until a retention date."""

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size and time of one object. Raises ObjectNotFound."""

    def probe(self) -> None:
        """Write, read back and delete a small object: the core of a connection test."""
        from sbr_core.errors import DestinationError

        key = f"sbr-probe-{os.urandom(16).hex()}"
        self.put(key, b"probe")
        try:
            if self.get(key) != b"probe":
                raise DestinationError(f"destination {self.context.name!r}: a probe object "
                                       "read back differently")
        finally:
            self.delete(key)

    def remove_abandoned(self, older_than: float) -> int:
        """Remove what writes that never finished left behind (temp files, incomplete
        multipart uploads) and that is older than ``older_than`` seconds; returns how many.
        Called by the repository's garbage collection. The default has nothing to remove."""
        return 0
