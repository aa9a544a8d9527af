"""Recreating a domain from a backup: as a new domain, or over the original one.

A new domain gets the requested name, a new UUID and new MAC addresses (unless the admin
keeps the identity), its disks written as new images in a directory or a directory-type
storage pool, and its NICs moved to other networks or dropped. Replacing the original needs
it shut off: the new images are written beside the old ones and renamed over them only
when all are complete, so a failed restore leaves the domain as it was.
"""

from __future__ import annotations

import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

from sbr_core.errors import ProviderError
from sbr_core.providers.hypervisor import ImportRequest
from sbr_plugins.kvm import domainxml
from sbr_plugins.kvm.backup import private_dir
from sbr_plugins.kvm.connection import ERR_NO_DOMAIN, error_code, libvirt_module, translated
from sbr_plugins.kvm.images import write_image

if TYPE_CHECKING:
    import libvirt


def _directory(conn: libvirt.virConnect, request: ImportRequest) -> Path | None:
    """Where new images go by default: ``placement['directory']`` or the target path of
    the directory-type pool ``placement['pool']``."""
    placement = request.placement
    if placement.get("directory"):
        return Path(placement["directory"])
    pool_name = placement.get("pool")
    if not pool_name:
        return None
    libvirt = libvirt_module()
    try:
        pool = conn.storagePoolLookupByName(pool_name)
    except libvirt.libvirtError as exc:
        raise ProviderError(f"no storage pool {pool_name!r}: {exc}") from exc
    root = domainxml.parse(pool.XMLDesc(0))
    if root.get("type") not in ("dir", "fs", "netfs"):
        raise ProviderError(f"storage pool {pool_name!r} is a {root.get('type')} pool; "
                            "disks are restored into directory pools (dir, fs, netfs)")
    path = domainxml.text(root, "target/path")
    if not path:
        raise ProviderError(f"storage pool {pool_name!r} has no target path")
    return Path(path)


def _point_disk(node: ET.Element, path: Path, fmt: str) -> None:
    """Make a disk element use the new image file."""
    node.set("type", "file")
    for child in list(node):
        if child.tag in ("source", "backingStore"):
            node.remove(child)
    driver = node.find("driver")
    if driver is None:
        driver = ET.SubElement(node, "driver", {"name": "qemu"})
    driver.set("type", fmt)
    source = ET.Element("source", {"file": str(path)})
    node.insert(list(node).index(driver) + 1, source)


def _remap_nics(root: ET.Element, network_map: dict[str, str], new_identity: bool) -> None:
    devices = root.find("devices")
    if devices is None:
        return
    for node in list(devices.iterfind("interface")):
        source = node.find("source")
        attribute = next((a for a in ("network", "bridge", "dev")
                          if source is not None and source.get(a)), "")
        current = source.get(attribute, "") if source is not None and attribute else ""
        if current in network_map:
            wanted = network_map[current]
            if not wanted:
                devices.remove(node)
                continue
            assert source is not None
            source.set(attribute, wanted)
        if new_identity:
            mac = node.find("mac")
            if mac is not None:
                node.remove(mac)  # libvirt makes a new one


def _check_networks(conn: libvirt.virConnect, root: ET.Element) -> None:
    """Refuse, before any disk is written, NICs on libvirt networks the host lacks."""
    wanted = sorted({source.get("network", "") for source in
                     root.iterfind("devices/interface[@type='network']/source")
                     if source.get("network")})
    if not wanted:
        return
    with translated("listing the host's networks"):
        present = {network.name() for network in conn.listAllNetworks(0)}
    missing = [name for name in wanted if name not in present]
    if missing:
        raise ProviderError(f"network {', '.join(repr(n) for n in missing)} does not exist on "
                            "this host; map it to another network or drop the NIC")


