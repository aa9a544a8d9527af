"""Hypervisors (KVM/libvirt, VMware vSphere): inventory, disk export, import, snapshots.

The shapes follow what both platforms offer: libvirt's checkpoints + backup jobs and vSphere's
snapshots + changed block tracking each give "the extents of disk N changed since point P",
read by offset; both recreate a VM from stored configuration files (domain XML and nvram;
VMX, nvram and vTPM) and disks.

An export's life: ``export()`` takes the snapshot or checkpoint (inside the request's
``consistency_point``) and yields the disks; the core stores what it reads; later, in another
task, ``finish_export()`` tells the plugin whether that backup was committed, so it can drop
platform state that is no longer needed, or the new state when the backup failed.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, ClassVar, Protocol

import attrs

from sbr_core.models import Disk, ExportRequest, Extent, Instance
from sbr_core.operation import Operation
from sbr_core.providers.base import Provider, ProviderKind


class DiskReader(Protocol):
    """One disk being exported (or restored): its extents and reads.

    ``full`` is true when this disk is exported whole (new disk, broken change tracking) and
    ``reason`` says why. ``identity`` tells disks apart across backups beyond ``disk.key``,
    which platforms reuse (a vSphere device key, a libvirt target name): a backing file id,
    a vSphere disk UUID. With ``max_parallel_reads`` 1, reads come from one thread in
    increasing offset order, so streamed transports work; with more, up to that many run
    at once on different threads, in any order.
    """

    disk: Disk
    full: bool
    reason: str
    identity: str

    @property
    def max_parallel_reads(self) -> int:
        """How many reads may run at once."""
        ...

    def extents(self) -> Iterator[Extent]:
        """The ranges to back up, in offset order: every allocated range for a full export,
        the changed ones for an incremental. Zero extents are reported, never read."""
        ...

    def read(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset``. The repository reads whole chunks, so a
        range may reach beyond the reported extents (never beyond the disk); there the disk's
        current content is read as it is."""
        ...


@attrs.frozen
class VmExport:
    """An export in progress; valid inside the context manager the plugin returned.

    ``files`` are the platform's own descriptions of the VM, by file name (``domain.xml``,
    ``nvram.fd``; ``vm.vmx``, ``vm.nvram``), kept with the backup; ``config_name`` names the
    main one. ``platform_state`` is handed back as ``ExportRequest.previous.platform_state`` on
    the next export (checkpoint names, change ids per disk). ``full`` says whether the whole
    VM had to be exported, and ``reason`` why (e.g. "checkpoint sbr-12 is missing").
    """

    files: Mapping[str, bytes]
    config_name: str
    disks: Sequence[DiskReader]
    platform_state: Mapping[str, Any]
    full: bool
    consistency: str = "crash"  # "crash" or "application" (quiesced by a guest agent)
    reason: str = ""


@attrs.frozen
class ImportRequest:
    """Recreate a VM from a backup: under a new name, or over ``replace`` when confirmed.

    ``files`` are the configuration files stored with the backup. ``disks`` maps the backed-up
    disk key to a reader of its restored content. ``placement`` says where the VM goes in the
    platform's terms (``datacenter``, ``folder``, ``resource_pool``, ``host``, ``datastore``;
    ``pool`` or ``directory`` for libvirt); ``disk_targets`` overrides it per disk key.
    ``network_map`` maps old network names to new ones; a missing key keeps the name, an empty
    value drops the NIC. ``disk_format`` is ``thin``, ``thick``, ``qcow2`` or ``raw`` (empty:
    the plugin's default).
    """

    name: str
    files: Mapping[str, bytes]
    config_name: str
    disks: Mapping[str, DiskReader]
    placement: Mapping[str, str] = attrs.field(factory=dict)
    disk_targets: Mapping[str, str] = attrs.field(factory=dict)
    disk_format: str = ""
    network_map: Mapping[str, str] = attrs.field(factory=dict)
    replace: Instance | None = None
    new_identity: bool = True
    power_on: bool = False
    op: Operation = attrs.field(factory=Operation, eq=False, repr=False)


@attrs.frozen
class Snapshot:
    """A hypervisor-side snapshot as the platform lists it."""

    snapshot_id: str
    name: str
    created_at: float
    description: str = ""
    includes_memory: bool = False
    quiesced: bool = False
    parent_id: str = ""
    kind: str = "internal"  # "internal" or "external" (libvirt); vSphere's are "internal"


class Hypervisor(Provider):
    """A virtualization platform SBR protects VMs of."""

    kind: ClassVar[ProviderKind] = ProviderKind.HYPERVISOR
    #: attrs class of the per-policy export choices this plugin accepts (transport, mode).
    ExportOptions: ClassVar[type[Any] | None] = None
    #: Image formats :meth:`write_image` writes (the core writes raw images itself).
    image_formats: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def inventory(self) -> Iterable[Instance]:
        """Every VM the connection can see, with disks and NICs."""

    def get_instance(self, external_id: str) -> Instance:
        """One VM by its platform id; raises ProviderError if it is gone.

        The default scans :meth:`inventory`; plugins with a direct lookup override it.
        """
        for instance in self.inventory():
            if instance.external_id == external_id:
                return instance
        from sbr_core.errors import ProviderError

        raise ProviderError(f"{self.context.name}: no VM with id {external_id!r}")

    @abc.abstractmethod
    def export(self, request: ExportRequest) -> AbstractContextManager[VmExport]:
        """Start an export; leaving the context removes every snapshot, scratch file or job
        the export made, whether it succeeded or not. Long work reports through
        ``request.op`` and stops at ``request.op.check()``."""

    def finish_export(self, instance: Instance, platform_state: Mapping[str, Any], *,
                      committed: bool) -> None:
        """After the store step: ``committed`` says whether the backup holding
        ``platform_state`` was kept. Drop older platform state no retained point needs, or the
        new state when the backup failed. The default does nothing."""

    @abc.abstractmethod
    def import_vm(self, request: ImportRequest) -> Instance:
        """Create (or replace) a VM from a backup and return it as the platform now sees it."""

    @abc.abstractmethod
    def list_snapshots(self, instance: Instance) -> Sequence[Snapshot]:
        """The VM's snapshots, oldest first."""

    @abc.abstractmethod
    def create_snapshot(
        self, instance: Instance, name: str, *, quiesce: bool = True, memory: bool = False,
        options: Mapping[str, Any] | None = None, op: Operation | None = None,
    ) -> Snapshot:
        """Take a snapshot; ``quiesce`` uses a guest agent when one answers; ``options`` are
        plugin-specific (internal or external for libvirt)."""

    @abc.abstractmethod
    def delete_snapshot(self, instance: Instance, snapshot_id: str, *,
                        op: Operation | None = None) -> None:
        """Remove a snapshot, merging its data back; a missing snapshot is not an error."""

    def write_image(self, disk: DiskReader, path: Path, fmt: str, *,
                    op: Operation | None = None) -> int:
        """Write a restored disk as a new image file ``path`` in format ``fmt`` (one of
        :attr:`image_formats`) on this node; a failure leaves no file. Returns the bytes
        written. ``disk`` may also offer ``write_to(sink, sparse=, op=)``, a faster copy."""
        from sbr_core.errors import ProviderError

        raise ProviderError(f"{self.context.name}: writing {fmt} images is not supported")

    def revert_snapshot(self, instance: Instance, snapshot_id: str, *,
                        op: Operation | None = None) -> None:
        """Return the VM to a snapshot. Plugins that cannot revert leave this as it is."""
        from sbr_core.errors import ProviderError

        raise ProviderError(f"{self.context.name}: reverting to a snapshot is not supported")
