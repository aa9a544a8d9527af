"""A transaction MariaDB picks as a deadlock victim runs again; nothing else is retried."""

from __future__ import annotations

import threading
from typing import Any

import peewee as pw
import pytest

from sbr_core.db.retry import DEADLOCK, retry_on_lock_conflict
from sbr_core.db.schema import Node

MARIADB = pytest.mark.parametrize("database_url", ["mariadb"], indirect=True)
SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def _deadlock_partner(database: Any, first: int, second: int, holding: threading.Event,
                      go: threading.Event, errors: list[BaseException]) -> None:
    """Locks ``first`` and every other row after ``second`` (so that InnoDB finds this
    transaction the heavier one and rolls back the other), then asks for ``second``."""
    try:
        with database.atomic():
            Node.update(concurrency=Node.concurrency + 1).where(Node.id > second).execute()
            holding.set()
            go.wait(30)
            Node.update(concurrency=7).where(Node.id == second).execute()
    except BaseException as exc:
        errors.append(exc)
    finally:
        database.close()


@MARIADB
def test_the_deadlock_victim_runs_again_and_succeeds(database: Any) -> None:
    rows = [Node.create(name=f"n{i}", concurrency=1, affinity=[]).id for i in range(40)]
    second, first = rows[0], rows[1]
    holding, go = threading.Event(), threading.Event()
    errors: list[BaseException] = []
    partner = threading.Thread(target=_deadlock_partner,
                               args=(database, first, second, holding, go, errors))
    runs: list[str] = []

    @retry_on_lock_conflict
    def work() -> str:
        with database.atomic():
            Node.update(concurrency=99).where(Node.id == second).execute()
            if not runs:
                partner.start()
                assert holding.wait(30)
                go.set()  # the partner now waits for `second`, which we hold
            runs.append("run")
            # our turn to wait for `first`, which the partner holds: a cycle
            Node.update(concurrency=5).where(Node.id == first).execute()
        return "done"

    assert work() == "done"
    partner.join(30)
    assert errors == []
    assert runs == ["run", "run"]  # rolled back once, then ran to the end
    assert Node.get_by_id(first).concurrency == 5
    # the partner's write to `second` committed before our second run overwrote it
    assert Node.get_by_id(second).concurrency == 99


@MARIADB
def test_inside_a_callers_transaction_the_conflict_goes_to_the_caller(
        database: Any) -> None:
    calls: list[int] = []

    @retry_on_lock_conflict
    def work() -> None:
        calls.append(1)
        raise pw.OperationalError(DEADLOCK, "Deadlock found when trying to get lock")

    with pytest.raises(pw.OperationalError), database.atomic():
        work()
    assert calls == [1]


@MARIADB
def test_other_database_errors_are_not_retried(database: Any) -> None:
    calls: list[int] = []

    @retry_on_lock_conflict
    def work() -> None:
        calls.append(1)
        database.execute_sql("SELECT no_such_column FROM node")

    with pytest.raises(pw.OperationalError):
        work()
    assert calls == [1]


@SQLITE
def test_a_sqlite_transaction_that_reads_then_writes_survives_a_commit_in_between(
        database: Any) -> None:
    # A DEFERRED transaction's snapshot goes stale when another connection commits after
    # its first read; its first write then failed at once with "database is locked". The
    # server's engine thread commits while requests run. Transactions now begin IMMEDIATE.
    node = Node.create(name="n1", concurrency=1, affinity=[])
    read_done = threading.Event()
    errors: list[BaseException] = []

    def other_writer() -> None:
        try:
            read_done.wait(30)
            Node.create(name="n2", concurrency=1, affinity=[])  # its own connection
        except BaseException as exc:
            errors.append(exc)
        finally:
            database.close()

    writer = threading.Thread(target=other_writer)
    writer.start()
    with database.atomic():
        assert Node.select().count() == 1
        read_done.set()
        writer.join(0.5)  # the other writer waits for our lock (before: it committed)
        Node.update(concurrency=4).where(Node.id == node.id).execute()
    writer.join(30)
    assert errors == []
    assert sorted(n.name for n in Node.select()) == ["n1", "n2"]
    assert Node.get_by_id(node.id).concurrency == 4
