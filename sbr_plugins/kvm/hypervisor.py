"""The SBR-facing KVM provider: inventory, exports, snapshots and imports of libvirt
domains. The libvirt calls themselves live in :mod:`.connection`, :mod:`.checkpoint`,
:mod:`.backup`, :mod:`.snapshots` and :mod:`.importing`."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

import attrs

from sbr_core.errors import ProviderError
from sbr_core.models import Disk, ExportRequest, Extent, Instance, InstanceState
from sbr_core.operation import Operation
from sbr_core.providers.hypervisor import Hypervisor, ImportRequest, Snapshot, VmExport
from sbr_plugins.kvm import checkpoint, domainxml
from sbr_plugins.kvm.backup import OfflineExport, PullJob, free_port, private_dir
from sbr_plugins.kvm.config import KvmConfig
from sbr_plugins.kvm.connection import (
    ERR_AGENT_UNRESPONSIVE,
    ERR_ARGUMENT_UNSUPPORTED,
    ERR_NO_DOMAIN,
    error_code,
    error_text,
    is_local,
    libvirt_module,
    open_connection,
    translated,
)
from sbr_plugins.kvm.nbd import NbdDisk

if TYPE_CHECKING:
    import libvirt

#: libvirt 7.6 made incremental backup (checkpoints + backupBegin) usable without tweaks.
MIN_LIBVIRT = 7_006_000
CONFIG_FILE = "domain.xml"
#: NBD connections per exported disk, so reads overlap: 2.5 s against 2.8 s with one, for a
#: 1.2 GiB full on 2 CPUs. qemu-nbd takes them (``--shared=4``); QEMU's NBD server has no limit.
READ_CONNECTIONS = 3

_STATES = {1: InstanceState.RUNNING, 2: InstanceState.RUNNING, 3: InstanceState.PAUSED,
           4: InstanceState.RUNNING, 5: InstanceState.STOPPED, 6: InstanceState.STOPPED,
           7: InstanceState.SUSPENDED}


@attrs.define
class ExportedDisk:
    """One disk of an export, read over NBD (see :class:`sbr_core.providers.hypervisor.
    DiskReader`)."""

    disk: Disk
    full: bool
    reason: str
    nbd: NbdDisk
    still_there: Any  # () -> str: why the domain cannot be read any more, or ""
    identity: str = ""

    @property
    def max_parallel_reads(self) -> int:
        return self.nbd.max_parallel_reads

    def extents(self) -> Iterator[Extent]:
        try:
            yield from self.nbd.extents()
        except ProviderError as exc:
            raise self._explained(exc) from exc

    def read(self, offset: int, length: int) -> bytes:
        try:
            return self.nbd.read(offset, length)
        except ProviderError as exc:
            raise self._explained(exc) from exc

    def _explained(self, exc: ProviderError) -> ProviderError:
        gone = self.still_there()
        return ProviderError(gone) if gone else exc


class KvmHypervisor(Hypervisor):
    """Every domain of one libvirt connection (a QEMU/KVM host)."""

    name: ClassVar[str] = "kvm"
    label: ClassVar[str] = "KVM / libvirt"
    description: ClassVar[str] = (
        "QEMU/KVM domains through libvirt: full and incremental backups of running domains "
        "(checkpoints and pull-mode backup jobs) and of shut-off ones, restores to raw or "
        "qcow2 files, imports as new domains, internal and external snapshots.")
    Config: ClassVar[type[Any]] = KvmConfig
    image_formats: ClassVar[tuple[str, ...]] = ("qcow2", "raw")

    def __init__(self, config: KvmConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.config: KvmConfig = config
        self._conn: libvirt.virConnect | None = None
        self._keep: dict[str, set[str]] = {}  # domain UUID -> checkpoints other chains need

    # --- connection -------------------------------------------------------------------------

    @property
    def conn(self) -> libvirt.virConnect:
        if self._conn is None:
            self._conn = open_connection(self.context.name, self.config)
        return self._conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                self.context.logger.debug("closing %s failed", self.config.uri, exc_info=True)

    def test_connection(self) -> None:
        with translated(f"kvm connection {self.context.name!r}"):
            version = self.conn.getLibVersion()
            self.conn.getHostname()
        if version < MIN_LIBVIRT:
            raise ProviderError(
                f"kvm connection {self.context.name!r}: libvirt {_version(version)} on the "
                f"host is too old; incremental backups need {_version(MIN_LIBVIRT)} or newer")

    # --- inventory ----------------------------------------------------------------------------

    def inventory(self) -> list[Instance]:
        with translated(f"kvm connection {self.context.name!r}: listing domains"):
            domains = self.conn.listAllDomains(0)
            host = self.conn.getHostname()
        out = []
        libvirt = libvirt_module()
        for dom in domains:
            try:
                out.append(self._describe(dom, host))
            except libvirt.libvirtError as exc:
                if error_code(exc) != ERR_NO_DOMAIN:  # undefined while we listed: skip it
                    raise ProviderError(f"kvm connection {self.context.name!r}: reading "
                                        f"domain {dom.name()!r}: {error_text(exc)}") from exc
        return out

    def get_instance(self, external_id: str) -> Instance:
        dom = self._lookup(external_id, external_id)
        with translated(f"domain {external_id}"):
            return self._describe(dom, self.conn.getHostname())

    def _describe(self, dom: libvirt.virDomain, host: str) -> Instance:
        root = domainxml.parse(dom.XMLDesc(0))
        state = _STATES.get(dom.state()[0], InstanceState.UNKNOWN)
        disks = []
        for entry in domainxml.disks(root):
            capacity = 0
            if entry.supported:
                try:
                    capacity = int(dom.blockInfo(entry.target)[0])
                except libvirt_module().libvirtError:
                    capacity = 0  # an image that is missing: the backup will say so
            disks.append(attrs.evolve(entry.disk, capacity_bytes=capacity))
        vcpus = domainxml.text(root, "vcpu", "0")
        attributes = domainxml.attributes(root)
        attributes["persistent"] = bool(dom.isPersistent())
        return Instance(external_id=dom.UUIDString(), name=dom.name(), kind="vm", state=state,
                        cpus=int(vcpus) if vcpus.isdigit() else 0,
                        memory_bytes=domainxml.memory_bytes(root), disks=tuple(disks),
                        nics=tuple(domainxml.nics(root)), location=host,
                        attributes=attributes)

    def _lookup(self, external_id: str, name: str) -> libvirt.virDomain:
        libvirt = libvirt_module()
        try:
            return self.conn.lookupByUUIDString(external_id)
        except libvirt.libvirtError as exc:
            if error_code(exc) == ERR_NO_DOMAIN:
                raise ProviderError(f"domain {name!r} ({external_id}) no longer exists on "
                                    f"{self.config.uri}") from exc
            raise ProviderError(f"domain {name!r}: {error_text(exc)}") from exc

    def _gone(self, external_id: str, name: str) -> str:
        """Why the domain cannot be read any more (removed, shut down), or ``""``."""
        libvirt = libvirt_module()
        try:
            dom = self.conn.lookupByUUIDString(external_id)
            if not dom.isActive():
                return f"domain {name!r} was shut down during the backup"
        except libvirt.libvirtError as exc:
            if error_code(exc) == ERR_NO_DOMAIN:
                return f"domain {name!r} was removed during the backup"
            return f"domain {name!r} cannot be reached during the backup: {error_text(exc)}"
        return ""

    # --- export ---------------------------------------------------------------------------

    def export(self, request: ExportRequest) -> AbstractContextManager[VmExport]:
        return self._export(request)

    @contextmanager
    def _export(self, request: ExportRequest) -> Iterator[VmExport]:
        instance, op = request.instance, request.op
        dom = self._lookup(instance.external_id, instance.name)
        name = dom.name()
        libvirt = libvirt_module()
        with translated(f"domain {name!r}: reading its configuration"):
            running = bool(dom.isActive())
            live = domainxml.parse(dom.XMLDesc(0))
            flags = libvirt.VIR_DOMAIN_XML_SECURE
            if dom.isPersistent():
                flags |= libvirt.VIR_DOMAIN_XML_INACTIVE
            config_xml = dom.XMLDesc(flags)
        disks = [d for d in domainxml.disks(live)
                 if request.disks is None or d.target in request.disks]
        if not disks:
            raise ProviderError(f"domain {name!r} has no disk to back up")
        for disk in disks:
            if not disk.supported:
                raise ProviderError(
                    f"domain {name!r}: disk {disk.target} is a {disk.disk.format} disk on a "
                    f"{disk.disk.backend!r} backend ({disk.disk.path or 'no source'}), which "
                    "this plugin does not back up; only file and block devices in raw or "
                    "qcow2 format are handled")
        previous = dict(request.previous.platform_state) if request.previous else {}
        self._keep[instance.external_id] = {
            str(p.platform_state.get("checkpoint")) for p in request.retained_points
            if p.platform_state.get("checkpoint")}
        since, reason = self._incremental_base(dom, request, previous, disks)
        modes, notes = {}, []
        bitmap_disks = set(previous.get("bitmap_disks") or ()) if since else set()
        for disk in disks:
            if since and disk.can_checkpoint and disk.target in bitmap_disks:
                modes[disk.target] = "incremental"
            else:
                modes[disk.target] = "full"
                if since:
                    notes.append(f"disk {disk.target}: " + (
                        "added since the last backup" if disk.can_checkpoint
                        else f"{disk.disk.format} images have no change tracking"))
        full = all(mode == "full" for mode in modes.values())
        if since and full:
            reason = "; ".join(notes)
        elif notes:
            op.logger.info("domain %s: read in full: %s", name, "; ".join(notes))
        if reason:
            op.logger.info("domain %s: full backup: %s", name, reason)
        opener = self._online if running else self._offline
        with opener(dom, request, disks, modes, since) as (readers, state, consistency):
            yield VmExport(files={CONFIG_FILE: config_xml.encode()}, config_name=CONFIG_FILE,
                           disks=readers, platform_state=state, full=full,
                           consistency=consistency, reason=reason)

    def _incremental_base(self, dom: libvirt.virDomain, request: ExportRequest,
                          previous: Mapping[str, Any], disks: Sequence[domainxml.DomainDisk]
                          ) -> tuple[str, str]:
        """The checkpoint an incremental reads against ("" for a full), and why not."""
        since = str(previous.get("checkpoint") or "")
        if request.previous is None:
            return "", "first backup of this domain"
        if request.full:
            return "", "a full backup was asked for"
        if not since:
            return "", "the last backup left no checkpoint (it was taken while the domain " \
                       "was shut off, or all its disks are raw)"
        broken = checkpoint.broken_reason(dom, since, disks)
        if broken:
            return "", broken
        return since, ""

    @contextmanager
    def _online(self, dom: libvirt.virDomain, request: ExportRequest,
                disks: Sequence[domainxml.DomainDisk], modes: dict[str, str], since: str
                ) -> Iterator[tuple[list[ExportedDisk], dict[str, Any], str]]:
        op, name = request.op, dom.name()
        transport = self.config.transport
        if transport == "auto":
            transport = "unix" if is_local(self.config.uri) else "tcp"
        host, port = "", 0
        if transport == "tcp":
            host = self.config.nbd_host or urlsplit(self.config.uri).hostname or "localhost"
            port = self.config.nbd_port or free_port(host)
        cleanup = ExitStack()
        scratch = private_dir(self.config.scratch_dir, f"sbr-{name[:40]}-")
        cleanup.callback(shutil.rmtree, scratch, True)
        new = checkpoint.new_name()
        bitmap_disks = sorted(d.target for d in disks if d.can_checkpoint)
        job = PullJob(dom, disks, modes=modes, since=since,
                      checkpoint=checkpoint.checkpoint_xml(new, disks) if bitmap_disks else None,
                      scratch=scratch, transport=transport, host=host, port=port)
        consistency = "crash"
        failed: BaseException | None = None
        readers: list[ExportedDisk] = []
        try:
            with (request.consistency_point() if request.consistency_point
                  else nullcontext()):
                consistency = self._begin_quiesced(dom, job, request)
            if job.checkpoint:
                op.logger.info("domain %s: checkpoint %s created%s", name, new,
                               f" (changes since {since})" if since else "")
            for disk in disks:
                context = job.bitmap_context(disk.target)
                nbd = NbdDisk(job.where(), disk.target, bitmap=context,
                              label=f"{name}/{disk.target}", connections=READ_CONNECTIONS)
                cleanup.callback(nbd.close)
                readers.append(ExportedDisk(
                    disk=attrs.evolve(disk.disk, capacity_bytes=nbd.size),
                    full=modes[disk.target] == "full", reason="", nbd=nbd,
                    still_there=lambda: self._gone(request.instance.external_id, name)))
            state = {"checkpoint": new if job.checkpoint else "",
                     "checkpoint_created": bool(job.checkpoint),
                     "bitmap_disks": bitmap_disks, "running": True}
            yield readers, state, consistency
        except BaseException as exc:
            failed = exc
            raise
        finally:
            for reader in readers:
                reader.nbd.close()
            problem = job.stop()
            cleanup.close()
            if (failed is not None or problem) and job.checkpoint:
                self._drop_checkpoint(dom, new, disks, op)
            if problem and failed is None:
                raise ProviderError(f"domain {name!r}: {problem}")

    def _begin_quiesced(self, dom: libvirt.virDomain, job: PullJob,
                        request: ExportRequest) -> str:
        """Start the job with the guest's file systems frozen when its agent answers;
        returns the consistency reached."""
        libvirt = libvirt_module()
        log, name = request.op.logger, dom.name()
        frozen = False
        if request.quiesce:
            try:
                dom.fsFreeze()
                frozen = True
            except libvirt.libvirtError as exc:
                why = ("it has no guest agent channel"
                       if error_code(exc) == ERR_ARGUMENT_UNSUPPORTED else
                       "its guest agent does not answer"
                       if error_code(exc) == ERR_AGENT_UNRESPONSIVE else error_text(exc))
                log.warning("domain %s: file systems not frozen (%s); the backup is "
                            "crash-consistent", name, why)
        try:
            job.start()
        finally:
            if frozen:
                try:
                    dom.fsThaw()
                except libvirt.libvirtError as exc:
                    log.error("domain %s: thawing the file systems failed: %s", name,
                              error_text(exc))
        if frozen:
            log.info("domain %s: file systems frozen by the guest agent while the backup "
                     "began", name)
            return "application"
        return "crash"

    @contextmanager
    def _offline(self, dom: libvirt.virDomain, request: ExportRequest,
                 disks: Sequence[domainxml.DomainDisk], modes: dict[str, str], since: str
                 ) -> Iterator[tuple[list[ExportedDisk], dict[str, Any], str]]:
        name = dom.name()
        if not is_local(self.config.uri):
            raise ProviderError(
                f"domain {name!r} is shut off: its disk images are read directly, which needs "
                f"the node on the hypervisor host, and {self.config.uri} is another host")
        request.op.logger.info("domain %s is shut off: reading its disk images with qemu-nbd",
                               name)
        readers: list[ExportedDisk] = []
        with ExitStack() as cleanup:
            scratch = private_dir(self.config.scratch_dir, f"sbr-{name[:40]}-")
            cleanup.callback(shutil.rmtree, scratch, True)
            for disk in disks:
                bitmap = since if modes[disk.target] == "incremental" else ""
                server = OfflineExport(disk, scratch, bitmap=bitmap)
                server.start()
                cleanup.callback(server.stop)
                nbd = NbdDisk(server.where(), disk.target, bitmap=server.bitmap_context(),
                              label=f"{name}/{disk.target}", connections=READ_CONNECTIONS)
                cleanup.callback(nbd.close)
                readers.append(ExportedDisk(
                    disk=attrs.evolve(disk.disk, capacity_bytes=nbd.size),
                    full=not bitmap, reason="", nbd=nbd,
                    still_there=lambda: ""))
            # No checkpoint can be made without QEMU: the next backup reads the changes since
            # the same one again (a superset, so nothing is missed).
            previous = dict(request.previous.platform_state) if request.previous else {}
            state = {"checkpoint": since, "checkpoint_created": False,
                     "bitmap_disks": list(previous.get("bitmap_disks") or ()) if since else [],
                     "running": False}
            # A domain shut down from inside left its disks consistent; one destroyed or
            # crashed did not.
            clean = dom.state()[1] == libvirt_module().VIR_DOMAIN_SHUTOFF_SHUTDOWN
            yield readers, state, "application" if clean else "crash"

    def _drop_checkpoint(self, dom: libvirt.virDomain, name: str,
                         disks: Sequence[domainxml.DomainDisk], op: Operation) -> None:
        libvirt = libvirt_module()
        try:
            checkpoint.delete(dom, name, disks)
            op.logger.info("domain %s: checkpoint %s removed", dom.name(), name)
        except libvirt.libvirtError as exc:
            op.logger.warning("domain %s: checkpoint %s could not be removed (%s); the next "
                              "backup removes it", dom.name(), name, error_text(exc))

    def finish_export(self, instance: Instance, platform_state: Mapping[str, Any], *,
                      committed: bool) -> None:
        """Committed: drop SBR's older checkpoints no other chain needs. Not committed: drop
        the one this export made."""
        current = str(platform_state.get("checkpoint") or "")
        op = Operation(logger=self.context.logger)
        try:
            dom = self._lookup(instance.external_id, instance.name)
        except ProviderError:
            return  # the domain is gone, and its checkpoints with it
        with translated(f"domain {instance.name!r}"):
            disks = domainxml.disks(domainxml.parse(dom.XMLDesc(0)))
        if not committed:
            if current and platform_state.get("checkpoint_created"):
                self._drop_checkpoint(dom, current, disks, op)
            return
        # Only one backup of a domain runs at a time, so every other SBR checkpoint is older:
        # those the other chains (destinations) start from stay.
        keep = {current} | self._keep.get(instance.external_id, set())
        for name in checkpoint.sbr_checkpoints(dom):
            if name not in keep:
                self._drop_checkpoint(dom, name, disks, op)

    # --- snapshots and imports: see snapshots.py and importing.py -----------------------------

    def list_snapshots(self, instance: Instance) -> Sequence[Snapshot]:
        from sbr_plugins.kvm import snapshots

        return snapshots.list_all(self._lookup(instance.external_id, instance.name))

    def create_snapshot(self, instance: Instance, name: str, *, quiesce: bool = True,
                        memory: bool = False, options: Mapping[str, Any] | None = None,
                        op: Operation | None = None) -> Snapshot:
        from sbr_plugins.kvm import snapshots

        dom = self._lookup(instance.external_id, instance.name)
        return snapshots.create(dom, name, quiesce=quiesce, memory=memory,
                                kind=str((options or {}).get("kind", "internal")),
                                op=op or Operation(logger=self.context.logger))

    def delete_snapshot(self, instance: Instance, snapshot_id: str, *,
                        op: Operation | None = None) -> None:
        from sbr_plugins.kvm import snapshots

        snapshots.delete(self._lookup(instance.external_id, instance.name), snapshot_id,
                         op=op or Operation(logger=self.context.logger))

    def revert_snapshot(self, instance: Instance, snapshot_id: str, *,
                        op: Operation | None = None) -> None:
        from sbr_plugins.kvm import snapshots

        snapshots.revert(self._lookup(instance.external_id, instance.name), snapshot_id,
                         op=op or Operation(logger=self.context.logger))

    def write_image(self, disk: Any, path: Path, fmt: str, *,
                    op: Operation | None = None) -> int:
        from sbr_plugins.kvm.images import write_image

        scratch = private_dir(self.config.scratch_dir, "sbr-image-")
        try:
            return write_image(disk, path, fmt, scratch=scratch,
                               op=op or Operation(logger=self.context.logger))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def import_vm(self, request: ImportRequest) -> Instance:
        from sbr_plugins.kvm import importing

        if not is_local(self.config.uri):
            raise ProviderError(f"kvm connection {self.context.name!r}: imports write the disk "
                                "images on the node, so the node must run on the hypervisor "
                                f"host, and {self.config.uri} is another host")
        dom = importing.import_domain(self.conn, request, name=self.context.name,
                                      scratch_root=self.config.scratch_dir)
        with translated(f"domain {request.name!r}"):
            return self._describe(dom, self.conn.getHostname())


def _version(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"

