"""libvirt snapshots: internal (inside the qcow2 images, with the memory state when the
domain runs) and external (a new qcow2 overlay per disk; disk-only unless memory is asked).

libvirt 9.0 deletes both kinds; it reverts to internal ones only. A revert rolls the disks
back without touching the checkpoints' bitmaps, so SBR's checkpoints are dropped after one
and the next backup is a full one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sbr_core.errors import ProviderError
from sbr_core.operation import Operation
from sbr_core.providers.hypervisor import Snapshot
from sbr_plugins.kvm import checkpoint, domainxml
from sbr_plugins.kvm.connection import (
    ERR_AGENT_UNRESPONSIVE,
    ERR_ARGUMENT_UNSUPPORTED,
    ERR_NO_DOMAIN_SNAPSHOT,
    error_code,
    error_text,
    libvirt_module,
    translated,
)

if TYPE_CHECKING:
    import libvirt

KINDS = ("internal", "external")


def _snapshot(snap: libvirt.virDomainSnapshot) -> Snapshot:
    root = domainxml.parse(snap.getXMLDesc(0))
    memory = root.find("memory")
    disks = [d.get("snapshot", "internal") for d in root.iterfind("disks/disk")]
    external = any(kind == "external" for kind in disks) or (
        memory is not None and memory.get("snapshot") == "external")
    created = domainxml.text(root, "creationTime", "0")
    return Snapshot(snapshot_id=snap.getName(), name=snap.getName(),
                    created_at=float(created) if created.replace(".", "").isdigit() else 0.0,
                    description=domainxml.text(root, "description"),
                    includes_memory=memory is not None and memory.get("snapshot") != "no"
                    and domainxml.text(root, "state") not in ("shutoff", "disk-snapshot"),
                    parent_id=domainxml.text(root, "parent/name"),
                    kind="external" if external else "internal")


def list_all(dom: libvirt.virDomain) -> list[Snapshot]:
    """The domain's snapshots, oldest first."""
    with translated(f"domain {dom.name()!r}: listing snapshots"):
        found = [_snapshot(s) for s in dom.listAllSnapshots(0)]
    parents = {s.name: s.parent_id for s in found}

    def depth(name: str) -> int:  # creation times have whole seconds: parents go first
        steps = 0
        while parents.get(name) and steps < len(parents):
            name, steps = parents[name], steps + 1
        return steps

    return sorted(found, key=lambda s: (s.created_at, depth(s.name), s.name))


def _lookup(dom: libvirt.virDomain, name: str) -> libvirt.virDomainSnapshot | None:
    libvirt = libvirt_module()
    try:
        return dom.snapshotLookupByName(name)
    except libvirt.libvirtError as exc:
        if error_code(exc) == ERR_NO_DOMAIN_SNAPSHOT:
            return None
        raise ProviderError(f"domain {dom.name()!r}: snapshot {name}: {error_text(exc)}") \
            from exc


