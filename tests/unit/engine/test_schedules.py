"""Schedules: parsing with errors that name the field, DST-correct fire times, missed windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from sbr_core.engine.schedules import (
    Schedule,
    due,
    next_fire_after,
    parse_schedule,
    upcoming,
)
from sbr_core.errors import ConfigError

BERLIN = ZoneInfo("Europe/Berlin")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def berlin_daily(at: str = "02:30", window: int = 0) -> Schedule:
    return parse_schedule({"kind": "daily", "at": at, "window_minutes": window,
                           "timezone": "Europe/Berlin"})


# --- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(("expression", "message"), [
    ("61 * * * *", "schedule.expression: '61 * * * *' is not a valid cron expression: "
                   "minute must be 0-59"),
    ("0 24 * * *", "hour must be 0-23"),
    ("0 0 * 13 *", "month must be 1-12"),
    ("0 0 * * 9", "day-of-week must be 0-7"),
    ("*/0 * * * *", "minute step must be 1 or more"),
    ("0 0 30 2 *", "day-of-month '30' never occurs in month '2'"),
    ("0 2 * *", "needs 5 fields"),
    ("0 0 2 * * *", "needs 5 fields"),
    ("@sometimes", "unknown macro"),
    ("", "a cron expression is required"),
])
def test_a_bad_cron_expression_is_refused_naming_the_field(expression: str,
                                                           message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_schedule({"kind": "cron", "expression": expression})
    assert message in str(caught.value)
    assert list(caught.value.problems) == ["schedule.expression"]


def test_errors_name_where_the_schedule_sits_in_the_request() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_schedule({"kind": "weekly", "at": "24:00", "weekdays": ["sat", "caturday"],
                        "window_minutes": -5, "timezone": "Mars/Olympus", "color": "red"},
                       field="policy.schedules[1]")
    assert set(caught.value.problems) == {
        "policy.schedules[1].at", "policy.schedules[1].weekdays",
        "policy.schedules[1].window_minutes", "policy.schedules[1].timezone",
        "policy.schedules[1].color"}
    assert "policy.schedules[1].window_minutes: must be 0 or more" in str(caught.value)
    assert "'caturday' is not a day of the week" in str(caught.value)


@pytest.mark.parametrize("bad", [
    {"kind": "hourly", "expression": "0 * * * *"},
    {"expression": "0 * * * *"},
    {"kind": "cron", "expression": "0 2 * * *", "window_minutes": True},
    {"kind": "cron", "expression": "0 2 * * *", "window_minutes": "60"},
    {"kind": "daily", "at": "2:30pm"},
    {"kind": "daily", "at": "02:30", "weekdays": ["mon"]},
    {"kind": "weekly", "at": "02:30"},
    {"kind": "weekly", "at": "02:30", "weekdays": "sat"},
    {"kind": "weekly", "at": "02:30", "expression": "sat 02:30"},
    {"kind": "cron", "expression": "0 2 * * *", "at": "02:00"},
])
def test_malformed_schedules_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        parse_schedule(bad)


def test_schedules_round_trip_through_the_api_form_and_the_stored_columns() -> None:
    weekly = parse_schedule({"kind": "weekly", "at": "2:05", "weekdays": ["Sunday", "sat"],
                             "window_minutes": 90, "timezone": "Europe/Berlin"})
    assert weekly.expression == "sat,sun 02:05"
    assert weekly.cron == "5 2 * * 6,0"
    assert weekly.to_dict() == {"kind": "weekly", "at": "02:05", "weekdays": ["sat", "sun"],
                                "window_minutes": 90, "timezone": "Europe/Berlin"}
    assert parse_schedule(weekly.to_dict()) == weekly
    stored = {"kind": weekly.kind, "expression": weekly.expression,
              "window_minutes": weekly.window_minutes, "timezone": weekly.timezone}
    assert parse_schedule(stored) == weekly
    assert parse_schedule("@daily").cron == "0 0 * * *"
    assert parse_schedule("0  2 * * 1-5") == Schedule("cron", "0 2 * * 1-5")


# --- fire times ---------------------------------------------------------------------------


def test_weekly_fires_on_the_chosen_days_only() -> None:
    schedule = parse_schedule({"kind": "weekly", "at": "23:00", "weekdays": ["fri", "sun"]})
    fires = upcoming(schedule, utc(2026, 6, 1), 4)  # 2026-06-01 is a Monday
    assert fires == [utc(2026, 6, 5, 23), utc(2026, 6, 7, 23), utc(2026, 6, 12, 23),
                     utc(2026, 6, 14, 23)]


def test_daily_0230_berlin_on_the_night_clocks_skip_an_hour_fires_at_the_jump() -> None:
    # 2026-03-29: at 02:00 CET clocks jump to 03:00 CEST, so 02:30 does not exist that
    # night. Like Debian's cron, the run happens at the jump (03:00 CEST = 01:00 UTC):
    # once, and not skipped.
    fires = upcoming(berlin_daily(), utc(2026, 3, 27, 12), 3)
    assert fires == [utc(2026, 3, 28, 1, 30),   # 02:30 CET
                     utc(2026, 3, 29, 1, 0),    # 03:00 CEST, the first minute after the gap
                     utc(2026, 3, 30, 0, 30)]   # 02:30 CEST
    assert [f.astimezone(BERLIN).strftime("%H:%M") for f in fires] == ["02:30", "03:00",
                                                                        "02:30"]


def test_daily_0230_berlin_on_the_night_an_hour_repeats_fires_once() -> None:
    # 2026-10-25: at 03:00 CEST clocks fall back to 02:00 CET, so 02:30 happens twice.
    # The schedule runs once, at the first 02:30 (CEST = 00:30 UTC).
    fires = upcoming(berlin_daily(), utc(2026, 10, 24, 12), 2)
    assert fires == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]
    # Asked during the repeated hour, after the run: the next run is tomorrow, not the
    # second 02:30 (and not the first one, which is already past).
    second_pass = datetime(2026, 10, 25, 2, 15, fold=1, tzinfo=BERLIN)
    assert second_pass.astimezone(UTC) == utc(2026, 10, 25, 1, 15)
    assert next_fire_after(berlin_daily(), second_pass) == utc(2026, 10, 26, 1, 30)
    assert next_fire_after(berlin_daily(), utc(2026, 10, 25, 0, 45)) == \
        utc(2026, 10, 26, 1, 30)


def test_hourly_cron_follows_real_hours_across_both_changes() -> None:
    hourly = parse_schedule({"kind": "cron", "expression": "0 * * * *",
                             "timezone": "Europe/Berlin"})
    fall = upcoming(hourly, utc(2026, 10, 24, 22, 30), 4)
    assert fall == [utc(2026, 10, 24, 23), utc(2026, 10, 25, 0), utc(2026, 10, 25, 1),
                    utc(2026, 10, 25, 2)]
    spring = upcoming(hourly, utc(2026, 3, 28, 23, 30), 3)
    assert spring == [utc(2026, 3, 29, 0), utc(2026, 3, 29, 1), utc(2026, 3, 29, 2)]


def test_times_must_carry_a_timezone() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_fire_after(berlin_daily(), datetime(2026, 1, 1))


# --- due: missed runs and windows ---------------------------------------------------------


def run_scheduler(schedule: Schedule, next_run_at: datetime | None, start: datetime,
                  end: datetime, tick: timedelta = timedelta(seconds=30)) -> list[datetime]:
    """Tick like the server's scheduler; return the instants it decided to run."""
    runs: list[datetime] = []
    now = start
    while now < end:
        run, next_run_at = due(schedule, next_run_at, now)
        if run:
            runs.append(now)
        now += tick
    return runs


