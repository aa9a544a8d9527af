"""The two ways a domain's disks are served for reading.

- A running domain: a libvirt pull-mode backup job. QEMU serves each disk, frozen at the
  job's start, over NBD; blocks the guest overwrites meanwhile are first copied to a scratch
  file. The job never ends by itself: :meth:`PullJob.stop` aborts it, and libvirt removes
  the NBD server and the scratch files.
- A shut-off domain: ``qemu-nbd`` read-only on each disk image, here on the node; a
  checkpoint's bitmap, if the image has it, gives the changes since that checkpoint.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sbr_core.errors import ProviderError
from sbr_plugins.kvm.connection import ERR_NO_DOMAIN_BACKUP, error_code, libvirt_module, translated
from sbr_plugins.kvm.domainxml import DomainDisk
from sbr_plugins.kvm.qemunbd import QemuNbd

if TYPE_CHECKING:
    import libvirt

FIRST_NBD_PORT = 10809
_SOCKET_PATH_MAX = 107


def private_dir(parent: Path, prefix: str) -> Path:
    """A new 0700 directory under ``parent`` for sockets and scratch files."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    except OSError as exc:
        raise ProviderError(f"cannot make a scratch directory in {parent}: {exc}") from exc
    if len(str(path / "vda.sock")) > _SOCKET_PATH_MAX:
        shutil.rmtree(path, ignore_errors=True)
        raise ProviderError(f"scratch directory {parent} is too deep for a unix socket path "
                            f"(at most {_SOCKET_PATH_MAX} bytes); choose a shorter one")
    return path


def free_port(host: str, start: int = FIRST_NBD_PORT) -> int:
    """The first port from ``start`` nobody listens on at ``host``."""
    for port in range(start, start + 200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.5)
            if probe.connect_ex((host, port)) != 0:
                return port
    raise ProviderError(f"no free NBD port from {start} on {host}")


class PullJob:
    """One libvirt pull-mode backup job over ``disks``.

    ``modes`` maps each disk target to ``"full"`` or ``"incremental"``; ``since`` is the
    checkpoint incremental disks are read against; ``checkpoint`` is the XML of the checkpoint
    created atomically with the job (None: no new checkpoint).
    """

    def __init__(self, dom: libvirt.virDomain, disks: Sequence[DomainDisk], *,
                 modes: dict[str, str], since: str, checkpoint: str | None,
                 scratch: Path, transport: str, host: str = "", port: int = 0) -> None:
        self.dom = dom
        self.name = dom.name()
        self.disks = list(disks)
        self.modes = modes
        self.since = since
        self.checkpoint = checkpoint
        self.scratch = scratch
        self.transport = transport
        self.host = host
        self.port = port
        self.started = False

    def where(self) -> tuple[Any, ...]:
        if self.transport == "unix":
            return ("unix", str(self.scratch / "nbd.sock"))
        return ("tcp", self.host, self.port)

    def bitmap_context(self, target: str) -> str:
        return f"qemu:dirty-bitmap:backup-{target}" if self.modes[target] == "incremental" else ""

    def backup_xml(self) -> str:
        if self.transport == "unix":
            server = f"<server transport='unix' socket='{self.scratch / 'nbd.sock'}'/>"
        else:
            server = f"<server transport='tcp' name='{self.host}' port='{self.port}'/>"
        entries = []
        for disk in self.disks:
            mode = ""
            if self.since:
                mode = f" backupmode='{self.modes[disk.target]}'"
                if self.modes[disk.target] == "incremental":
                    mode += f" incremental='{self.since}'"
            entries.append(
                f"<disk name='{disk.target}' backup='yes' type='file'{mode}>"
                f"<scratch file='{self.scratch / (disk.target + '.scratch.qcow2')}'/></disk>")
        incremental = f"<incremental>{self.since}</incremental>" if self.since else ""
        return (f"<domainbackup mode='pull'>{incremental}{server}"
                f"<disks>{''.join(entries)}</disks></domainbackup>")

    def start(self) -> None:
        with translated(f"domain {self.name!r}: starting the backup job"):
            self.dom.backupBegin(self.backup_xml(), self.checkpoint, 0)
        self.started = True

    def stop(self) -> str:
        """End the job; returns why it failed, or ``""`` if QEMU served every read in full."""
        if not self.started:
            return ""
        libvirt = libvirt_module()
        self.started = False
        try:
            self.dom.abortJob()
        except libvirt.libvirtError as exc:
            if error_code(exc) not in (ERR_NO_DOMAIN_BACKUP,) and self._active():
                return f"the backup job could not be ended: {exc}"
        try:
            stats = self.dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        except libvirt.libvirtError:
            return ""  # the domain is gone: reads would have failed already
        if stats and stats.get("success") is False:
            return f"the backup job failed: {stats.get('errmsg') or 'no reason given'}"
        return ""

    def _active(self) -> bool:
        try:
            return bool(self.dom.isActive())
        except Exception:
            return False


class OfflineExport:
    """``qemu-nbd`` serving one shut-off domain's disk image read-only on a unix socket."""

    def __init__(self, disk: DomainDisk, scratch: Path, *, bitmap: str = "") -> None:
        self.disk = disk
        self.bitmap = bitmap
        options: tuple[str, ...] = ("--read-only", "--persistent", "--shared=4")
        if bitmap:
            options += (f"--bitmap={bitmap}",)
        self.server = QemuNbd(disk.disk.path, scratch / f"{disk.target}.sock",
                              fmt=disk.disk.format, export=disk.target,
                              label=f"disk {disk.target}", options=options)

    def where(self) -> tuple[Any, ...]:
        return ("unix", str(self.server.socket))

    def bitmap_context(self) -> str:
        return f"qemu:dirty-bitmap:{self.bitmap}" if self.bitmap else ""

    def start(self) -> None:
        path = self.disk.disk.path
        if not os.path.exists(path):
            raise ProviderError(f"disk {self.disk.target}: {path} is not reachable from this "
                                "node; a shut-off domain is backed up by a node on its host")
        self.server.start()

    def stop(self) -> None:
        self.server.stop()