def create(dom: libvirt.virDomain, name: str, *, quiesce: bool, memory: bool, kind: str,
           op: Operation) -> Snapshot:
    """Take snapshot ``name`` (see the module doc for the kinds)."""
    libvirt = libvirt_module()
    domain = dom.name()
    if kind not in KINDS:
        raise ProviderError(f"snapshot kind {kind!r}: must be one of {', '.join(KINDS)}")
    running = bool(dom.isActive())
    disks = domainxml.disks(domainxml.parse(dom.XMLDesc(0)))
    if not disks:
        raise ProviderError(f"domain {domain!r} has no disk to snapshot")
    flags = 0
    if kind == "internal":
        raw = [d.target for d in disks if d.disk.format != "qcow2"]
        if raw:
            raise ProviderError(f"domain {domain!r}: internal snapshots need qcow2 disks, and "
                                f"{', '.join(raw)} {'is' if len(raw) == 1 else 'are'} not; "
                                "take an external snapshot instead")
        if running and not memory:
            op.logger.info("domain %s: an internal snapshot of a running domain includes "
                           "its memory (libvirt requires it); the domain pauses meanwhile",
                           domain)
        xml = (f"<domainsnapshot><name>{name}</name>"
               f"<description>made by SBR</description></domainsnapshot>")
    else:
        overlays = []
        for disk in disks:
            if disk.disk.backend != "file":
                raise ProviderError(f"domain {domain!r}: disk {disk.target} is a "
                                    f"{disk.disk.backend} disk; external snapshots here are "
                                    "made of file disks only")
            overlay = Path(disk.disk.path).with_name(f"{Path(disk.disk.path).stem}.{name}.qcow2")
            overlays.append(f"<disk name='{disk.target}' snapshot='external'>"
                            f"<driver type='qcow2'/><source file='{overlay}'/></disk>")
        if memory and running:
            state = Path(disks[0].disk.path).with_name(f"{domain}.{name}.memory")
            memory_xml = f"<memory snapshot='external' file='{state}'/>"
        else:
            memory_xml = "<memory snapshot='no'/>"
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
        flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
        xml = (f"<domainsnapshot><name>{name}</name><description>made by SBR</description>"
               f"{memory_xml}<disks>{''.join(overlays)}</disks></domainsnapshot>")
    quiesced = False
    if quiesce and running and flags & libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY:
        if domainxml.guest_agent_channel(domainxml.parse(dom.XMLDesc(0))) == "connected":
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE
            quiesced = True
        else:
            op.logger.warning("domain %s: no guest agent answers; the snapshot is "
                              "crash-consistent", domain)
    try:
        snap = dom.snapshotCreateXML(xml, flags)
    except libvirt.libvirtError as exc:
        if quiesced and error_code(exc) in (ERR_ARGUMENT_UNSUPPORTED, ERR_AGENT_UNRESPONSIVE):
            op.logger.warning("domain %s: the guest agent could not freeze the file "
                              "systems (%s); the snapshot is crash-consistent", domain,
                              error_text(exc))
            with translated(f"domain {domain!r}: taking snapshot {name}"):
                snap = dom.snapshotCreateXML(
                    xml, flags & ~libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE)
        else:
            raise ProviderError(f"domain {domain!r}: taking snapshot {name}: "
                                f"{error_text(exc)}") from exc
    op.logger.info("domain %s: %s snapshot %s taken", domain, kind, name)
    made = _snapshot(snap)
    return Snapshot(snapshot_id=made.snapshot_id, name=made.name, created_at=made.created_at,
                    description=made.description, includes_memory=made.includes_memory,
                    quiesced=quiesced, parent_id=made.parent_id, kind=made.kind)


def delete(dom: libvirt.virDomain, name: str, *, op: Operation) -> None:
    """Remove snapshot ``name``, merging an external one's overlay back; a snapshot already
    gone is not an error."""
    snap = _lookup(dom, name)
    if snap is None:
        return
    with translated(f"domain {dom.name()!r}: deleting snapshot {name}"):
        snap.delete(0)
    op.logger.info("domain %s: snapshot %s deleted", dom.name(), name)


def revert(dom: libvirt.virDomain, name: str, *, op: Operation) -> None:
    """Return the domain to snapshot ``name`` (internal snapshots only on libvirt 9.0)."""
    snap = _lookup(dom, name)
    if snap is None:
        raise ProviderError(f"domain {dom.name()!r} has no snapshot {name!r}")
    with translated(f"domain {dom.name()!r}: reverting to snapshot {name}"):
        dom.revertToSnapshot(snap, 0)
    # The disks went back; the bitmaps did not, so they no longer tell what changed.
    disks = domainxml.disks(domainxml.parse(dom.XMLDesc(0)))
    for stale in checkpoint.sbr_checkpoints(dom):
        with translated(f"domain {dom.name()!r}: dropping checkpoint {stale}"):
            checkpoint.delete(dom, stale, disks)
    op.logger.info("domain %s: reverted to snapshot %s; the next backup is a full one",
                   dom.name(), name)

