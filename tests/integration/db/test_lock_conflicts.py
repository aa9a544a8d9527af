"""A transaction MariaDB picks as a deadlock victim runs again; nothing else is retried."""

from __future__ import annotations

import threading
from typing import Any

import peewee as pw
import pytest

from sbr_core.db.retry import DEADLOCK, retry_on_lock_conflict
from sbr_core.db.schema import Node

pytestmark = pytest.mark.parametrize("database_url", ["mariadb"], indirect=True)


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


def test_other_database_errors_are_not_retried(database: Any) -> None:
    calls: list[int] = []

    @retry_on_lock_conflict
    def work() -> None:
        calls.append(1)
        database.execute_sql("SELECT no_such_column FROM node")

    with pytest.raises(pw.OperationalError):
        work()
    assert calls == [1]
