"""KVM through the whole product: a real ``sbr server`` and ``sbr node``, the connection added
and every workflow started with the ``sbr`` CLI as an admin would, on SQLite and MariaDB:
inventory, full and incremental backups of a running domain, a qcow2 restore, an import as
a new domain, and a cancel in the middle of a backup."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sbr_core.db.schema import Backup, Task, TaskLog, Workflow
from sbr_plugins.kvm import checkpoint
from tests.api_server import ApiServer, Cli, serving
from tests.cli_runs import as_json, ok
from tests.integration.kvm.conftest import MiB, disk_as_now, guest_write, new_disk, qemu_img
from tests.libvirtd import PrivateLibvirtd


class KvmSite:
    """A server, one node "n1", the connection ``kvm1`` and the destination ``disk1``."""

    def __init__(self, server: ApiServer, node: subprocess.Popen[str], tmp: Path,
                 scratch: Path) -> None:
        self.server, self.node, self.tmp, self.scratch = server, node, tmp, scratch
        self.admin = Cli(server, "admin")

    def sbr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return ok(self.admin(*args, timeout=300))

    def finished(self, result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
        """The workflow a ``--wait --json`` command printed; it must have succeeded."""
        flow: dict[str, Any] = json.loads(result.stdout)
        assert flow["state"] == "succeeded", flow.get("error")
        return flow


@pytest.fixture
def site(libvirtd: PrivateLibvirtd, tmp_path: Path, database: Any,
         database_url: str) -> Iterator[KvmSite]:
    # NBD sockets live in the scratch directory: a pytest tmp_path is too deep for them
    with tempfile.TemporaryDirectory(prefix="sbr-e2e-") as scratch, \
            serving(tmp_path, database, database_url) as server, \
            server.node("n1", tmp_path) as node:
        made = KvmSite(server, node, tmp_path, Path(scratch))
        (tmp_path / "repo").mkdir()
        made.sbr("provider", "add", "kvm1", "--plugin", "kvm", "--set", f"uri={libvirtd.uri}",
                 "--set", f"scratch_dir={scratch}", "--test")
        made.sbr("destination", "add", "disk1", "--plugin", "filesystem",
                 "--set", f"path={tmp_path / 'repo'}")
        yield made


def _name() -> str:
    return f"sbr-e2e-{uuid.uuid4().hex[:8]}"


def _log(workflow_id: int) -> str:
    return "\n".join(r.message for r in TaskLog.select().join(Task)
                     .where(Task.workflow == workflow_id).order_by(TaskLog.id))


def test_backup_restore_and_import_of_a_running_domain_through_server_and_node(
        libvirtd: PrivateLibvirtd, site: KvmSite, tmp_path: Path) -> None:
    disk = new_disk(tmp_path / "vda.qcow2", "64M", "write -P 0x11 0 2M",
                    "write -P 0x22 40M 1M")
    name = _name()
    with libvirtd.domain(name, disk) as dom:
        site.sbr("inventory", "sync", "kvm1")
        listed = as_json(site.admin("instances", "--provider", "kvm1", "--json"))
        [row] = [r for r in listed if r["name"] == name]
        assert row["external_id"] == dom.UUIDString() and row["state"] == "running"

        full = site.finished(site.sbr("backup", name, "-d", "disk1", "--wait", "--json"))
        first = Backup.get(Backup.workflow == full["id"])
        assert first.kind == "full" and first.bytes_logical == 64 * MiB
        assert "crash-consistent" in _log(full["id"])  # no guest agent in this domain

        guest_write(dom, "write -P 0x77 8M 64k")
        expected = disk_as_now(disk, tmp_path / "expected.raw")
        again = site.finished(site.sbr("backup", name, "-d", "disk1", "--wait", "--json"))
        second = Backup.get(Backup.workflow == again["id"])
        assert second.kind == "incremental"
        assert "disk vda: changes only, 131072 bytes read" in _log(again["id"])
        # the first backup's checkpoint was dropped once the second was committed
        assert checkpoint.sbr_checkpoints(dom) == [second.platform_state["checkpoint"]]

    restored = tmp_path / "restored"
    done = site.finished(site.sbr("restore", str(second.id), "--to", str(restored),
                                  "--format", "qcow2", "--wait", "--json"))
    assert done["tasks"][-1]["result"]["disks"] == 1
    qemu_img("compare", "-F", "raw", str(restored / "vda.qcow2"), str(expected))
    assert (restored / "domain.xml").read_text().startswith("<domain")

    _mount_serves_the_backup_until_cancelled(site, second, expected)

    copy = f"{name}-copy"
    placed = tmp_path / "imported"
    placed.mkdir()
    result = site.sbr("import", str(second.id), "--name", copy, "--directory", str(placed),
                      "--power-on", "--wait")
    assert f"succeeded: VM {copy}" in result.stdout, result.stdout
    imported = libvirtd.connection().lookupByName(copy)
    try:
        assert imported.isActive()
        assert imported.UUIDString() != dom.UUIDString()
        [image] = list(placed.iterdir())
        qemu_img("compare", "-U", "-F", "raw", str(image), str(expected))
    finally:
        libvirtd.remove_domain(imported)


def _mount_serves_the_backup_until_cancelled(site: KvmSite, backup: Backup,
                                             expected: Path) -> None:
    """``sbr mount``: QEMU reads the incremental's disk over NBD as it was; the export name
    is nowhere but in that command's output; ``sbr cancel`` ends the mount."""
    served = json.loads(site.sbr("mount", str(backup.id), "--minutes", "10", "--json").stdout)
    [url] = served["urls"].values()
    assert served["node"] == "n1" and list(served["urls"]) == ["vda"]
    qemu_img("compare", "-F", "raw", url, str(expected))
    export = url.rsplit("/", 2)[-2]
    viewer = Cli(site.server, "viewer")
    shown = viewer("task", str(served["task"]), "--json").stdout
    assert export not in shown and '"export": "(hidden)"' in shown
    assert export not in _log(served["task"])
    wrong = url.replace(export, export[:-4] + "xxxx")
    assert subprocess.run(["qemu-img", "info", wrong], capture_output=True,
                          timeout=30).returncode != 0
    site.sbr("cancel", str(served["task"]))
    deadline = time.monotonic() + 30
    while Workflow.get_by_id(served["task"]).state != "cancelled":
        assert time.monotonic() < deadline, "the mount did not stop"
        time.sleep(0.2)
    assert "mount stopped by request: " in _log(served["task"])
    assert subprocess.run(["qemu-img", "info", url], capture_output=True,
                          timeout=30).returncode != 0
    # a node that cannot serve fails the mount, and the command says why
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = site.admin("mount", str(backup.id), "--port", str(port), timeout=120)
    assert busy.returncode != 0
    assert f"cannot listen on 127.0.0.1 port {port}" in busy.stderr, busy.stderr
    unknown = site.admin("mount", str(backup.id), "--disk", "vdz", timeout=120)
    assert unknown.returncode != 0 and "has no disk vdz (it has vda)" in unknown.stderr


