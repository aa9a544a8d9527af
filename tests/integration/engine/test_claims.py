"""Claims, leases and the reaper on SQLite and on a real MariaDB, under real contention."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter
from typing import Any

import pytest

from sbr_core.db.schema import Node, Task, Workflow, utcnow
from sbr_core.engine import claims

TASKS = 120
CLAIMERS = 4


def _queue(count: int, **fields: Any) -> list[int]:
    flow = Workflow.create(kind="backup")
    return [Task.create(workflow=flow, step="export", state="queued", **fields).id
            for _ in range(count)]


def _node(name: str, concurrency: int = 1000) -> Node:
    return Node.create(name=name, concurrency=concurrency, affinity=[])


def test_two_nodes_never_claim_one_task_under_contention(database: Any) -> None:
    ids = _queue(TASKS)
    nodes = [_node(f"node-{n}") for n in range(CLAIMERS)]
    won: list[tuple[str, int]] = []
    lock = threading.Lock()
    start = threading.Barrier(CLAIMERS)
    errors: list[BaseException] = []

    def claimer(node: Node) -> None:
        try:
            start.wait()
            while True:
                got = claims.claim(database, node)
                if got is None:
                    # Nothing claimable is left only once every task is running.
                    if Task.select().where(Task.state == "queued").count() == 0:
                        return
                    continue
                with lock:
                    won.append((node.name, got.task_id))
                time.sleep(0.002)  # a node works on what it claimed before asking again
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)
        finally:
            database.close()

    threads = [threading.Thread(target=claimer, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    per_task = Counter(task_id for _, task_id in won)
    assert sorted(per_task) == sorted(ids)
    assert max(per_task.values()) == 1, "a task was handed to two claimers"
    owners = {t.id: t.node.name for t in Task.select(Task, Node).join(Node)}
    assert all(owners[task_id] == name for name, task_id in won)
    assert len({name for name, _ in won}) > 1, "contention needs more than one winner"


def test_a_claim_made_while_another_holds_its_row_takes_the_next_task(
        database: Any) -> None:
    # MariaDB once ordered the claim by the joined workflow's priority: a filesort, after
    # which SKIP LOCKED found no row at all while another claim was open, so every node but
    # one went away empty-handed with plenty of work queued.
    ids = _queue(20)
    holder, other = _node("holder"), _node("other")
    held = threading.Event()
    release = threading.Event()
    got: dict[str, Any] = {}

    def hold() -> None:
        try:
            with database.atomic():
                got["holder"] = claims.claim(database, holder)
                held.set()
                release.wait(30)
        finally:
            database.close()

    def claim_other() -> None:
        try:
            got["other"] = claims.claim(database, other)
        finally:
            database.close()

    holding = threading.Thread(target=hold)
    holding.start()
    assert held.wait(30)
    claiming = threading.Thread(target=claim_other)
    claiming.start()
    claiming.join(2)  # MariaDB answers at once; SQLite queues behind the writer
    release.set()
    holding.join(30)
    claiming.join(30)
    assert got["holder"] is not None and got["holder"].task_id == ids[0]
    assert got["other"] is not None and got["other"].task_id == ids[1]


def test_claim_respects_concurrency_backoff_and_pinning(database: Any) -> None:
    busy = _node("busy", concurrency=1)
    other = _node("other")
    later = _queue(1, not_before=utcnow() + dt.timedelta(minutes=5))[0]
    pinned = _queue(1, node=other)[0]
    free_a, free_b = _queue(2)
    first = claims.claim(database, busy)
    assert first is not None and first.task_id == free_a
    assert claims.claim(database, busy) is None  # at its concurrency limit
    taken = [claims.claim(database, other) for _ in range(3)]
    assert [c.task_id for c in taken if c] == [pinned, free_b]
    assert Task.get_by_id(later).state == "queued"
    soon = claims.claim(database, other, now=utcnow() + dt.timedelta(minutes=6))
    assert soon is not None and soon.task_id == later


def test_an_expired_lease_is_requeued_with_backoff_then_fails_the_workflow(
        database: Any) -> None:
    node = _node("n1")
    task_id = _queue(1, max_attempts=2)[0]
    first = claims.claim(database, node)
    assert first is not None and first.attempt == 1
    now = utcnow()
    assert claims.reap(database, now=now) == []  # the lease still runs
    late = now + claims.LEASE + dt.timedelta(seconds=1)
    reaped = claims.reap(database, now=late)
    assert reaped == [claims.Reaped(task_id, "n1", requeued=True)]
    task = Task.get_by_id(task_id)
    assert task.state == "queued" and task.node is None
    # MariaDB's DATETIME keeps whole seconds.
    assert abs(task.not_before - (late + claims.retry_delay(1))) < dt.timedelta(seconds=1)
    assert "stopped renewing" in task.error
    # The node that lost the lease can no longer renew it.
    assert not claims.renew(database, task_id, node, first.attempt, now=late)

    second = claims.claim(database, node, now=task.not_before)
    assert second is not None and second.attempt == 2
    assert claims.renew(database, task_id, node, 2, now=task.not_before)
    reaped = claims.reap(database, now=task.not_before + claims.LEASE * 2)
    assert reaped == [claims.Reaped(task_id, "n1", requeued=False)]
    assert Task.get_by_id(task_id).state == "failed"
    flow = Workflow.get_by_id(second.workflow_id)
    assert flow.state == "failed" and "gave up after 2 attempts" in flow.error


@pytest.mark.parametrize(("attempt", "seconds"), [(1, 30), (2, 60), (3, 120), (9, 600)])
def test_retry_delay_doubles_up_to_ten_minutes(attempt: int, seconds: int) -> None:
    assert claims.retry_delay(attempt) == dt.timedelta(seconds=seconds)
