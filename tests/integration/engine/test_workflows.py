"""Workflow life cycles on SQLite and MariaDB: creation, the pinned hand-on from task to
task, the catalog row, failures, cancel, lost nodes, priority and node affinity."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import pytest

from sbr_core.db.schema import (
    Backup,
    Destination,
    Instance,
    Node,
    Policy,
    ProviderConnection,
    Task,
    TaskLog,
    Workflow,
    utcnow,
)
from sbr_core.engine import claims, workflows
from sbr_core.errors import ConflictError, LeaseLost, NotFoundError, UsageError


def _instance(name: str = "share1", provider: str = "nas1", location: str = "") -> Instance:
    connection = (ProviderConnection.get_or_none(ProviderConnection.name == provider)
                  or ProviderConnection.create(name=provider, kind="storage",
                                               plugin="fileshare", settings={}, secrets=""))
    return Instance.create(connection=connection, external_id=f"/{name}", name=name,
                           kind="share", location=location)


def _destination() -> Destination:
    return (Destination.get_or_none(Destination.name == "disk1")
            or Destination.create(name="disk1", plugin="filesystem", settings={"path": "/x"}))


def _node(name: str = "n1", concurrency: int = 4, affinity: list[str] | None = None) -> Node:
    return Node.create(name=name, concurrency=concurrency, affinity=affinity or [])


def _backup(db: Any, instance: Instance, **kwargs: Any) -> Workflow:
    return workflows.create_workflow(
        db, "backup", instance=instance, params={"destination_id": _destination().id},
        requested_by="alice", **kwargs)


def _states(workflow: Workflow) -> list[tuple[str, str]]:
    return [(t.step, t.state) for t in
            Task.select().where(Task.workflow == workflow.id).order_by(Task.seq)]


def test_a_backup_runs_export_then_store_on_one_node_and_lands_in_the_catalog(
        database: Any) -> None:
    instance = _instance()
    flow = _backup(database, instance)
    assert _states(flow) == [("export", "queued"), ("store", "waiting")]
    node, other = _node("n1"), _node("n2")
    got = claims.claim(database, node)
    assert got is not None and got.step == "export"
    assert claims.claim(database, other) is None, "the store waits for the export"
    assert not workflows.heartbeat(database, got.task_id, node, got.attempt, done=5,
                                   total=10, speed=3, log=[("info", "listing")])
    done = workflows.finish_task(database, got.task_id, node, got.attempt,
                                 state="succeeded", result={"full": True})
    assert done.workflow_state is None and done.next is not None
    store = Task.get_by_id(done.next.task_id)
    assert (store.step, store.state, store.node_id) == ("store", "running", node.id)
    assert Backup.select().count() == 0, "nothing is in the catalog before the store ends"
    end = workflows.finish_task(database, store.id, node, done.next.attempt,
                                state="succeeded",
                                result={"backup_id": "abc123", "full": True,
                                        "bytes_logical": 100, "bytes_stored": 40,
                                        "platform_state": {"k": 1}})
    assert (end.next, end.workflow_state) == (None, "succeeded")
    backup = Backup.get()
    assert (backup.repo_backup_id, backup.kind, backup.bytes_stored) == ("abc123", "full", 40)
    assert backup.platform_state == {"k": 1} and backup.instance_id == instance.id
    assert Workflow.get_by_id(flow.id).state == "succeeded"
    assert [r.message for r in TaskLog.select()] == ["listing"]
    exported = Task.get_by_id(got.task_id)
    assert (exported.progress_done, exported.progress_total) == (10, 10), \
        "a task that succeeded shows all of its work done"


def test_an_instance_is_never_queued_twice_while_one_backup_is_pending(
        database: Any) -> None:
    instance = _instance()
    first = _backup(database, instance)
    with pytest.raises(ConflictError, match=rf"already has a backup .*workflow {first.id}"):
        _backup(database, instance)
    workflows.cancel_workflow(database, first.id)
    assert _backup(database, instance).id != first.id  # once it ended, a new one may start


def test_concurrent_requests_for_one_instance_queue_one_backup(database: Any) -> None:
    instance = _instance()
    _destination()
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def request() -> None:
        try:
            barrier.wait()
            _backup(database, instance)
            outcomes.append("created")
        except ConflictError:
            outcomes.append("refused")
        except Exception as exc:  # reported by the assertion below
            outcomes.append(repr(exc))
        finally:
            database.close()

    threads = [threading.Thread(target=request) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["created", "refused", "refused", "refused"]
    assert Workflow.select().count() == 1


def test_a_failed_export_fails_the_workflow_and_cancels_the_store(database: Any) -> None:
    flow = _backup(database, _instance())
    node = _node()
    got = claims.claim(database, node)
    assert got is not None
    end = workflows.finish_task(database, got.task_id, node, got.attempt, state="failed",
                                error="share /x is not mounted")
    assert (end.next, end.workflow_state) == (None, "failed")
    assert _states(flow) == [("export", "failed"), ("store", "cancelled")]
    assert Workflow.get_by_id(flow.id).error == "share /x is not mounted"


def test_cancel_stops_queued_work_at_once_and_running_work_at_its_heartbeat(
        database: Any) -> None:
    queued = _backup(database, _instance("a"))
    assert workflows.cancel_workflow(database, queued.id) == "cancelled"
    assert _states(queued) == [("export", "cancelled"), ("store", "cancelled")]
    with pytest.raises(ConflictError, match="already cancelled"):
        workflows.cancel_workflow(database, queued.id)
    with pytest.raises(NotFoundError, match="workflow: no workflow 999"):
        workflows.cancel_workflow(database, 999)

    running = _backup(database, _instance("b"))
    node = _node()
    got = claims.claim(database, node)
    assert got is not None
    assert workflows.cancel_workflow(database, running.id) == "cancelling"
    assert workflows.heartbeat(database, got.task_id, node, got.attempt)
    end = workflows.finish_task(database, got.task_id, node, got.attempt, state="cancelled")
    assert (end.next, end.workflow_state) == (None, "cancelled")
    assert _states(running) == [("export", "cancelled"), ("store", "cancelled")]


def test_always_run_steps_still_run_after_a_failure(database: Any) -> None:
    flow = _backup(database, _instance())
    Task.create(workflow=flow, step="thaw", seq=5, state="waiting",
                params={"always_run": True})
    node = _node()
    got = claims.claim(database, node)
    assert got is not None
    done = workflows.finish_task(database, got.task_id, node, got.attempt, state="failed",
                                 error="boom")
    assert done.next is not None and done.next.step == "thaw"
    end = workflows.finish_task(database, done.next.task_id, node, done.next.attempt,
                                state="succeeded")
    assert end.workflow_state == "failed"
    assert _states(flow) == [("export", "failed"), ("store", "cancelled"),
                             ("thaw", "succeeded")]


def test_a_stale_report_is_refused(database: Any) -> None:
    _backup(database, _instance())
    node, thief = _node("n1"), _node("n2")
    got = claims.claim(database, node)
    assert got is not None
    with pytest.raises(LeaseLost):
        workflows.heartbeat(database, got.task_id, node, got.attempt + 1)
    with pytest.raises(LeaseLost):
        workflows.finish_task(database, got.task_id, thief, got.attempt, state="succeeded")
    with pytest.raises(UsageError, match="state: must be one of"):
        workflows.finish_task(database, got.task_id, node, got.attempt, state="done")


def test_a_lost_node_s_workflow_starts_again_from_its_first_task(database: Any) -> None:
    flow = _backup(database, _instance())
    node = _node("n1")
    got = claims.claim(database, node)
    assert got is not None
    done = workflows.finish_task(database, got.task_id, node, got.attempt, state="succeeded")
    assert done.next is not None
    later = utcnow() + claims.LEASE + dt.timedelta(seconds=5)
    reaped = claims.reap(database, now=later)
    assert [(r.node_name, r.requeued) for r in reaped] == [("n1", True)]
    assert _states(flow) == [("export", "queued"), ("store", "waiting")]
    assert Node.get_by_id(node.id).state == "lost"
    with pytest.raises(LeaseLost):  # the lost node's late report changes nothing
        workflows.finish_task(database, done.next.task_id, node, done.next.attempt,
                              state="succeeded", result={"backup_id": "late"})
    rescuer = _node("n2")
    again = claims.claim(database, rescuer, now=later + dt.timedelta(minutes=5))
    assert again is not None and again.step == "export" and again.attempt == 2
    assert Backup.select().count() == 0


def test_higher_priority_workflows_are_claimed_first(database: Any) -> None:
    low = _backup(database, _instance("low"), priority=10)
    high = _backup(database, _instance("high"), priority=90)
    _backup(database, _instance("mid"), priority=50)
    node = _node()
    order = [c.workflow_id for c in (claims.claim(database, node) for _ in range(3)) if c]
    assert order[0] == high.id and order[-1] == low.id and len(order) == 3
    with pytest.raises(UsageError, match="priority: must be from 0 to 100"):
        _backup(database, _instance("bad"), priority=101)


def test_policy_priority_is_the_default(database: Any) -> None:
    policy = Policy.create(name="gold", priority=80, rules=[], retention={})
    flow = _backup(database, _instance(), policy=policy)
    assert Workflow.get_by_id(flow.id).priority == 80


def test_tied_nodes_take_only_their_provider_s_work_and_others_leave_it(
        database: Any) -> None:
    tied = _node("tied", affinity=["provider:nas1"])
    free = _node("free")
    racked = _node("racked", affinity=["cluster:dc1/rack2"])
    nas = _backup(database, _instance("s1", provider="nas1"))
    other = _backup(database, _instance("s2", provider="nas2"))
    in_rack = _backup(database, _instance("s3", provider="nas3", location="dc1/rack2/host7"))
    got_free = [claims.claim(database, free) for _ in range(3)]
    assert [c.workflow_id for c in got_free if c] == [other.id]
    got_tied = claims.claim(database, tied)
    assert got_tied is not None and got_tied.workflow_id == nas.id
    assert claims.claim(database, tied) is None
    got_racked = claims.claim(database, racked)
    assert got_racked is not None and got_racked.workflow_id == in_rack.id


def test_work_of_no_provider_goes_to_tied_nodes_too(database: Any) -> None:
    """A restore into a directory and a prune need no provider: with every node tied
    they must still run."""
    tied = _node("tied", affinity=["provider:nas1"])
    other = _backup(database, _instance("s2", provider="nas2"))
    restore = workflows.create_workflow(database, "restore", params={"path": "/srv/r"})
    got = claims.claim(database, tied)
    assert got is not None and got.workflow_id == restore.id
    assert claims.claim(database, tied) is None  # nas2's backup waits for an untied node
    free = _node("free")
    got_free = claims.claim(database, free)
    assert got_free is not None and got_free.workflow_id == other.id


def test_unknown_workflow_kind_names_the_field(database: Any) -> None:
    with pytest.raises(UsageError, match="kind: unknown workflow kind 'teleport'"):
        workflows.create_workflow(database, "teleport")