def _random_disk(path: Path, size: int) -> Path:
    """A qcow2 image full of random data: nothing to deduplicate or compress, so storing it
    takes long enough to cancel it."""
    raw = path.with_suffix(".raw")
    with raw.open("wb") as out:
        for _ in range(size // (16 * MiB)):
            out.write(os.urandom(16 * MiB))
    qemu_img("convert", "-O", "qcow2", str(raw), str(path))
    raw.unlink()
    return path


def _running_store(workflow_id: int, timeout: float = 60) -> Task:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = Task.get_or_none(Task.workflow == workflow_id, Task.step == "store")
        if task is not None and task.state == "running":
            return task
        assert Workflow.get_by_id(workflow_id).state not in ("succeeded", "failed")
        time.sleep(0.02)
    raise AssertionError("the store step never got going")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_cancel_mid_backup_removes_the_point_in_time_image_and_its_checkpoint(
        libvirtd: PrivateLibvirtd, site: KvmSite, tmp_path: Path) -> None:
    """Issue 4's "cancel removes the snapshot": for KVM, what a backup holds on the domain
    is its pull-mode backup job (QEMU's point-in-time image of every disk) and the new
    checkpoint; a cancel ends both, and the chain goes on from the last committed backup."""
    disk = _random_disk(tmp_path / "vda.qcow2", 512 * MiB)
    name = _name()
    with libvirtd.domain(name, disk) as dom:
        site.sbr("inventory", "sync", "kvm1")
        full = site.finished(site.sbr("backup", name, "-d", "disk1", "--wait", "--json"))
        kept = Backup.get(Backup.workflow == full["id"]).platform_state["checkpoint"]
        # Onto an empty repository: all 512 MiB of random data to read, hash, try to
        # compress and write, with nothing deduplicated.
        (tmp_path / "repo2").mkdir()
        site.sbr("destination", "add", "disk2", "--plugin", "filesystem",
                 "--set", f"path={tmp_path / 'repo2'}")
        flow = json.loads(site.sbr("backup", name, "-d", "disk2", "--json").stdout)
        _running_store(flow["id"])
        # Hold the node still so that the cancel lands mid-store however fast this machine is.
        site.node.send_signal(signal.SIGSTOP)
        try:
            assert dom.jobInfo()[0] != 0, "no backup job while the store runs"
            assert len(checkpoint.sbr_checkpoints(dom)) == 2
            site.sbr("cancel", str(flow["id"]))
        finally:
            site.node.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 60
        while Workflow.get_by_id(flow["id"]).state != "cancelled":
            assert time.monotonic() < deadline, Workflow.get_by_id(flow["id"]).state
            time.sleep(0.1)

        assert dom.jobInfo()[0] == 0  # VIR_DOMAIN_JOB_NONE: the point-in-time image is gone
        assert checkpoint.sbr_checkpoints(dom) == [kept]
        assert list(site.scratch.iterdir()) == []
        assert not Backup.select().where(Backup.workflow == flow["id"],
                                         Backup.state == "complete").exists()
        assert not list((tmp_path / "repo2").glob("**/manifests/*"))
        log = _log(flow["id"])
        assert "checkpoint" in log and "removed" in log, log

        after = site.finished(site.sbr("backup", name, "-d", "disk1", "--wait", "--json"))
        assert Backup.get(Backup.workflow == after["id"]).kind == "incremental"
        assert "changes since " + kept in _log(after["id"])
