"""Shut-off domains (no QEMU running), restores to qcow2 and raw files, imports as new
domains and over the original, and snapshots."""

from __future__ import annotations

import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from sbr_core.errors import ProviderError
from sbr_core.models import Instance
from sbr_core.providers.hypervisor import ImportRequest
from sbr_core.repository import BackedUpDisk, Repository
from sbr_plugins.kvm.domainxml import parse
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


def _name() -> str:
    return f"sbr-t-{uuid.uuid4().hex[:8]}"


def test_shut_off_domain_full_then_incremental_from_the_last_checkpoint(
        libvirtd: PrivateLibvirtd, provider: KvmHypervisor, repo: Repository,
        tmp_path: Path) -> None:
    disk = new_disk(tmp_path / "vda.qcow2", "32M", "write -P 0x11 0 2M")
    with libvirtd.domain(_name(), disk) as dom:
        instance = provider.get_instance(dom.UUIDString())
        online = back_up(provider, repo, instance)  # leaves checkpoint + bitmap
        guest_write(dom, "write -P 0x66 16M 64k")
        dom.destroy()  # SIGTERM: QEMU closes the image cleanly, the bitmap is kept
        assert libvirtd.qemu_pids() == []
        expected = disk_as_now(disk, tmp_path / "expected.raw")

        offline = back_up(provider, repo, provider.get_instance(dom.UUIDString()), online)
        assert libvirtd.qemu_pids() == []  # read with qemu-nbd; the domain never ran
        assert not offline.export_full, offline.reason
        assert offline.bytes_read <= 128 * 1024
        assert offline.platform_state["checkpoint"] == online.platform_state["checkpoint"]
        assert offline.consistency == "crash"  # destroyed, not shut down from inside

        full = back_up(provider, repo, instance, offline, full=True)
        assert full.export_full and full.bytes_read >= 2 * MiB
    for point in (offline, full):
        out = tmp_path / f"restored-{point.manifest.id[:8]}.raw"
        with repo.reading():
            from sbr_core.repository import restore_disk

            restore_disk(repo, repo.manifest(point.manifest.id).disk("vda"), out)
        qemu_img("compare", "-f", "raw", "-F", "raw", str(expected), str(out))


def test_raw_disks_are_read_whole_but_only_their_data(
        libvirtd: PrivateLibvirtd, provider: KvmHypervisor, repo: Repository,
        tmp_path: Path) -> None:
    disk = new_disk(tmp_path / "vda.img", "32M", "write -P 0x33 4M 1M", fmt="raw")
    name = _name()
    dom = libvirtd.connection().defineXML(f"""<domain type='qemu'><name>{name}</name>
<memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices><disk type='file' device='disk'><driver name='qemu' type='raw'/>
<source file='{disk}'/><target dev='vda' bus='virtio'/></disk>
<controller type='usb' model='none'/><memballoon model='none'/></devices></domain>""")
    try:
        instance = provider.get_instance(dom.UUIDString())
        first = back_up(provider, repo, instance)
        assert first.bytes_read <= 1 * MiB + 256 * 1024  # holes are not read
        assert first.platform_state["checkpoint"] == ""
        second = back_up(provider, repo, instance, first)
        assert second.export_full
        assert "no checkpoint" in second.reason
    finally:
        PrivateLibvirtd.remove_domain(dom)


def test_restore_to_qcow2_and_import_as_a_new_domain(
        libvirtd: PrivateLibvirtd, provider: KvmHypervisor, repo: Repository,
        tmp_path: Path) -> None:
    disk = new_disk(tmp_path / "vda.qcow2", "32M", "write -P 0x44 0 3M",
                    "write -P 0x45 30M 1M")
    original = _name()
    with libvirtd.domain(original, disk) as dom:
        instance = provider.get_instance(dom.UUIDString())
        expected = disk_as_now(disk, tmp_path / "expected.raw")
        stored = back_up(provider, repo, instance)
        source_uuid = dom.UUIDString()
    manifest = repo.manifest(stored.manifest.id)
    record = manifest.disk("vda")

    with repo.reading():
        image = tmp_path / "out" / "vda.qcow2"
        image.parent.mkdir()
        provider.write_image(BackedUpDisk(repo, record), image, "qcow2")
        with pytest.raises(ProviderError, match="already exists"):
            provider.write_image(BackedUpDisk(repo, record), image, "qcow2")
    qemu_img("compare", "-F", "raw", str(image), str(expected))
    info = qemu_img("info", "--output=json", str(image))
    assert '"format": "qcow2"' in info
    assert image.stat().st_blocks * 512 < 8 * MiB  # sparse: 4 MiB of data

    files = {name: repo.read_blob(blob) for name, blob in manifest.files.items()}
    config = parse(files["domain.xml"])
    devices = config.find("devices")
    assert devices is not None
    ET.SubElement(devices, "interface", {"type": "network"}).append(
        ET.Element("source", {"network": "prod"}))
    ET.SubElement(devices, "interface", {"type": "network"}).append(
        ET.Element("source", {"network": "backup-lan"}))
    files["domain.xml"] = ET.tostring(config)
    target = tmp_path / "pool"
    target.mkdir()
    new_name = _name()

    def import_with(network_map: dict[str, str]) -> Instance:
        with repo.reading():
            return provider.import_vm(ImportRequest(
                name=new_name, files=files, config_name="domain.xml",
                disks={"vda": BackedUpDisk(repo, record)},
                placement={"directory": str(target)}, network_map=network_map,
                power_on=True))

    # A network the host lacks is refused before a byte is written.
    with pytest.raises(ProviderError, match="network 'test' does not exist on this host"):
        import_with({"prod": "test", "backup-lan": ""})
    assert list(target.iterdir()) == []
    made = import_with({"prod": "", "backup-lan": ""})
    dom = libvirtd.connection().lookupByName(new_name)
    try:
        assert made.name == new_name and made.external_id != source_uuid
        assert dom.isActive()
        live = parse(dom.XMLDesc(0))
        sources = [s.get("file") for s in live.iterfind("devices/disk/source")]
        assert sources == [str(target / f"{new_name}-vda.qcow2")]
        assert live.find("devices/interface") is None
        dom.destroy()
        qemu_img("compare", "-F", "raw", sources[0], str(expected))
        with pytest.raises(ProviderError, match="already exists"):
            import_with({"prod": "", "backup-lan": ""})
    finally:
        PrivateLibvirtd.remove_domain(dom)


