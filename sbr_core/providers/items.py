"""Item-based providers: storage (file shares, NAS) and applications (Microsoft 365, databases).

Both export an instance as a stream of :class:`~sbr_core.models.Entry` values with content
streams, which the repository chunks and deduplicates, and both restore such entries to the
original instance or elsewhere.

The stream follows change feeds such as Graph's delta queries: entries are identified by
``item_id``; they come in no promised order (a child may come before its renamed parent);
when an id appears more than once, the last occurrence wins; removals are reported by id.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Protocol

import attrs

from sbr_core.models import Entry, ExportRequest, Instance
from sbr_core.operation import Operation
from sbr_core.providers.base import Provider, ProviderKind


class ItemExport(Protocol):
    """An export in progress: the entries, and what to remember for the next one.

    ``full`` is true when everything is listed (a first export, or an expired change token —
    Graph answers 410 to a stale deltaLink) and ``reason`` says why.
    """

    full: bool
    reason: str

    def entries(self) -> Iterator[Entry]:
        """Entries new or changed since the previous export (all of them for a full one).
        An entry that cannot be read raises ItemUnavailable from its ``open()``: the core
        records it as skipped and goes on."""
        ...

    def removed(self) -> Iterator[str]:
        """Ids of entries removed since the previous export (empty for a full one)."""
        ...

    @property
    def platform_state(self) -> Mapping[str, Any]:
        """Handed back on the next export (deltaLinks per folder, a change journal position).
        Read only after ``entries()`` and ``removed()`` are exhausted."""
        ...


@attrs.frozen
class RestoreOutcome:
    """What became of one entry in a restore: ``restored``, ``skipped`` or ``failed``.

    ``new_id`` is the id the platform gave the restored item; ``message`` says why it was
    skipped or failed.
    """

    item_id: str
    path: str
    status: str
    new_id: str = ""
    message: str = ""


#: What a restore does with an entry that exists at the target: keep both (the restored one
#: renamed), leave what is there, or replace it.
RESTORE_CONFLICTS = ("rename", "skip", "overwrite")


@attrs.frozen
class ItemRestoreRequest:
    """Restore entries to ``target`` (the original instance or another one).

    ``destination_path`` restores below another folder of the target; ``conflict`` (one of
    RESTORE_CONFLICTS) says what to do with an entry that already exists. ``options``
    are plugin-specific (restore mail as unread, keep permissions).
    """

    target: Instance
    entries: Iterable[Entry]
    destination_path: str = ""
    conflict: str = "rename"
    options: Mapping[str, Any] = attrs.field(factory=dict)
    op: Operation = attrs.field(factory=Operation, eq=False, repr=False)


class ItemProvider(Provider):
    """Shared shape of storage and application providers."""

    #: attrs class of the per-policy export choices this plugin accepts.
    ExportOptions: ClassVar[type[Any] | None] = None

    @abc.abstractmethod
    def inventory(self) -> Iterable[Instance]:
        """Every instance (share, mailbox, site, database) the connection can see."""

    @abc.abstractmethod
    def export(self, request: ExportRequest) -> AbstractContextManager[ItemExport]:
        """Start an export; leaving the context releases whatever it held open."""

    @abc.abstractmethod
    def restore(self, request: ItemRestoreRequest) -> Iterator[RestoreOutcome]:
        """Write entries back to the platform, yielding one outcome per entry; one entry
        failing never stops the others."""


class StorageProvider(ItemProvider):
    """File shares, NAS and object stores protected as trees of files."""

    kind: ClassVar[ProviderKind] = ProviderKind.STORAGE


class Application(ItemProvider):
    """Applications and SaaS tenants (Microsoft 365, databases) protected as trees of items."""

    kind: ClassVar[ProviderKind] = ProviderKind.APPLICATION
