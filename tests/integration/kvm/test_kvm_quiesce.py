"""Quiescing with the real QEMU guest agent: a tiny Linux guest (tests/guest_agent.py) runs
Debian's qemu-ga, with the backed-up disk mounted as ext4. A file the guest wrote into its
page cache just before the backup is in the backup, because the agent froze (and so
flushed) the file system while the backup began; afterwards the guest is thawed."""

from __future__ import annotations

import logging
import subprocess
import uuid
from pathlib import Path

import pytest

from sbr_core.repository import Repository, restore_disk
from sbr_plugins.kvm.hypervisor import KvmHypervisor
from tests.guest_agent import (
    GuestImage,
    agent,
    domain_xml,
    guest_shell,
    make_ext4_disk,
    prepare,
    wait_for_agent,
)
from tests.integration.kvm.conftest import back_up, qemu_img
from tests.libvirtd import EMULATOR, PrivateLibvirtd
from tests.services import service_unavailable


def test_the_agent_freezes_the_guest_so_unsynced_writes_are_in_the_backup(
        libvirtd: PrivateLibvirtd, provider: KvmHypervisor, repo: Repository,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = GuestImage.missing()
    if missing:
        service_unavailable(f"agent guest: {missing}")
    image = prepare()
    raw = make_ext4_disk(tmp_path / "fs.raw", 32)
    disk = tmp_path / "vda.qcow2"
    qemu_img("convert", "-O", "qcow2", str(raw), str(disk))
    name = f"sbr-ga-{uuid.uuid4().hex[:8]}"
    dom = libvirtd.connection().defineXML(domain_xml(name, image, disk, EMULATOR,
                                                     console=tmp_path / "console.log",
                                                     mount_disk=True))
    try:
        dom.create()
        wait_for_agent(dom)
        # into the guest's page cache only: without a freeze nothing puts it on the disk yet
        guest_shell(dom, "echo 'written just before the backup' > /mnt/vda/late.txt")

        with caplog.at_level(logging.INFO, logger="sbr.test"):
            stored = back_up(provider, repo, provider.get_instance(dom.UUIDString()))
        assert stored.consistency == "application"
        assert "file systems frozen by the guest agent" in caplog.text
        assert "crash-consistent" not in caplog.text
        assert agent(dom, "guest-fsfreeze-status") == "thawed"
        guest_shell(dom, "echo still writable > /mnt/vda/after.txt")  # thawed for real
    finally:
        PrivateLibvirtd.remove_domain(dom)

    restored = tmp_path / "restored.raw"
    with repo.reading():
        restore_disk(repo, repo.manifest(stored.manifest.id).disk("vda"), restored)
    shown = subprocess.run(["debugfs", "-R", "cat /late.txt", str(restored)],
                           capture_output=True, text=True, timeout=60, check=False)
    assert shown.stdout == "written just before the backup\n", shown.stderr
