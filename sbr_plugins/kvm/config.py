"""Settings of a KVM/libvirt connection."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs

from sbr_core.settings import Secret, setting

#: How a node reaches a running domain's backup export.
TRANSPORTS = ("auto", "unix", "tcp")


def _libvirt_uri(_: Any, __: attrs.Attribute[str], value: str) -> None:
    parts = urlsplit(value)
    if not parts.scheme or not parts.scheme.split("+")[0].isalnum() or not parts.path:
        raise ValueError(f"{value!r} is not a libvirt URI (e.g. qemu:///system, "
                         "qemu+ssh://root@host/system, qemu+tls://host/system)")
    if not parts.scheme.startswith("qemu"):
        raise ValueError(f"{value!r}: only QEMU/KVM URIs (qemu://, qemu+ssh://, …) are "
                         "supported")


def _absolute(_: Any, __: attrs.Attribute[Path], value: Path) -> None:
    if not value.is_absolute():
        raise ValueError(f"{str(value)!r} is not an absolute path")


def _port(_: Any, __: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"{value} is not a TCP port (0 picks a free one from 10809)")


@attrs.frozen
class KvmConfig:
    """Settings of a libvirt connection; every domain it lists is protected."""

    uri: str = setting(
        label="libvirt URI",
        help="The hypervisor to protect: qemu:///system on the node itself, "
        "qemu+ssh://root@host/system or qemu+tls://host/system for another host.",
        validator=_libvirt_uri)
    username: str = setting(
        label="User name", help="For URIs that ask for credentials (SASL); empty otherwise.",
        default="")
    password: Secret = setting(
        label="Password", help="For URIs that ask for credentials. Stored encrypted, never "
        "shown again.", secret=True, default=Secret(""))
    transport: str = setting(
        label="Backup transport",
        help="How the node reads a running domain's disks: 'unix' (a socket on the "
        "hypervisor host: the node runs there), 'tcp' (the hypervisor serves NBD on a TCP "
        "port the node connects to), 'auto' (unix for a local URI, tcp otherwise).",
        choices=TRANSPORTS, default="auto")
    nbd_host: str = setting(
        label="NBD address",
        help="For the tcp transport: the hypervisor's address as the node reaches it. Empty: "
        "the host named in the URI.", default="")
    nbd_port: int = setting(
        label="NBD port", help="For the tcp transport; 0 picks the first free port from "
        "10809.", default=0, validator=_port)
    scratch_dir: Path = setting(
        label="Scratch directory",
        help="On the hypervisor host: where QEMU keeps the blocks the guest overwrites "
        "while a backup reads them (and the unix sockets). It needs room for what the guest "
        "writes during one backup.",
        default=Path("/var/tmp"), validator=_absolute)  # noqa: S108 - mkdtemp inside
