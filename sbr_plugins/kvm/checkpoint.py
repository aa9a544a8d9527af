"""libvirt checkpoints SBR makes: naming, creating, validating and deleting them.

A checkpoint is a persistent dirty bitmap per qcow2 disk plus libvirt's metadata about it.
SBR names its own ``sbr-…`` and never touches anyone else's. A chain is "broken" when the
metadata is gone (deleted outside SBR, the domain undefined and defined again) or a bitmap
is missing or inconsistent (QEMU was killed, the image was replaced); the next backup is
then a full one, and the reason goes to the task log.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from sbr_plugins.kvm.connection import (
    ERR_CHECKPOINT_INCONSISTENT,
    ERR_NO_DOMAIN_CHECKPOINT,
    error_code,
    error_text,
    libvirt_module,
    translated,
)
from sbr_plugins.kvm.domainxml import DomainDisk, parse

if TYPE_CHECKING:
    import libvirt

PREFIX = "sbr-"


def new_name() -> str:
    """A checkpoint (and bitmap) name that sorts by creation time."""
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    return f"{PREFIX}{stamp}.{int(now * 1000) % 1000:03d}-{secrets.token_hex(3)}"


def checkpoint_xml(name: str, disks: Sequence[DomainDisk]) -> str:
    """A checkpoint over every disk that can hold a bitmap (qcow2); the others get none."""
    entries = "".join(
        f"<disk name='{d.target}' checkpoint='{'bitmap' if d.can_checkpoint else 'no'}'/>"
        for d in disks)
    return (f"<domaincheckpoint><name>{name}</name>"
            f"<description>made by SBR for an incremental backup</description>"
            f"<disks>{entries}</disks></domaincheckpoint>")


def covered_disks(checkpoint: libvirt.virDomainCheckpoint) -> set[str]:
    """The disk targets a checkpoint keeps a bitmap for."""
    root = parse(checkpoint.getXMLDesc(0))
    return {node.get("name", "") for node in root.iterfind("disks/disk")
            if node.get("checkpoint", "bitmap") == "bitmap"}


def sbr_checkpoints(dom: libvirt.virDomain) -> list[str]:
    """Names of the checkpoints SBR made on ``dom``, oldest first."""
    with translated(f"domain {dom.name()!r}: listing checkpoints"):
        names = [c.getName() for c in dom.listAllCheckpoints(0)]
    return sorted(n for n in names if n.startswith(PREFIX))


def broken_reason(dom: libvirt.virDomain, name: str, disks: Iterable[DomainDisk]) -> str:
    """Why checkpoint ``name`` cannot serve an incremental backup, or ``""`` if it can."""
    libvirt = libvirt_module()
    try:
        checkpoint = dom.checkpointLookupByName(name)
    except libvirt.libvirtError as exc:
        if error_code(exc) == ERR_NO_DOMAIN_CHECKPOINT:
            return (f"checkpoint {name} no longer exists (deleted outside SBR, or the domain "
                    "was undefined and defined again)")
        return f"checkpoint {name} cannot be read: {error_text(exc)}"
    try:
        xml = checkpoint.getXMLDesc(0)
        if dom.isActive():
            # Redefining a checkpoint as it is, with validation, makes libvirt check every
            # bitmap of it in the running QEMU: present, recording, consistent.
            dom.checkpointCreateXML(xml, libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE
                                    | libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE_VALIDATE)
            return ""
    except libvirt.libvirtError as exc:
        if error_code(exc) == ERR_CHECKPOINT_INCONSISTENT:
            return f"checkpoint {name} is broken: {error_text(exc)}"
        return f"checkpoint {name} cannot be checked: {error_text(exc)}"
    covered = covered_disks(checkpoint)
    for disk in disks:
        if disk.target in covered:
            problem = offline_bitmap_problem(disk, name)
            if problem:
                return f"checkpoint {name} is broken: {problem}"
    return ""


def image_bitmaps(path: str) -> list[dict[str, object]]:
    """The persistent bitmaps of a qcow2 image, as ``qemu-img info`` lists them."""
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", path],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise OSError(out.stderr.strip() or f"qemu-img info {path} failed")
    info = json.loads(out.stdout)
    return list((info.get("format-specific") or {}).get("data", {}).get("bitmaps") or [])


def offline_bitmap_problem(disk: DomainDisk, name: str) -> str:
    """Why the bitmap ``name`` in a shut-off domain's disk cannot be trusted, or ``""``."""
    if not os.path.exists(disk.disk.path):
        return f"disk {disk.target} ({disk.disk.path}) is not reachable from this node"
    try:
        bitmaps = image_bitmaps(disk.disk.path)
    except (OSError, ValueError) as exc:
        return f"disk {disk.target}: {exc}"
    for bitmap in bitmaps:
        if bitmap.get("name") == name:
            flags = list(bitmap.get("flags") or [])  # type: ignore[call-overload]
            if "in-use" in flags:
                return (f"bitmap {name} of disk {disk.target} is inconsistent (QEMU did not "
                        "close the image cleanly)")
            if "auto" not in flags:
                return f"bitmap {name} of disk {disk.target} is not recording"
            return ""
    return f"disk {disk.target} has no bitmap {name}"


def delete(dom: libvirt.virDomain, name: str, disks: Sequence[DomainDisk]) -> None:
    """Remove checkpoint ``name``: bitmaps and metadata. A running domain's libvirt does
    both; for a shut-off one the metadata goes and the bitmaps are removed with qemu-img.
    A checkpoint already gone is not an error."""
    libvirt = libvirt_module()
    try:
        checkpoint = dom.checkpointLookupByName(name)
    except libvirt.libvirtError as exc:
        if error_code(exc) == ERR_NO_DOMAIN_CHECKPOINT:
            return
        raise
    if dom.isActive():
        try:
            checkpoint.delete(0)
            return
        except libvirt.libvirtError:
            # A bitmap already missing from the image (the very thing that broke the
            # chain) makes libvirt refuse; drop the metadata and whatever bitmaps remain.
            checkpoint.delete(libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
            return
    covered = covered_disks(checkpoint)
    checkpoint.delete(libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
    for disk in disks:
        if disk.target in covered and os.path.exists(disk.disk.path):
            subprocess.run(["qemu-img", "bitmap", "--remove", disk.disk.path, name],
                           capture_output=True, timeout=60)