def import_domain(conn: libvirt.virConnect, request: ImportRequest, *, name: str,
                  scratch_root: Path) -> libvirt.virDomain:
    """Define (and start, if asked) the domain a backup describes; see the module doc."""
    libvirt = libvirt_module()
    try:
        root = domainxml.parse(request.files[request.config_name].decode())
    except (KeyError, ET.ParseError, UnicodeDecodeError) as exc:
        raise ProviderError(f"the backup has no readable {request.config_name}: {exc}") from exc
    fmt = request.disk_format or "qcow2"
    if fmt not in ("qcow2", "raw"):
        raise ProviderError(f"disk format {fmt!r}: kvm imports write qcow2 or raw images")
    nodes = domainxml.disk_elements(root)
    missing = sorted(set(request.disks) - set(nodes))
    if missing:
        raise ProviderError(f"the backup's configuration has no disk {', '.join(missing)}")
    if request.replace is not None:
        return _replace(conn, request, root, nodes, fmt, scratch_root)
    try:
        conn.lookupByName(request.name)
        raise ProviderError(f"a domain named {request.name!r} already exists on {name!r}; "
                            "choose another name, or replace it")
    except libvirt.libvirtError as exc:
        if error_code(exc) != ERR_NO_DOMAIN:
            raise ProviderError(f"looking up {request.name!r}: {exc}") from exc
    directory = _directory(conn, request)
    targets: dict[str, Path] = {}
    for key in request.disks:
        if key in request.disk_targets:
            targets[key] = Path(request.disk_targets[key])
        elif directory is not None:
            targets[key] = directory / f"{request.name}-{key}.{fmt}"
        else:
            raise ProviderError(f"disk {key}: say where it goes (a directory, a storage pool, "
                                "or a path for this disk)")
    for key, path in targets.items():
        if path.exists():
            raise ProviderError(f"disk {key}: {path} already exists; SBR does not overwrite "
                                "images")
        if not path.parent.is_dir():
            raise ProviderError(f"disk {key}: directory {path.parent} does not exist on "
                                "this node")
    name_node = root.find("name")
    if name_node is None:
        name_node = ET.SubElement(root, "name")
    name_node.text = request.name
    if request.new_identity:
        for node in root.findall("uuid"):
            root.remove(node)
    _remap_nics(root, dict(request.network_map), request.new_identity)
    _check_networks(conn, root)
    written: list[Path] = []
    scratch = private_dir(scratch_root, "sbr-import-")
    try:
        for key, path in targets.items():
            request.op.check()
            request.op.logger.info("disk %s: writing %s (%s)", key, path, fmt)
            write_image(request.disks[key], path, fmt, scratch=scratch, op=request.op)
            written.append(path)
            _point_disk(nodes[key], path, fmt)
        with translated(f"defining domain {request.name!r}"):
            dom = conn.defineXML(ET.tostring(root, encoding="unicode"))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if request.power_on:
        with translated(f"starting domain {request.name!r}"):
            dom.create()
    return dom


def _replace(conn: libvirt.virConnect, request: ImportRequest, root: ET.Element,
             nodes: dict[str, ET.Element], fmt: str, scratch_root: Path
             ) -> libvirt.virDomain:
    """Write the backup over the (shut-off) original: new images beside the old ones,
    renamed over them once all are written, then the stored configuration defined."""
    replace = request.replace
    assert replace is not None
    libvirt = libvirt_module()
    try:
        dom = conn.lookupByUUIDString(replace.external_id)
    except libvirt.libvirtError as exc:
        raise ProviderError(f"domain {replace.name!r} to replace no longer exists") from exc
    if dom.isActive():
        raise ProviderError(f"domain {dom.name()!r} is running; shut it off before restoring "
                            "over it")
    current = {d.target: d for d in domainxml.disks(domainxml.parse(dom.XMLDesc(0)))}
    finals: dict[str, Path] = {}
    for key in request.disks:
        disk = current.get(key)
        if disk is None or disk.disk.backend != "file" or not disk.disk.path:
            raise ProviderError(f"domain {dom.name()!r} has no file disk {key} to restore "
                                "over")
        finals[key] = Path(disk.disk.path)
    staged: dict[str, Path] = {}
    scratch = private_dir(scratch_root, "sbr-import-")
    try:
        for key, final in finals.items():
            request.op.check()
            temporary = final.with_name(f".{final.name}.sbr-restore")
            temporary.unlink(missing_ok=True)
            write_image(request.disks[key], temporary, fmt, scratch=scratch, op=request.op)
            staged[key] = temporary
        for key, temporary in staged.items():
            os.replace(temporary, finals[key])
            _point_disk(nodes[key], finals[key], fmt)
    except BaseException:
        for temporary in staged.values():
            temporary.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    name_node = root.find("name")
    if name_node is not None:
        name_node.text = dom.name()
    uuid = root.find("uuid")
    if uuid is not None:
        uuid.text = dom.UUIDString()
    with translated(f"redefining domain {dom.name()!r}"):
        # The checkpoints' bitmaps went with the old images.
        for cp in dom.listAllCheckpoints(0):
            cp.delete(libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
        dom = conn.defineXML(ET.tostring(root, encoding="unicode"))
    if request.power_on:
        with translated(f"starting domain {dom.name()!r}"):
            dom.create()
    return dom
