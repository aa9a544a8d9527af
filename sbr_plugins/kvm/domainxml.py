"""Reading libvirt domain XML: the disks and NICs SBR cares about, as SBR models.

Only ``<disk device='disk'>`` entries are backed up; CD-ROMs and floppies are media, not
state. A disk's ``backend`` is its libvirt source type (``file``, ``block``, ``volume``) or,
for network disks, the protocol (``rbd``, ``iscsi``, ``gluster``, ``nbd``).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import attrs

from sbr_core.models import Disk, Nic

#: Disk source types whose data this plugin backs up and restores.
SUPPORTED_BACKENDS = ("file", "block")
#: Image formats a checkpoint (a persistent dirty bitmap) can live in.
BITMAP_FORMATS = ("qcow2",)


@attrs.frozen
class DomainDisk:
    """A disk of a domain as its XML says: SBR's :class:`Disk` plus the XML facts."""

    disk: Disk
    bus: str = ""
    readonly: bool = False

    @property
    def target(self) -> str:
        return self.disk.key

    @property
    def supported(self) -> bool:
        return self.disk.backend in SUPPORTED_BACKENDS and self.disk.format in ("raw", "qcow2")

    @property
    def can_checkpoint(self) -> bool:
        return self.supported and self.disk.format in BITMAP_FORMATS


def parse(xml: str) -> ET.Element:
    return ET.fromstring(xml)  # noqa: S314 - libvirt's own XML, never user input


def text(root: ET.Element, path: str, default: str = "") -> str:
    node = root.find(path)
    return (node.text or default).strip() if node is not None and node.text else default


def memory_bytes(root: ET.Element) -> int:
    node = root.find("memory")
    if node is None or not node.text:
        return 0
    units = {"b": 1, "bytes": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1 << 20,
             "mib": 1 << 20, "mb": 1000 ** 2, "g": 1 << 30, "gib": 1 << 30, "gb": 1000 ** 3,
             "t": 1 << 40, "tib": 1 << 40, "tb": 1000 ** 4}
    return int(node.text.strip()) * units.get(node.get("unit", "KiB").lower(), 1024)


def disk_elements(root: ET.Element) -> dict[str, ET.Element]:
    """The ``<disk>`` elements SBR backs up (not CD-ROMs or floppies) by target, in order."""
    out = {}
    for node in root.iterfind("devices/disk"):
        target = node.find("target")
        if node.get("device", "disk") == "disk" and target is not None and target.get("dev"):
            out[target.get("dev", "")] = node
    return out


def disks(root: ET.Element) -> list[DomainDisk]:
    """The domain's disks (not CD-ROMs or floppies), in XML order."""
    out = []
    for key, node in disk_elements(root).items():
        target = node.find("target")  # there: disk_elements kept only disks with one
        source = node.find("source")
        kind = node.get("type", "file")
        driver = node.find("driver")
        fmt = (driver.get("type") if driver is not None else None) or "raw"
        path, backend = "", kind
        if source is not None:
            if kind == "file":
                path = source.get("file", "")
            elif kind == "block":
                path = source.get("dev", "")
            elif kind == "network":
                backend = source.get("protocol", "network")
                path = source.get("name", "")
            elif kind == "volume":
                path = f"{source.get('pool', '')}/{source.get('volume', '')}"
        out.append(DomainDisk(
            disk=Disk(key=key, capacity_bytes=0, label=_alias(node),
                      path=path, format=fmt, backend=backend),
            bus=target.get("bus", "") if target is not None else "",
            readonly=node.find("readonly") is not None))
    return out


def _alias(node: ET.Element) -> str:
    alias = node.find("alias")
    return alias.get("name", "") if alias is not None else ""


def nics(root: ET.Element) -> list[Nic]:
    """The domain's network interfaces; ``network`` is the libvirt network or bridge."""
    out = []
    for index, node in enumerate(root.iterfind("devices/interface")):
        mac = node.find("mac")
        source = node.find("source")
        model = node.find("model")
        network = ""
        if source is not None:
            network = (source.get("network") or source.get("bridge") or source.get("dev")
                       or "")
        address = mac.get("address", "") if mac is not None else ""
        out.append(Nic(key=address or f"net{index}", mac=address, network=network,
                       model=model.get("type", "") if model is not None else ""))
    return out


def guest_agent_channel(root: ET.Element) -> str:
    """``connected``, ``disconnected``, or ``""`` when no guest agent channel is defined."""
    for node in root.iterfind("devices/channel"):
        target = node.find("target")
        if target is not None and target.get("name") == "org.qemu.guest_agent.0":
            return target.get("state", "disconnected")
    return ""


def attributes(root: ET.Element) -> dict[str, Any]:
    """What the inventory keeps beyond the model's fields."""
    out: dict[str, Any] = {}
    for key, path in (("title", "title"), ("description", "description"),
                      ("machine_type", "os/type")):
        value = text(root, path)
        if value:
            out[key] = value
    os_type = root.find("os/type")
    if os_type is not None and os_type.get("machine"):
        out["machine_type"] = os_type.get("machine")
    out["guest_agent"] = guest_agent_channel(root) or "none"
    return out