def test_a_server_down_for_a_week_runs_a_missed_daily_schedule_once() -> None:
    schedule = parse_schedule({"kind": "daily", "at": "02:00"})
    stored = utc(2026, 5, 4, 2)  # the server stopped on 2026-05-03, before this run
    restart = utc(2026, 5, 11, 9, 17)
    runs = run_scheduler(schedule, stored, restart, restart + timedelta(hours=12))
    assert runs == [restart]
    run, following = due(schedule, stored, restart)
    assert run and following == utc(2026, 5, 12, 2)


def test_a_missed_run_whose_window_closed_is_skipped_until_the_next_time() -> None:
    schedule = parse_schedule({"kind": "daily", "at": "02:00", "window_minutes": 60})
    assert due(schedule, utc(2026, 5, 11, 2), utc(2026, 5, 11, 2, 59)) == \
        (True, utc(2026, 5, 12, 2))
    assert due(schedule, utc(2026, 5, 11, 2), utc(2026, 5, 11, 3, 0)) == \
        (False, utc(2026, 5, 12, 2))
    runs = run_scheduler(schedule, utc(2026, 5, 11, 2), utc(2026, 5, 11, 5),
                         utc(2026, 5, 12, 5))
    assert runs == [utc(2026, 5, 12, 2)]


def test_the_window_that_counts_is_the_latest_missed_ones() -> None:
    # Down since Monday's run; back on Wednesday inside Wednesday's window: run once now.
    schedule = parse_schedule({"kind": "daily", "at": "02:00", "window_minutes": 120})
    assert due(schedule, utc(2026, 5, 11, 2), utc(2026, 5, 13, 3)) == \
        (True, utc(2026, 5, 14, 2))
    assert due(schedule, utc(2026, 5, 11, 2), utc(2026, 5, 13, 4, 30)) == \
        (False, utc(2026, 5, 14, 2))


def test_a_window_is_real_minutes_across_the_repeated_hour() -> None:
    # The 02:30 CEST run (00:30 UTC) with a 30-minute window is over at 01:00 UTC, even
    # though the clock shows 02:15 again at 01:15 UTC.
    schedule = berlin_daily(window=30)
    assert due(schedule, utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 45))[0]
    assert not due(schedule, utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 1, 15))[0]


def test_a_long_outage_of_an_every_minute_schedule_runs_once_without_stepping() -> None:
    schedule = parse_schedule({"kind": "cron", "expression": "* * * * *",
                               "window_minutes": 5})
    now = utc(2027, 1, 1, 0, 0, 30)
    assert due(schedule, utc(2026, 1, 1), now) == (True, utc(2027, 1, 1, 0, 1))


def test_a_new_schedule_waits_for_its_first_time_and_a_future_one_is_left_alone() -> None:
    schedule = parse_schedule({"kind": "daily", "at": "02:00"})
    assert due(schedule, None, utc(2026, 5, 11, 9)) == (False, utc(2026, 5, 12, 2))
    assert due(schedule, utc(2026, 5, 12, 2), utc(2026, 5, 11, 9)) == \
        (False, utc(2026, 5, 12, 2))
    runs = run_scheduler(schedule, None, utc(2026, 5, 11, 9), utc(2026, 5, 14, 9))
    assert runs == [utc(2026, 5, 12, 2), utc(2026, 5, 13, 2), utc(2026, 5, 14, 2)]
