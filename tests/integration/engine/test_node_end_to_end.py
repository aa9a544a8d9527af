"""A real `sbr server` and a real `sbr node`, talking HTTP: a file share is backed up (full,
then incremental) into a real repository and restored, on SQLite and MariaDB."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sbr_core import connections
from sbr_core.db.schema import Backup, Task, TaskLog
from sbr_core.engine.orders import repository_passphrase
from sbr_core.providers import ProviderKind
from tests.engine_site import EngineSite
from tests.webhooks import receiving_webhooks


@pytest.fixture
def site(tmp_path: Path, database: Any, database_url: str) -> Iterator[EngineSite]:
    """A server and one node, "n1", over one database."""
    site = EngineSite(tmp_path, database, database_url)
    try:
        site.start_server()
        site.start_node("n1")
        yield site
    finally:
        site.close()


def test_a_node_backs_up_a_share_incrementally_and_restores_it(site: EngineSite) -> None:
    first = site.run("backup")
    assert first.state == "succeeded", first.error
    full = Backup.get(Backup.workflow == first.id)
    assert full.kind == "full" and full.bytes_logical > 3 * 2**20
    steps = [(t.step, t.state, t.node.name) for t in
             Task.select().where(Task.workflow == first.id).order_by(Task.seq)]
    assert steps == [("export", "succeeded", "n1"), ("store", "succeeded", "n1")]
    assert any("stored backup" in r.message for r in TaskLog.select())

    (site.share / "docs" / "new.txt").write_text("new file\n")
    second = site.run("backup")
    assert second.state == "succeeded", second.error
    incremental = Backup.get(Backup.workflow == second.id)
    assert incremental.kind == "incremental"
    assert incremental.bytes_stored < 100_000, "unchanged files were stored again"

    from sbr_core.repository import open_repository
    from sbr_core.repository.location import open_destination

    repo = open_repository(open_destination(str(site.tmp / "repo"), site.host),
                           passphrase=repository_passphrase(site.destination, site.box))
    assert {m.id for m in repo.manifests()} == {full.repo_backup_id,
                                                 incremental.repo_backup_id}

    target = site.tmp / "restored"
    restore = site.run("restore", backup_id=incremental.id, path=str(target))
    assert restore.state == "succeeded", restore.error
    assert (target / "docs" / "new.txt").read_text() == "new file\n"
    assert (target / "b.bin").read_bytes() == (site.share / "b.bin").read_bytes()


def test_a_failing_backup_fails_its_workflow_with_the_reason(site: EngineSite) -> None:
    site.share.rename(site.tmp / "gone")
    with receiving_webhooks() as hooks:
        connections.save(ProviderKind.NOTIFIER, "ops-hook", "webhook", {"url": hooks.url},
                         host=site.host, box=site.box)
        flow = site.run("backup")
        assert flow.state == "failed"
        assert "share1" in flow.error or str(site.share) in flow.error, flow.error
        assert Backup.select().count() == 0
        told = json.loads(hooks.wait_for("backup-failed").body)
        assert told["data"]["instance_name"] == "share1"
        assert told["data"]["destination_name"] == "disk1"
        assert told["data"]["error"] == flow.error
        time.sleep(1)  # anything else would have come by now
        # the failed export is told once, as the backup's failure, not again as a task's
        assert hooks.events() == ["backup-failed"]
