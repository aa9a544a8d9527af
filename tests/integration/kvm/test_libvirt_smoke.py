"""End-to-end proof of the KVM test machinery: a private libvirtd runs a TCG domain, a guest
write is injected while it runs, and a pull-mode backup with a checkpoint exports exactly the
disk's bytes over NBD, frozen at the backup's start."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from tests.libvirtd import PrivateLibvirtd

if TYPE_CHECKING:  # imported in the test, so a host without libvirt-python skips, not errors
    import libvirt

MiB = 1 << 20
SIZE = 64 * MiB


def _qemu_io(dom: libvirt.virDomain, qom: str, command: str) -> None:
    """Write into the running guest's disk through its virtio device, as the guest would."""
    import libvirt_qemu

    out = libvirt_qemu.qemuMonitorCommand(
        dom, f'qemu-io -d {qom} "{command}"', libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
    assert "error" not in out.lower(), out


def _read_export(socket: Path, export: str) -> bytes:
    """The whole export, read with libnbd when it imports, else with qemu-img convert."""
    try:
        import nbd
    except ImportError:
        out = socket.with_name("export.raw")
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw",
                        f"nbd+unix:///{export}?socket={socket}", str(out)],
                       check=True, capture_output=True, timeout=120)
        return out.read_bytes()
    handle = nbd.NBD()
    handle.set_export_name(export)
    handle.connect_unix(str(socket))
    try:
        size = handle.get_size()
        return b"".join(bytes(handle.pread(min(4 * MiB, size - off), off))
                        for off in range(0, size, 4 * MiB))
    finally:
        handle.shutdown()


def test_pull_backup_of_running_tcg_domain(libvirtd: PrivateLibvirtd, tmp_path: Path) -> None:
    import libvirt

    disk = tmp_path / "vda.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 1M",
                    "-c", "write -P 0x22 4M 512k", str(disk)],
                   check=True, capture_output=True)
    expected = bytearray(SIZE)
    expected[0:MiB] = b"\x11" * MiB
    expected[4 * MiB:4 * MiB + 512 * 1024] = b"\x22" * (512 * 1024)
    expected[8 * MiB:8 * MiB + 65536] = b"\x77" * 65536

    name = f"sbr-smoke-{uuid.uuid4().hex[:8]}"
    socket = tmp_path / "nbd.sock"
    conn = libvirtd.connection()
    with libvirtd.domain(name, disk) as dom:
        qom = f"/machine/peripheral/{libvirtd.disk_alias(dom)}/virtio-backend"
        _qemu_io(dom, qom, "write -P 0x77 8M 64k")

        backup = f"""<domainbackup mode='pull'>
  <server transport='unix' socket='{socket}'/>
  <disks>
    <disk name='vda' backup='yes' type='file'>
      <scratch file='{tmp_path / "scratch.vda.qcow2"}'/>
    </disk>
  </disks>
</domainbackup>"""
        checkpoint = ("<domaincheckpoint><name>cp1</name><disks>"
                      "<disk name='vda' checkpoint='bitmap'/></disks></domaincheckpoint>")
        dom.backupBegin(backup, checkpoint, 0)
        try:
            assert [c.getName() for c in dom.listAllCheckpoints(0)] == ["cp1"]
            # Written after the backup began: the export must still show the old bytes.
            _qemu_io(dom, qom, "write -P 0x99 0 64k")
            data = _read_export(socket, "vda")
        finally:
            dom.abortJob()
        done = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        assert done.get("success", True), done

        assert len(data) == SIZE
        assert data == bytes(expected)
        assert not (tmp_path / "scratch.vda.qcow2").exists()
    assert conn.listAllDomains(0) == []
    assert libvirtd.qemu_pids() == []
