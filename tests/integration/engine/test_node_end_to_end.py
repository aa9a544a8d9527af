"""A real `sbr server` and a real `sbr node`, talking HTTP: a file share is backed up (full,
then incremental) into a real repository and restored, on SQLite and MariaDB."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sbr_core import connections
from sbr_core.db.schema import Backup, Instance, Task, TaskLog, Workflow
from sbr_core.engine import nodes, workflows
from sbr_core.engine.orders import repository_passphrase
from sbr_core.plugins import PluginHost
from sbr_core.providers import ProviderKind
from sbr_core.secretbox import SecretBox, load_or_create_key
from tests.cli_runs import SBR, free_port, wait_for_server


def _stop(process: subprocess.Popen[str]) -> str:
    process.terminate()
    try:
        return process.communicate(timeout=30)[1] or ""
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()[1] or ""


@pytest.fixture
def site(tmp_path: Path, database: Any, database_url: str) -> Iterator[dict[str, Any]]:
    """Server and node processes over one database, a share with files, a destination."""
    data = tmp_path / "data"
    data.mkdir()
    env = {**os.environ, "SBR_DATA_DIR": str(data), "SBR_DATABASE_URL": database_url}
    box = SecretBox(load_or_create_key(data / "secret.key"))
    host = PluginHost.discover()
    share = tmp_path / "share"
    (share / "docs").mkdir(parents=True)
    (share / "docs" / "a.txt").write_text("alpha\n" * 1000)
    (share / "b.bin").write_bytes(os.urandom(3 * 2**20))
    connection = connections.save(ProviderKind.STORAGE, "nas1", "fileshare",
                                  {"path": str(share)}, host=host, box=box)
    destination = connections.save(ProviderKind.DESTINATION, "disk1", "filesystem",
                                   {"path": str(tmp_path / "repo")}, host=host, box=box)
    (tmp_path / "repo").mkdir()
    instance = Instance.create(connection=connection, external_id=str(share), name="share1",
                               kind="share")
    _, token = nodes.add_node("n1")
    port = free_port()
    server = subprocess.Popen(
        [*SBR, "server", "--port", str(port), "--no-local-node", "--tick", "0.5"], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    node = None
    try:
        wait_for_server(f"http://127.0.0.1:{port}/api/v1/health", server)
        node = subprocess.Popen(
            [*SBR, "node", "--server", f"http://127.0.0.1:{port}", "--token", token,
             "--poll", "0.2", "--heartbeat", "0.5", "--staging-dir", str(tmp_path / "stage")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        yield {"db": database, "share": share, "instance": instance, "box": box,
               "destination": destination, "tmp": tmp_path, "host": host}
    finally:
        node_err = _stop(node) if node is not None else ""
        server_err = _stop(server)
        assert "Traceback" not in node_err, node_err
        assert "Traceback" not in server_err, server_err


def _run(site: dict[str, Any], kind: str, **params: Any) -> Workflow:
    flow = workflows.create_workflow(
        site["db"], kind, instance=site["instance"] if kind == "backup" else None,
        params={"destination_id": site["destination"].id, **params}, requested_by="test")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        flow = Workflow.get_by_id(flow.id)
        if flow.state in workflows.FINISHED_STATES:
            return flow
        time.sleep(0.2)
    raise AssertionError(f"workflow {flow.id} still {flow.state} after 60 s")


def test_a_node_backs_up_a_share_incrementally_and_restores_it(site: dict[str, Any]) -> None:
    first = _run(site, "backup")
    assert first.state == "succeeded", first.error
    full = Backup.get(Backup.workflow == first.id)
    assert full.kind == "full" and full.bytes_logical > 3 * 2**20
    steps = [(t.step, t.state, t.node.name) for t in
             Task.select().where(Task.workflow == first.id).order_by(Task.seq)]
    assert steps == [("export", "succeeded", "n1"), ("store", "succeeded", "n1")]
    assert any("stored backup" in r.message for r in TaskLog.select())

    (site["share"] / "docs" / "new.txt").write_text("new file\n")
    second = _run(site, "backup")
    assert second.state == "succeeded", second.error
    incremental = Backup.get(Backup.workflow == second.id)
    assert incremental.kind == "incremental"
    assert incremental.bytes_stored < 100_000, "unchanged files were stored again"

    from sbr_core.repository import open_repository
    from sbr_core.repository.location import open_destination

    repo = open_repository(open_destination(str(site["tmp"] / "repo"), site["host"]),
                           passphrase=repository_passphrase(site["destination"], site["box"]))
    assert {m.id for m in repo.manifests()} == {full.repo_backup_id,
                                                 incremental.repo_backup_id}

    target = site["tmp"] / "restored"
    restore = _run(site, "restore", backup_id=incremental.id, path=str(target))
    assert restore.state == "succeeded", restore.error
    assert (target / "docs" / "new.txt").read_text() == "new file\n"
    assert (target / "b.bin").read_bytes() == (site["share"] / "b.bin").read_bytes()


def test_a_failing_backup_fails_its_workflow_with_the_reason(site: dict[str, Any]) -> None:
    site["share"].rename(site["tmp"] / "gone")
    flow = _run(site, "backup")
    assert flow.state == "failed"
    assert "share1" in flow.error or str(site["share"]) in flow.error, flow.error
    assert Backup.select().count() == 0
