"""Backups of running domains through the KVM plugin, restored and compared byte for byte
with the disk as it was at each backup."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest

from sbr_core.repository import Repository, restore_disk
from sbr_plugins.kvm.hypervisor import KvmHypervisor
from tests.integration.kvm.conftest import (
    MiB,
    back_up,
    disk_as_now,
    guest_write,
    new_disk,
    qemu_img,
)
from tests.libvirtd import PrivateLibvirtd


def restored(repo: Repository, manifest_id: str, key: str, out: Path) -> Path:
    manifest = repo.manifest(manifest_id)
    disk = manifest.disk(key)
    assert disk is not None
    with repo.reading():
        restore_disk(repo, disk, out)
    return out


def test_full_then_incrementals_restore_each_point_exactly(
        libvirtd: PrivateLibvirtd, provider: KvmHypervisor, repo: Repository,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    disk = new_disk(tmp_path / "vda.qcow2", "64M", "write -P 0x11 0 3M",
                    "write -P 0x22 20M 1M", "write -z 40M 2M")
    name = f"sbr-t-{uuid.uuid4().hex[:8]}"
    with libvirtd.domain(name, disk) as dom:
        instance = provider.get_instance(dom.UUIDString())
        assert [d.key for d in instance.disks] == ["vda"]
        assert instance.disks[0].capacity_bytes == 64 * MiB

        expected = [disk_as_now(disk, tmp_path / "point0.raw")]
        with caplog.at_level(logging.INFO):
            first = back_up(provider, repo, instance)
        assert first.export_full and first.reason == "first backup of this domain"
        assert first.platform_state["checkpoint"].startswith("sbr-")
        # Only the allocated data is read: 4 MiB of 64 (zero and unallocated ranges never).
        assert first.bytes_read <= 4 * MiB + 256 * 1024
        assert "crash-consistent" in caplog.text

        guest_write(dom, "write -P 0x77 8M 64k")
        expected.append(disk_as_now(disk, tmp_path / "point1.raw"))
        second = back_up(provider, repo, instance, first)
        assert not second.export_full, second.reason
        assert second.bytes_read <= 128 * 1024  # one chunk: the 64 KiB written
        assert second.platform_state["checkpoint"] != first.platform_state["checkpoint"]

        guest_write(dom, "write -P 0x55 1M 200k")
        guest_write(dom, "write -z 20M 512k")  # zeroed: must restore as zeros
        expected.append(disk_as_now(disk, tmp_path / "point2.raw"))
        third = back_up(provider, repo, instance, second)
        assert not third.export_full
        assert third.bytes_read <= 3 * 128 * 1024 + 512 * 1024

        # Older checkpoints are dropped once a newer backup is committed.
        names = [c.getName() for c in dom.listAllCheckpoints(0)]
        assert names == [third.platform_state["checkpoint"]]

    for index, point in enumerate((first, second, third)):
        out = restored(repo, point.manifest.id, "vda", tmp_path / f"restored{index}.raw")
        qemu_img("compare", "-f", "raw", "-F", "raw", str(expected[index]), str(out))
    # Restored files are sparse: the zeros are holes.
    assert (tmp_path / "restored0.raw").stat().st_blocks * 512 < 8 * MiB
