"""Hypervisors (KVM/libvirt, VMware vSphere): inventory, disk export, import, snapshots.

The shapes follow what both platforms offer: libvirt's checkpoints + backup jobs and vSphere's
snapshots + changed block tracking each give "the extents of disk N changed since point P",
read by offset; both recreate a VM from a stored configuration (domain XML, VMX/OVF) and disks.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Protocol

import attrs

from sbr_core.models import Disk, ExportRequest, Extent, Instance
from sbr_core.providers.base import Provider, ProviderKind


class DiskReader(Protocol):
    """One disk being exported (or restored): its extents and random reads."""

    disk: Disk

    def extents(self) -> Iterator[Extent]:
        """The ranges to back up, in offset order: every allocated range for a full export,
        the changed ones for an incremental. Zero extents are reported, never read."""
        ...

    def read(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset`` (within a non-zero extent)."""
        ...


@attrs.frozen
class VmExport:
    """An export in progress; valid inside the context manager the plugin returned.

    ``config`` is the platform's own description of the VM (libvirt domain XML, vSphere VMX or
    OVF), kept with the backup. ``platform_state`` is handed back as
    ``ExportRequest.previous.platform_state`` on the next export (checkpoint names, change ids).
    ``full`` says whether the plugin had to export everything, and ``reason`` why (e.g. "the
    checkpoint chain was broken: checkpoint sbr-12 is missing").
    """

    config: bytes
    config_format: str
    disks: Sequence[DiskReader]
    platform_state: Mapping[str, Any]
    full: bool
    consistency: str = "crash"  # "crash" or "application" (quiesced by a guest agent)
    reason: str = ""


@attrs.frozen
class ImportRequest:
    """Recreate a VM from a backup: under a new name, or over ``replace`` when confirmed.

    ``disks`` maps the backed-up disk key to a reader of its restored content. ``target`` is
    where disks go (libvirt storage pool or directory, vSphere datastore); ``network_map`` maps
    old network names to new ones, a missing key keeps the name, an empty value drops the NIC.
    """

    name: str
    config: bytes
    config_format: str
    disks: Mapping[str, DiskReader]
    target: str = ""
    network_map: Mapping[str, str] = attrs.field(factory=dict)
    replace: Instance | None = None
    new_identity: bool = True


@attrs.frozen
class Snapshot:
    """A hypervisor-side snapshot as the platform lists it."""

    snapshot_id: str
    name: str
    created_at: float
    description: str = ""
    includes_memory: bool = False


class Hypervisor(Provider):
    """A virtualization platform SBR protects VMs of."""

    kind: ClassVar[ProviderKind] = ProviderKind.HYPERVISOR

    @abc.abstractmethod
    def inventory(self) -> Iterable[Instance]:
        """Every VM the connection can see, with disks and NICs."""

    @abc.abstractmethod
    def export(self, request: ExportRequest) -> AbstractContextManager[VmExport]:
        """Start an export; leaving the context removes every snapshot, checkpoint scratch file
        or job the export made, whether it succeeded or not."""

    @abc.abstractmethod
    def import_vm(self, request: ImportRequest) -> Instance:
        """Create (or replace) a VM from a backup and return it as the platform now sees it."""

    @abc.abstractmethod
    def list_snapshots(self, instance: Instance) -> Sequence[Snapshot]:
        """The VM's snapshots, oldest first."""

    @abc.abstractmethod
    def create_snapshot(
        self, instance: Instance, name: str, *, quiesce: bool = True, memory: bool = False
    ) -> Snapshot:
        """Take a snapshot; ``quiesce`` uses a guest agent when one answers."""

    @abc.abstractmethod
    def delete_snapshot(self, instance: Instance, snapshot_id: str) -> None:
        """Remove a snapshot, merging its data back; a missing snapshot is not an error."""
