"""Item-based providers: storage (file shares, NAS) and applications (Microsoft 365, databases).

Both export an instance as a tree of :class:`~sbr_core.models.Entry` values with content
streams, which the repository chunks and deduplicates, and both restore such a tree to the
original instance or elsewhere.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Protocol

import attrs

from sbr_core.models import Entry, ExportRequest, Instance
from sbr_core.providers.base import Provider, ProviderKind


class ItemExport(Protocol):
    """An export in progress: the entries, and what to remember for the next one."""

    def entries(self) -> Iterator[Entry]:
        """Entries in depth-first order, parents before children. For an incremental, the
        plugin may yield only what changed when it also lists what was removed."""
        ...

    def removed(self) -> Iterator[str]:
        """Paths removed since the previous export (empty for a full one)."""
        ...

    @property
    def platform_state(self) -> Mapping[str, Any]:
        """Handed back on the next export (Graph delta links, a change journal position)."""
        ...


@attrs.frozen
class ItemRestoreRequest:
    """Restore entries to ``target`` (the original instance or another one).

    ``destination_path`` restores below another folder of the target; ``conflict`` is
    ``"skip"``, ``"overwrite"`` or ``"rename"`` for an entry that already exists.
    """

    target: Instance
    entries: Iterable[Entry]
    destination_path: str = ""
    conflict: str = "rename"


class ItemProvider(Provider):
    """Shared shape of storage and application providers."""

    @abc.abstractmethod
    def inventory(self) -> Iterable[Instance]:
        """Every instance (share, mailbox, site, database) the connection can see."""

    @abc.abstractmethod
    def export(self, request: ExportRequest) -> AbstractContextManager[ItemExport]:
        """Start an export; leaving the context releases whatever it held open."""

    @abc.abstractmethod
    def restore(self, request: ItemRestoreRequest) -> None:
        """Write entries back to the platform."""


class StorageProvider(ItemProvider):
    """File shares, NAS and object stores protected as trees of files."""

    kind: ClassVar[ProviderKind] = ProviderKind.STORAGE


class Application(ItemProvider):
    """Applications and SaaS tenants (Microsoft 365, databases) protected as trees of items."""

    kind: ClassVar[ProviderKind] = ProviderKind.APPLICATION
