"""What the KVM plugin does when things are not as they should be: a checkpoint chain
broken outside SBR, a domain that vanishes mid-backup, a disk it cannot handle, a
hypervisor it cannot reach or that refuses the login. Each fails or falls back to a full
backup with a clear reason, and leaves the domain as it was."""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from sbr_core.config import structure_config
from sbr_core.errors import ProviderError
from sbr_core.models import ExportRequest
from sbr_core.providers.base import ProviderContext
from sbr_core.repository import Repository
from sbr_plugins.kvm.hypervisor import KvmHypervisor
from tests.integration.kvm.conftest import MiB, back_up, new_disk, qemu_img
from tests.libvirtd import EMULATOR, SASL_PASSWORD, SASL_USER, PrivateLibvirtd
from tests.services import service_unavailable


def _name() -> str:
    return f"sbr-t-{uuid.uuid4().hex[:8]}"


def test_checkpoint_deleted_outside_sbr_means_a_full_backup_with_the_reason(
        libvirtd: PrivateLibvirtd, provider: KvmHypervisor, repo: Repository,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    disk = new_disk(tmp_path / "vda.qcow2", "32M", "write -P 0x11 0 1M")
    with libvirtd.domain(_name(), disk) as dom:
        instance = provider.get_instance(dom.UUIDString())
        first = back_up(provider, repo, instance)
        name = first.platform_state["checkpoint"]
        dom.checkpointLookupByName(name).delete(0)

        with caplog.at_level(logging.INFO):
            second = back_up(provider, repo, instance, first)
        assert second.export_full
        assert f"checkpoint {name} no longer exists" in second.reason
        assert "full backup: checkpoint" in caplog.text
        assert second.bytes_read >= MiB

        third = back_up(provider, repo, instance, second)  # the chain goes on from here
        assert not third.export_full, third.reason
        assert [c.getName() for c in dom.listAllCheckpoints(0)] == \
            [third.platform_state["checkpoint"]]


def test_qemu_killed_leaves_broken_bitmaps_and_the_next_backup_is_full(
        libvirtd: PrivateLibvirtd, provider: KvmHypervisor, repo: Repository,
        tmp_path: Path) -> None:
    disk = new_disk(tmp_path / "vda.qcow2", "32M", "write -P 0x11 0 1M")
    with libvirtd.domain(_name(), disk) as dom:
        instance = provider.get_instance(dom.UUIDString())
        first = back_up(provider, repo, instance)
        for pid in libvirtd.qemu_pids():
            os.kill(pid, signal.SIGKILL)  # no clean close: the bitmaps stay "in-use"
        deadline = time.monotonic() + 30
        while dom.isActive() and time.monotonic() < deadline:
            time.sleep(0.1)
        dom.create()
        second = back_up(provider, repo, instance, first)
        assert second.export_full
        assert "is broken" in second.reason, second.reason


def test_domain_destroyed_mid_backup_fails_clearly_and_leaves_nothing(
        libvirtd: PrivateLibvirtd, provider: KvmHypervisor, tmp_path: Path) -> None:
    disk = new_disk(tmp_path / "vda.qcow2", "32M", "write -P 0x11 0 4M")
    scratch = Path(provider.config.scratch_dir)
    with libvirtd.domain(_name(), disk) as dom:
        instance = provider.get_instance(dom.UUIDString())
        with pytest.raises(ProviderError) as caught, \
                provider.export(ExportRequest(instance=instance)) as export:
            reader = export.disks[0]
            reader.read(0, MiB)
            dom.destroy()
            reader.read(MiB, MiB)
        assert f"domain {dom.name()!r} was shut down during the backup" in str(caught.value)
        assert dom.listAllCheckpoints(0) == []
        assert qemu_img("info", "--output=json", str(disk)).count('"name"') == 0
        assert list(scratch.iterdir()) == []


def _defined(libvirtd: PrivateLibvirtd, name: str, disks_xml: str) -> object:
    xml = f"""<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>
<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices><emulator>{EMULATOR}</emulator>{disks_xml}
<controller type='usb' model='none'/><memballoon model='none'/></devices></domain>"""
    return libvirtd.connection().defineXML(xml)


def test_disk_on_an_unsupported_backend_is_refused_by_name(
        libvirtd: PrivateLibvirtd, provider: KvmHypervisor, tmp_path: Path) -> None:
    disk = new_disk(tmp_path / "vda.qcow2", "16M")
    dom = _defined(libvirtd, _name(), f"""
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
  <source file='{disk}'/><target dev='vda' bus='virtio'/></disk>
<disk type='network' device='disk'><driver name='qemu' type='raw'/>
  <source protocol='rbd' name='pool/image'><host name='ceph1' port='6789'/></source>
  <target dev='vdb' bus='virtio'/></disk>""")
    try:
        instance = provider.get_instance(dom.UUIDString())  # type: ignore[attr-defined]
        assert [(d.key, d.backend) for d in instance.disks] == [("vda", "file"),
                                                                 ("vdb", "rbd")]
        with pytest.raises(ProviderError, match=r"disk vdb is a raw disk on a 'rbd' backend"):
            with provider.export(ExportRequest(instance=instance)):
                pass
        assert dom.listAllCheckpoints(0) == []  # type: ignore[attr-defined]
    finally:
        PrivateLibvirtd.remove_domain(dom)  # type: ignore[arg-type]


def test_unreachable_uri_is_one_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("libvirt")
    config = structure_config(
        KvmHypervisor.Config,
        {"uri": f"qemu+unix:///system?socket={tmp_path}/nobody-here", "scratch_dir": "/tmp"},
        subject="hypervisor 'gone'")
    with KvmHypervisor(config, context=ProviderContext(name="gone")) as provider, \
            pytest.raises(ProviderError) as caught:
        provider.inventory()
    assert str(caught.value).startswith("kvm connection 'gone': cannot connect to qemu+unix")
    assert caught.value.retryable


def test_bad_uri_setting_names_the_field() -> None:
    from sbr_core.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        structure_config(KvmHypervisor.Config, {"uri": "vmware://x"},
                         subject="hypervisor 'x'")
    assert "uri" in caught.value.problems


def test_wrong_credentials_are_refused_by_name_and_not_retried(
        libvirtd: PrivateLibvirtd, tmp_path: Path) -> None:
    """The daemon's read-only socket asks for a SASL (SCRAM-SHA-256) login."""
    missing = PrivateLibvirtd.sasl_missing()
    if missing:
        service_unavailable(missing)

    def connect(**login: str) -> KvmHypervisor:
        config = structure_config(
            KvmHypervisor.Config,
            {"uri": libvirtd.sasl_uri, "scratch_dir": str(tmp_path), **login},
            subject="hypervisor 'locked'")
        return KvmHypervisor(config, context=ProviderContext(name="locked"))

    for login, hint in (({"username": SASL_USER, "password": "not it"},
                         "wrong user name or password"),
                        ({"username": "nobody", "password": SASL_PASSWORD},
                         "wrong user name or password"),
                        ({"username": SASL_USER},
                         "asks for a password and none is configured")):
        with connect(**login) as provider, pytest.raises(ProviderError) as caught:
            provider.test_connection()
        message = str(caught.value)
        assert message.startswith(f"kvm connection 'locked': {libvirtd.sasl_uri} refused "
                                  "the credentials"), message
        assert hint in message and not caught.value.retryable
        assert "not it" not in message and SASL_PASSWORD not in message
    with connect(username=SASL_USER, password=SASL_PASSWORD) as provider:
        provider.test_connection()
        assert provider.inventory() is not None  # read-only is enough to list domains