def test_restore_over_the_original_needs_it_shut_off_and_keeps_it_on_failure(
        libvirtd: PrivateLibvirtd, provider: KvmHypervisor, repo: Repository,
        tmp_path: Path) -> None:
    disk = new_disk(tmp_path / "vda.qcow2", "32M", "write -P 0x21 0 1M")
    with libvirtd.domain(_name(), disk) as dom:
        instance = provider.get_instance(dom.UUIDString())
        expected = disk_as_now(disk, tmp_path / "expected.raw")
        stored = back_up(provider, repo, instance)
        guest_write(dom, "write -P 0x99 0 2M")  # the damage to undo
        manifest = repo.manifest(stored.manifest.id)
        files = {n: repo.read_blob(b) for n, b in manifest.files.items()}

        def request(target: Instance) -> ImportRequest:
            return ImportRequest(name=dom.name(), files=files, config_name="domain.xml",
                                 disks={"vda": BackedUpDisk(repo, manifest.disk("vda"))},
                                 replace=target)

        with repo.reading(), pytest.raises(ProviderError, match="is running; shut it off"):
            provider.import_vm(request(instance))
        dom.destroy()
        with repo.reading():
            made = provider.import_vm(request(instance))
        assert made.external_id == instance.external_id
        qemu_img("compare", "-F", "raw", str(disk), str(expected))
        assert not any(p.name.endswith(".sbr-restore") for p in disk.parent.iterdir())
        assert dom.listAllCheckpoints(0) == []


def test_internal_and_external_snapshots_are_taken_listed_and_deleted(
        libvirtd: PrivateLibvirtd, provider: KvmHypervisor, tmp_path: Path) -> None:
    disk = new_disk(tmp_path / "vda.qcow2", "16M", "write -P 0x10 0 1M")
    with libvirtd.domain(_name(), disk) as dom:
        instance = provider.get_instance(dom.UUIDString())
        first = provider.create_snapshot(instance, "sbr-i1", options={"kind": "internal"})
        assert first.kind == "internal" and first.includes_memory
        provider.create_snapshot(instance, "sbr-i2")
        assert [s.name for s in provider.list_snapshots(instance)] == ["sbr-i1", "sbr-i2"]
        provider.delete_snapshot(instance, "sbr-i1")
        provider.delete_snapshot(instance, "sbr-i2")
        provider.delete_snapshot(instance, "sbr-i2")  # already gone: fine
        assert provider.list_snapshots(instance) == []

        external = provider.create_snapshot(instance, "sbr-e1", options={"kind": "external"})
        assert external.kind == "external" and not external.includes_memory
        overlay = tmp_path / "vda.sbr-e1.qcow2"
        assert overlay.exists()
        guest_write(dom, "write -P 0x20 0 64k")  # lands in the overlay
        expected = disk_as_now(overlay, tmp_path / "expected.raw")
        provider.delete_snapshot(instance, "sbr-e1")  # merged back into the base image
        live = parse(dom.XMLDesc(0))
        assert [s.get("file") for s in live.iterfind("devices/disk/source")] == [str(disk)]
        assert provider.list_snapshots(instance) == []
        dom.destroy()
        qemu_img("compare", "-F", "raw", str(disk), str(expected))
        with pytest.raises(ProviderError, match="kind 'x'"):
            provider.create_snapshot(instance, "sbr-x", options={"kind": "x"})


def test_snapshot_step_keeps_only_the_policys_newest(
        libvirtd: PrivateLibvirtd, provider: KvmHypervisor, tmp_path: Path) -> None:
    import logging

    from sbr_core.engine import vm_steps
    from sbr_core.operation import Operation
    from sbr_core.steps import StepContext

    disk = new_disk(tmp_path / "vda.qcow2", "16M")
    with libvirtd.domain(_name(), disk) as dom:
        instance = provider.get_instance(dom.UUIDString())
        provider.create_snapshot(instance, "admin-made")  # not the policy's: never pruned
        logger = logging.getLogger("sbr.test")
        taken = []
        for _ in range(3):
            context = StepContext(
                workflow="snapshot", step="snapshot", task_id=1, workflow_id=1, attempt=1,
                node_name="n1", instance=instance,
                params={"policy": "hourly vm", "keep_snapshots": 2}, results={}, error="",
                op=Operation(logger=logger), logger=logger)
            result = vm_steps.snapshot(provider, context)
            taken.append(result.figures["snapshot"])
            time.sleep(1.1)  # snapshot names carry the second
        names = [s.name for s in provider.list_snapshots(instance)]
        assert names == ["admin-made", *taken[1:]]
        assert taken[0].startswith("sbr-hourly-vm-")
        assert result.figures["pruned"] == [taken[0]]
