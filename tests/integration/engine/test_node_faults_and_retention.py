"""A node killed mid-task and its task retried elsewhere; retention deleting expired
backups from the catalog and the repository. Real server and node processes over HTTP,
on SQLite and MariaDB."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sbr_core import connections
from sbr_core.db.schema import Backup, Node, Policy, Task, TaskLog, Workflow
from sbr_core.engine.orders import repository_passphrase
from sbr_core.providers import ProviderKind
from sbr_core.repository import open_repository, restore_tree
from sbr_core.repository.location import open_destination
from sbr_core.repository.verify import verify
from tests.engine_site import EngineSite
from tests.webhooks import WebhookReceiver, receiving_webhooks


@pytest.fixture
def site(tmp_path: Path, database: Any, database_url: str) -> Iterator[EngineSite]:
    """A server with a 2 s lease and no retry backoff, so a lost node is seen at once."""
    site = EngineSite(tmp_path, database, database_url)
    try:
        site.start_server("--lease", "2", "--retry-delay", "0")
        yield site
    finally:
        site.close()


def _repository(site: EngineSite) -> Any:
    return open_repository(open_destination(str(site.repo_path), site.host),
                           passphrase=repository_passphrase(site.destination, site.box))


def _wait_for(condition: Any, what: str, explain: Any = None, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout:.0f} s"
                         + (f" ({explain()})" if explain else ""))


def test_a_node_killed_mid_backup_loses_its_task_to_a_live_node(site: EngineSite) -> None:
    with receiving_webhooks() as hooks:
        _killed_mid_backup(site, hooks)


def _killed_mid_backup(site: EngineSite, hooks: WebhookReceiver) -> None:
    # the admins are told through a webhook notifier, which the server reads from the
    # database when it has something to tell
    connections.save(ProviderKind.NOTIFIER, "ops-hook", "webhook",
                     {"url": hooks.url, "on_backup_succeeded": "yes"},
                     host=site.host, box=site.box)
    site.start_node("doomed")
    earlier = site.run("backup")
    assert earlier.state == "succeeded", earlier.error
    earlier_backup = Backup.get(Backup.workflow == earlier.id)

    # Enough new data that the store step is still writing when the node is killed.
    for index in range(24):
        (site.share / f"big{index}.bin").write_bytes(os.urandom(8 * 2**20))
    flow = site.workflow("backup", full=True)

    def storing() -> bool:
        task = Task.get_or_none((Task.workflow == flow.id) & (Task.step == "store"))
        return task is not None and task.state == "running"

    _wait_for(storing, "the store step running",
              lambda: [(t.step, t.state, t.progress_done, t.error)
                       for t in Task.select().where(Task.workflow == flow.id)])
    site.kill_node("doomed")
    assert Task.get((Task.workflow == flow.id) & (Task.step == "store")).state == "running"
    assert Backup.select().where(Backup.workflow == flow.id).count() == 0

    site.start_node("rescuer")
    done = site.wait(flow, timeout=120)
    assert done.state == "succeeded", done.error
    tasks = {t.step: t for t in Task.select().where(Task.workflow == flow.id)}
    assert tasks["export"].attempts == 2, "the workflow was not started again from its start"
    assert {t.node.name for t in tasks.values()} == {"rescuer"}
    lost = [r.message for r in TaskLog.select().where(TaskLog.task == tasks["export"].id)
            if r.level == "warning"]
    assert len(lost) == 1 and "node 'doomed' stopped renewing its lease" in lost[0], lost
    assert Node.get(Node.name == "doomed").state == "lost"
    told = json.loads(hooks.wait_for("node-lost").body)
    assert told["data"]["node_name"] == "doomed" and told["data"]["tasks_requeued"] == 1
    succeeded = [json.loads(r.body)["data"] for r in hooks.received
                 if r.headers.get("x-sbr-event") == "backup-succeeded"]
    assert [d["instance_name"] for d in succeeded] == ["share1", "share1"]  # never failed
    assert "backup-failed" not in hooks.events()

    # Exactly one backup came of the retried workflow, and the killed attempt left nothing
    # a listing or a restore would see; the earlier backup is whole.
    retried = Backup.get(Backup.workflow == flow.id)
    repo = _repository(site)
    assert {m.id for m in repo.manifests()} == {earlier_backup.repo_backup_id,
                                                 retried.repo_backup_id}
    assert verify(repo).ok
    target = site.tmp / "restored-earlier"
    with repo.reading():
        restore_tree(repo, repo.manifest(earlier_backup.repo_backup_id), target)
    assert (target / "b.bin").read_bytes() == (site.share / "b.bin").read_bytes()
    assert not (target / "big0.bin").exists()


def test_retention_after_each_backup_deletes_from_catalog_and_repository(
        site: EngineSite) -> None:
    site.start_node("n1")
    policy = Policy.create(name="keep2", destination=site.destination, retention={"last": 2})
    made = []
    for round_ in range(4):
        (site.share / f"round{round_}.txt").write_text(f"round {round_}\n")
        flow = site.workflow("backup")
        Workflow.update(policy=policy).where(Workflow.id == flow.id).execute()
        assert site.wait(flow).state == "succeeded"
        made.append(Backup.get(Backup.workflow == flow.id).repo_backup_id)

    def pruned() -> bool:
        return Backup.select().count() == 2 and not Workflow.select().where(
            (Workflow.kind == "prune") & (Workflow.state != "succeeded")).exists()

    _wait_for(pruned, "the prune workflows")
    kept = {b.repo_backup_id for b in Backup.select()}
    assert kept == set(made[2:])
    repo = _repository(site)
    assert {m.id for m in repo.manifests()} == kept
    assert verify(repo).ok
    prunes = list(Workflow.select().where(Workflow.kind == "prune"))
    assert prunes and all(p.requested_by == "retention" for p in prunes)
