"""Domain values shared by the core and the plugins (frozen attrs; no database here).

They are shaped after what the platforms report: a libvirt domain or a vSphere VM is an
:class:`Instance` with :class:`Disk` and :class:`Nic` children; a Microsoft 365 mailbox, a
OneDrive, a SharePoint site or a file share is an :class:`Instance` whose content is a tree of
:class:`Entry` values.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

import attrs


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

    ``path`` is ``/``-separated and relative to the instance root. ``open`` returns a fresh
    binary stream of the content (files and items); it is ``None`` for directories and links.
    ``metadata`` holds what a platform needs to restore the entry faithfully (mail headers,
    Graph ids, ACLs).
    """

    path: str
    kind: EntryKind
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
    """Ask a plugin to export one instance: fully, or changes since ``previous``."""

    instance: Instance
    previous: BackupPoint | None = None
    full: bool = False
    quiesce: bool = True
