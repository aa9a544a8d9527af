"""Domain values shared by the core and the plugins (frozen attrs; no database here).

They are shaped after what the platforms report: a libvirt domain or a vSphere VM is an
:class:`Instance` with :class:`Disk` and :class:`Nic` children; a Microsoft 365 mailbox, a
OneDrive, a SharePoint site or a file share is an :class:`Instance` whose content is a tree of
:class:`Entry` values.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any, BinaryIO

import attrs

from sbr_core.operation import Operation


class InstanceState(enum.Enum):
    """Power or availability state as the platform reports it."""

    RUNNING = "running"
    STOPPED = "stopped"
    PAUSED = "paused"
    SUSPENDED = "suspended"
    AVAILABLE = "available"  # not a VM: a mailbox, a share, a database
    UNKNOWN = "unknown"


@attrs.frozen
class Disk:
    """One virtual disk of a VM.

    ``key`` is stable across backups (libvirt target dev ``vda``, vSphere device key ``2000``).
    ``backend`` names the storage kind (``file``, ``block``, ``rbd``, ``vmfs``, ``vsan``, …) so a
    plugin can refuse what it does not handle with a clear message.
    """

    key: str
    capacity_bytes: int
    label: str = ""
    path: str = ""
    format: str = "raw"
    backend: str = "file"


@attrs.frozen
class Nic:
    """One network interface of a VM: MAC, the network it is attached to, device model."""

    key: str
    mac: str = ""
    network: str = ""
    model: str = ""


@attrs.frozen
class Instance:
    """Something SBR protects: a VM, a mailbox, a site, a share, a database.

    ``external_id`` is the platform's stable identifier (libvirt UUID, vSphere instance UUID,
    Graph object id, share path). ``location`` is the placement path an admin filters on
    (``datacenter/cluster/host``, ``host/pool``, ``tenant/users``). ``attributes`` carries what
    has no field here; it is stored as JSON.
    """

    external_id: str
    name: str
    kind: str = "vm"
    state: InstanceState = InstanceState.UNKNOWN
    cpus: int = 0
    memory_bytes: int = 0
    disks: tuple[Disk, ...] = ()
    nics: tuple[Nic, ...] = ()
    tags: tuple[str, ...] = ()
    location: str = ""
    attributes: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Extent:
    """A byte range of a disk. ``zero`` ranges are unallocated or all zeros: never read."""

    offset: int
    length: int
    zero: bool = False

    @property
    def end(self) -> int:
        """First byte after the extent."""
        return self.offset + self.length


class EntryKind(enum.Enum):
    """What an entry of an item tree is."""

    FILE = "file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    ITEM = "item"  # a mail, event, contact, list item: content plus metadata
    FOLDER = "folder"  # a mailbox folder, a document library


@attrs.frozen
class Entry:
    """One node of an item tree produced by a storage or application export.

    ``item_id`` identifies the entry for its whole life, across renames and moves (a Graph
    object id, an inode number for file shares); ``parent_id`` is its container's id, so a
    renamed folder does not have to re-send its children. ``path`` is ``/``-separated and
    relative to the instance root, as the platform names it now. ``open`` returns a fresh
    binary stream of the content (files and items); it is ``None`` for directories and links.
    ``metadata`` holds what a platform needs to restore the entry faithfully (mail headers,
    ACLs).
    """

    path: str
    kind: EntryKind
    item_id: str = ""
    parent_id: str = ""
    size: int = 0
    mtime_ns: int = 0
    mode: int = 0
    uid: int = 0
    gid: int = 0
    link_target: str = ""
    xattrs: Mapping[str, bytes] = attrs.field(factory=dict)
    metadata: Mapping[str, Any] = attrs.field(factory=dict)
    open: Callable[[], BinaryIO] | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class BackupPoint:
    """What the core remembers of an earlier backup that a plugin needs for the next one.

    ``platform_state`` is whatever the plugin returned at that backup (libvirt checkpoint
    name, vSphere change ids per disk, Graph delta links) and is handed back unchanged.
    """

    backup_id: str
    instance: Instance
    platform_state: Mapping[str, Any] = attrs.field(factory=dict)
    created_at: float = 0.0


@attrs.frozen
class ExportRequest:
    """Ask a plugin to export one instance: fully, or changes since ``previous``.

    ``disks`` limits a VM export to these disk keys (``None``: all). ``options`` holds the
    policy's plugin-specific choices (vSphere transport, libvirt push or pull), validated
    against the plugin's ``ExportOptions`` class. ``retained_points`` are every backup point of
    this instance still kept, by any policy, so a plugin never deletes platform state (a
    libvirt checkpoint) that another chain still needs. ``consistency_point``, when set, is a
    context manager factory the plugin enters exactly around taking its snapshot or
    checkpoint: plugin workflow steps freeze applications inside it.
    """

    instance: Instance
    previous: BackupPoint | None = None
    full: bool = False
    quiesce: bool = True
    disks: tuple[str, ...] | None = None
    options: Mapping[str, Any] = attrs.field(factory=dict)
    retained_points: tuple[BackupPoint, ...] = ()
    consistency_point: Callable[[], AbstractContextManager[None]] | None = attrs.field(
        default=None, eq=False, repr=False)
    op: Operation = attrs.field(factory=Operation, eq=False, repr=False)
