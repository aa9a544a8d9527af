"""Fixtures for the KVM/libvirt plugin: one private libvirtd per session (tests/libvirtd.py)."""

from __future__ import annotations

import logging
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from sbr_core.config import structure_config
from sbr_core.engine.vm_steps import store_vm
from sbr_core.models import BackupPoint, ExportRequest, Instance
from sbr_core.operation import Operation
from sbr_core.providers.base import ProviderContext
from sbr_core.repository import BackupWriter, Manifest, Repository
from sbr_plugins.kvm.hypervisor import KvmHypervisor
from tests.guest_agent import GuestImage
from tests.libvirtd import PrivateLibvirtd
from tests.repositories import local_repository
from tests.services import running


@pytest.fixture(scope="session")
def libvirtd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateLibvirtd]:
    """The session's private libvirtd (TCG domains only); skip/fail when it cannot run."""
    # The agent guest's kernel and initramfs are built before the daemon mounts its /var
    # overlay (tests/guest_agent.py says why); a failure here only concerns those tests.
    GuestImage.missing()
    yield from running(PrivateLibvirtd.missing(),
                       lambda: PrivateLibvirtd(tmp_path_factory.mktemp("libvirtd")),
                       "private libvirtd")


# --- domains, providers, and the glue the backup workflow uses ---------------------------------

MiB = 1 << 20
CONNECTION = "kvm1"
PASSPHRASE = "kvm test passphrase"


def make_repository(path: Path) -> Repository:
    return local_repository(path, PASSPHRASE, pack_size=4 * MiB)


def make_provider(libvirtd: PrivateLibvirtd, scratch: Path, **settings: Any) -> KvmHypervisor:
    values = {"uri": libvirtd.uri, "scratch_dir": str(scratch), **settings}
    config = structure_config(KvmHypervisor.Config, values,
                              subject=f"hypervisor {CONNECTION!r}")
    return KvmHypervisor(config, context=ProviderContext(name=CONNECTION))


@pytest.fixture
def provider(libvirtd: PrivateLibvirtd) -> Iterator[KvmHypervisor]:
    # NBD sockets live in the scratch directory: a deep pytest tmp_path can be too long
    with tempfile.TemporaryDirectory(prefix="sbr-s-") as scratch, \
            make_provider(libvirtd, Path(scratch)) as made:
        yield made


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return make_repository(tmp_path / "repo")


def qemu_img(*args: str) -> str:
    done = subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def new_disk(path: Path, size: str, *writes: str, fmt: str = "qcow2") -> Path:
    """A disk image with ``writes`` (qemu-io commands such as 'write -P 0x11 0 1M') done."""
    qemu_img("create", "-q", "-f", fmt, str(path), size)
    if writes:
        args = ["qemu-io", "-f", fmt]
        for command in writes:
            args += ["-c", command]
        subprocess.run([*args, str(path)], check=True, capture_output=True, timeout=120)
    return path


def guest_write(dom: Any, command: str, target: str = "vda") -> None:
    """A write into the running guest's disk through its virtio device, as the guest would."""
    import libvirt_qemu

    qom = f"/machine/peripheral/{PrivateLibvirtd.disk_alias(dom, target)}/virtio-backend"
    out = libvirt_qemu.qemuMonitorCommand(
        dom, f'qemu-io -d {qom} "{command}"', libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
    assert "error" not in out.lower(), out


def disk_as_now(disk: Path, out: Path) -> Path:
    """A raw copy of ``disk`` as it is now (read shared while QEMU has it open)."""
    qemu_img("convert", "-U", "-O", "raw", str(disk), str(out))
    return out


@attrs.frozen
class Stored:
    manifest: Manifest
    export_full: bool
    reason: str
    platform_state: dict[str, Any]
    bytes_read: int
    consistency: str


def back_up(provider: KvmHypervisor, repo: Repository, instance: Instance,
            parent: Stored | None = None, *, full: bool = False,
            logger: logging.Logger | None = None) -> Stored:
    """What the backup workflow does: export, store every disk and file, commit, then tell
    the plugin it was committed."""
    previous = BackupPoint(parent.manifest.id, instance, parent.platform_state) \
        if parent else None
    request = ExportRequest(instance=instance, previous=previous, full=full,
                            op=Operation(logger=logger or logging.getLogger("sbr.test")))
    with provider.export(request) as export:
        with BackupWriter(repo, name=f"{CONNECTION}/{instance.external_id}", kind="vm",
                          parent=parent.manifest if parent else None) as writer:
            store_vm(writer, export, parent=parent.manifest if parent else None,
                     log=request.op.logger)
            manifest = writer.commit(platform_state=dict(export.platform_state))
        stored = Stored(manifest, export.full, export.reason, dict(export.platform_state),
                        manifest.stats["bytes_read"], export.consistency)
    provider.finish_export(instance, stored.platform_state, committed=True)
    return stored
