"""The scheduler pass and retention over a real database (SQLite and MariaDB): policy
membership by rules, due schedules, missed windows, never queueing an instance twice, and
retention expiring exactly what GFS does not keep over a simulated year."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import peewee as pw
import pytest

from sbr_core.db.schema import (
    Backup,
    Destination,
    Instance,
    Policy,
    PolicyInstance,
    ProviderConnection,
    Schedule,
    Workflow,
)
from sbr_core.engine import expiry, scheduler
from sbr_core.engine.workflows import create_workflow
from sbr_core.repository.retention import parse_retention, select_kept
from tests.engine_site import EngineSite

NOW = dt.datetime(2026, 3, 10, 12, 0)  # naive UTC, as the database stores it


@pytest.fixture
def world(database: pw.Database) -> dict[str, Any]:
    connection = ProviderConnection.create(name="pve1", kind="hypervisor", plugin="x")
    other = ProviderConnection.create(name="nas1", kind="storage", plugin="y")
    destination = Destination.create(name="disk1", plugin="filesystem")
    instances = {
        name: Instance.create(connection=conn, external_id=name, name=name, tags=tags,
                              location=location)
        for name, conn, tags, location in (
            ("web-1", connection, ["prod"], "dc1/a"),
            ("web-2", connection, ["test"], "dc1/b"),
            ("db-1", connection, ["prod"], "dc2/a"),
            ("files", other, [], ""),
        )}
    return {"db": database, "destination": destination, "instances": instances}


def _policy(world: dict[str, Any], name: str, *, rules: list[dict[str, str]] | None = None,
            explicit: tuple[str, ...] = (), schedule: str = "02:00", window: int = 0,
            retention: dict[str, int] | None = None) -> Policy:
    policy = Policy.create(name=name, destination=world["destination"], rules=rules or [],
                           retention=retention or {})
    for member in explicit:
        PolicyInstance.create(policy=policy, instance=world["instances"][member])
    Schedule.create(policy=policy, kind="daily", expression=schedule, window_minutes=window)
    scheduler.refresh_membership(world["db"], [policy])
    return policy


def _names(policy: Policy) -> set[str]:
    return {i.name for i in scheduler.members(policy)}


def test_rules_are_re_evaluated_and_explicit_members_stay(world: dict[str, Any]) -> None:
    policy = _policy(world, "prod", rules=[{"tag": "prod"}, {"name": "^files$"}],
                     explicit=("web-2",))
    assert _names(policy) == {"web-1", "db-1", "files", "web-2"}

    web1 = world["instances"]["web-1"]
    Instance.update(tags=["retired"]).where(Instance.id == web1.id).execute()
    Instance.update(tags=["prod", "test"]).where(
        Instance.id == world["instances"]["web-2"].id).execute()  # explicit and by rule
    Instance.create(connection=web1.connection, external_id="db-2", name="db-2",
                    tags=["prod"])
    changed = scheduler.refresh_membership(world["db"])
    assert changed == 2  # web-1 out, db-2 in
    assert _names(policy) == {"db-1", "files", "web-2", "db-2"}

    Instance.update(present=False).where(Instance.name == "db-1").execute()
    assert "db-1" not in _names(policy), "a vanished instance is not backed up"
    assert PolicyInstance.select().where(PolicyInstance.source == "explicit").count() == 1


def test_a_new_schedule_waits_for_its_first_time(world: dict[str, Any]) -> None:
    policy = _policy(world, "nightly", rules=[{"tag": "prod"}])
    report = scheduler.schedule_pass(world["db"], now=NOW)
    assert report.created == 0
    schedule = Schedule.get(Schedule.policy == policy.id)
    assert schedule.next_run_at == dt.datetime(2026, 3, 11, 2, 0)

    report = scheduler.schedule_pass(world["db"], now=dt.datetime(2026, 3, 11, 2, 0, 5))
    assert (report.fired, report.created) == (1, 2)
    flows = list(Workflow.select().where(Workflow.policy == policy.id))
    assert {f.instance.name for f in flows} == {"web-1", "db-1"}
    assert all(f.requested_by == "policy:nightly" and f.kind == "backup" for f in flows)
    assert all(f.params["destination_id"] == world["destination"].id for f in flows)


def test_a_policys_options_go_with_the_work_it_starts(world: dict[str, Any]) -> None:
    backups = _policy(world, "nightly", explicit=("web-1",))
    Policy.update(options={"quiesce": False}).where(Policy.id == backups.id).execute()
    snapshots = Policy.create(name="hourly", kind="snapshot", retention={"keep_snapshots": 2},
                              options={"kind": "external"})
    PolicyInstance.create(policy=snapshots, instance=world["instances"]["db-1"])
    Schedule.create(policy=snapshots, kind="daily", expression="02:00")
    scheduler.schedule_pass(world["db"], now=NOW)
    scheduler.schedule_pass(world["db"], now=dt.datetime(2026, 3, 11, 2, 0, 5))
    params = {f.kind: f.params for f in Workflow.select()}
    assert params["backup"]["options"] == {"quiesce": False}
    assert params["snapshot"] == {"keep_snapshots": 2, "policy": "hourly",
                                  "options": {"kind": "external"}}


def test_a_schedule_missed_for_days_runs_once_not_once_per_day(world: dict[str, Any]) -> None:
    policy = _policy(world, "nightly", rules=[{"tag": "prod"}])
    Schedule.update(next_run_at=NOW - dt.timedelta(days=5)).execute()  # server was down
    first = scheduler.schedule_pass(world["db"], now=NOW)
    again = scheduler.schedule_pass(world["db"], now=NOW + dt.timedelta(minutes=1))
    assert (first.fired, first.created) == (1, 2)
    assert (again.fired, again.created) == (0, 0)
    assert Workflow.select().where(Workflow.policy == policy.id).count() == 2
    assert Schedule.get().next_run_at == dt.datetime(2026, 3, 11, 2, 0)
    assert Schedule.get().last_run_at == NOW


def test_a_missed_window_is_skipped_until_the_next_time(world: dict[str, Any]) -> None:
    _policy(world, "windowed", rules=[{"tag": "prod"}], window=60)
    Schedule.update(next_run_at=dt.datetime(2026, 3, 10, 2, 0)).execute()
    report = scheduler.schedule_pass(world["db"], now=NOW)  # 10 hours late, window 1 h
    assert (report.fired, report.skipped_windows, report.created) == (0, 1, 0)
    assert Schedule.get().next_run_at == dt.datetime(2026, 3, 11, 2, 0)


def test_an_instance_is_never_queued_twice(world: dict[str, Any]) -> None:
    policy = _policy(world, "nightly", rules=[{"tag": "prod"}])
    _policy(world, "also", rules=[{"location": "dc1"}])  # web-1 is in both
    create_workflow(world["db"], "backup", instance=world["instances"]["db-1"],
                    params={"destination_id": world["destination"].id})
    Schedule.update(next_run_at=NOW - dt.timedelta(minutes=1)).execute()
    report = scheduler.schedule_pass(world["db"], now=NOW)
    assert report.fired == 2
    pending = [f.instance.name for f in Workflow.select()]
    assert sorted(pending) == ["db-1", "web-1", "web-2"]
    assert report.busy == 2  # db-1 already pending; web-1 queued by the first policy
    assert Workflow.select().where(Workflow.policy == policy.id).count() == 1


def test_a_broken_stored_schedule_is_disabled_and_named(world: dict[str, Any]) -> None:
    _policy(world, "nightly", rules=[{"tag": "prod"}])
    Schedule.update(kind="cron", expression="99 * * * *",
                    next_run_at=NOW - dt.timedelta(minutes=1)).execute()
    report = scheduler.schedule_pass(world["db"], now=NOW)
    assert report.created == 0 and len(report.broken) == 1
    assert "nightly" in report.broken[0] and "minute" in report.broken[0]
    assert Schedule.get().enabled is False


def test_retention_after_each_daily_backup_for_a_year_keeps_exactly_the_gfs_set(
        world: dict[str, Any]) -> None:
    """A year of daily backups, retention applied after each as the engine does; what is
    left is exactly what the rules keep of the whole series, counted independently."""
    rules = {"daily": 7, "weekly": 4, "monthly": 12, "yearly": 3}
    policy = _policy(world, "gfs", explicit=("web-1",), retention=rules)
    web1 = world["instances"]["web-1"]
    start = dt.datetime(2025, 3, 1, 2, 30)
    made: list[tuple[str, dt.datetime]] = []
    for day in range(365):
        when = start + dt.timedelta(days=day)
        backup = Backup.create(instance=web1, destination=world["destination"],
                               policy=policy, repo_backup_id=f"r{day}", started_at=when,
                               finished_at=when)
        made.append((str(backup.id), when.replace(tzinfo=dt.UTC)))
        expiry.expire_backups(world["db"], policies=[policy], instance_ids=[web1.id],
                              now=when)
    end = made[-1][1]
    expected = select_kept(made, parse_retention(rules), now=end, tz=dt.UTC)
    kept = {str(b.id) for b in Backup.select().where(Backup.state == "complete")}
    assert kept == expected
    # Counted by hand from the calendar (the last backup is Saturday 2026-02-28):
    # dailies 02-22 … 02-28; weeklies (ISO weeks) 02-28, 02-22, 02-15, 02-08; monthlies
    # the last day of each month from 2025-03 to 2026-02; yearlies 2026-02-28, 2025-12-31.
    kept_days = sorted(when.date().isoformat() for backup_id, when in made if backup_id in kept)
    months = ["2025-03-31", "2025-04-30", "2025-05-31", "2025-06-30", "2025-07-31",
              "2025-08-31", "2025-09-30", "2025-10-31", "2025-11-30", "2025-12-31",
              "2026-01-31"]
    days = [f"2026-02-{d:02d}" for d in (8, 15, 22, 23, 24, 25, 26, 27, 28)]
    assert kept_days == months + days


def test_an_on_demand_backup_is_not_expired_by_a_policy(world: dict[str, Any]) -> None:
    policy = _policy(world, "last1", explicit=("web-1",), retention={"last": 1})
    web1 = world["instances"]["web-1"]
    manual = Backup.create(instance=web1, destination=world["destination"],
                           repo_backup_id="manual", finished_at=NOW - dt.timedelta(days=9))
    for day in range(3):
        Backup.create(instance=web1, destination=world["destination"], policy=policy,
                      repo_backup_id=f"p{day}", finished_at=NOW - dt.timedelta(days=3 - day))
    assert expiry.expire_backups(world["db"], now=NOW) == 2
    assert Backup.get_by_id(manual.id).state == "complete"
    assert scheduler.prune_pass(world["db"]) == 1
    assert scheduler.prune_pass(world["db"]) == 0, "one prune per destination at a time"
    prune = Workflow.get(Workflow.kind == "prune")
    assert len(prune.params["backup_ids"]) == 2


def test_the_server_runs_a_schedule_missed_while_it_was_down_once(
        tmp_path: Path, database: pw.Database, database_url: str) -> None:
    site = EngineSite(tmp_path, database, database_url)
    policy = Policy.create(name="nightly", destination=site.destination)
    PolicyInstance.create(policy=policy, instance=site.instance)
    Schedule.create(policy=policy, kind="daily", expression="02:00",
                    next_run_at=dt.datetime.now(dt.UTC).replace(tzinfo=None)
                    - dt.timedelta(days=3))
    try:
        for _ in range(2):  # a restart after the run must not run it again
            site.start_server()
            time.sleep(2.5)  # five ticks
            site.stop_server()
    finally:
        site.close()
    flows = list(Workflow.select().where(Workflow.policy == policy.id))
    assert len(flows) == 1, [(f.id, f.created_at) for f in flows]
    assert Schedule.get().next_run_at > dt.datetime.now(dt.UTC).replace(tzinfo=None)
