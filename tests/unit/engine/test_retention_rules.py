"""Retention over catalog rows: a simulated year of GFS, keep-within, validation.

The expected sets are written out from the calendar, not computed by the code under test.
"""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from sbr_core.errors import ConfigError
from sbr_core.repository.manifest import Manifest
from sbr_core.repository.retention import (
    RetentionRules,
    explain_retention,
    parse_retention,
    select_forgettable,
    select_kept,
)


def at(day: date, hour: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def ids(*stamps: str) -> set[str]:
    return {datetime.fromisoformat(s + ":00+00:00").isoformat() for s in stamps}


# One backup a day at 02:00 UTC from 2024-12-01 to 2025-12-31, and a second one at 14:00 on
# these days:
SECOND_RUNS = {date(2024, 12, 31), date(2025, 3, 30), date(2025, 6, 30), date(2025, 12, 21),
               date(2025, 12, 29), date(2025, 12, 31)}
NOW = datetime(2025, 12, 31, 18, tzinfo=UTC)


def simulated_year() -> list[tuple[str, datetime]]:
    backups = []
    day = date(2024, 12, 1)
    while day <= date(2025, 12, 31):
        backups.append(at(day, 2))
        if day in SECOND_RUNS:
            backups.append(at(day, 14))
        day += timedelta(days=1)
    return [(when.isoformat(), when) for when in backups]


def test_gfs_over_a_simulated_year_keeps_exactly_the_expected_backups() -> None:
    backups = simulated_year()
    assert len(backups) == 31 + 365 + 6
    rules = RetentionRules(last=3, within_days=10, daily=7, weekly=4, monthly=12, yearly=2)
    reasons = explain_retention(backups, rules, now=NOW)

    def kept_by(rule: str) -> set[str]:
        return {backup for backup, why in reasons.items() if rule in why}

    assert kept_by("last") == ids("2025-12-31T14", "2025-12-31T02", "2025-12-30T02")
    # Newer than 2025-12-21T18:00: from the 22nd's 02:00 on; the 21st's 14:00 just misses.
    assert kept_by("within_days") == ids(
        *(f"2025-12-{d}T02" for d in range(22, 32)), "2025-12-29T14", "2025-12-31T14")
    # The newest of each of the last seven days (the later run where a day had two).
    assert kept_by("daily") == ids(
        "2025-12-31T14", "2025-12-30T02", "2025-12-29T14", "2025-12-28T02", "2025-12-27T02",
        "2025-12-26T02", "2025-12-25T02")
    # ISO weeks run Monday to Sunday; 2025-12-29 is the Monday of 2026-W01.
    assert date(2025, 12, 29).isocalendar()[:3] == (2026, 1, 1)
    assert kept_by("weekly") == ids(
        "2025-12-31T14",    # 2026-W01: Dec 29-31
        "2025-12-28T02",    # 2025-W52: Dec 22-28
        "2025-12-21T14",    # 2025-W51: Dec 15-21, its second run on the Sunday
        "2025-12-14T02")    # 2025-W50: Dec 8-14
    # The last day of each month of 2025 (December 2024 is the thirteenth month: not kept).
    month_ends = [date(2025, m, calendar.monthrange(2025, m)[1]) for m in range(1, 13)]
    assert kept_by("monthly") == {
        at(day, 14 if day in SECOND_RUNS else 2).isoformat() for day in month_ends}
    assert "2025-06-30T14:00:00+00:00" in kept_by("monthly")
    assert "2025-03-31T02:00:00+00:00" in kept_by("monthly")  # not the 30th's second run
    assert kept_by("yearly") == ids("2025-12-31T14", "2024-12-31T14")

    kept = select_kept(backups, rules, now=NOW)
    expected = (kept_by("last") | kept_by("within_days") | kept_by("daily")
                | kept_by("weekly") | kept_by("monthly") | kept_by("yearly"))
    assert kept == expected
    # 12 within ten days, 2 more weekly, 11 more month ends, December 2024's last
    assert len(kept) == 12 + 2 + 11 + 1
    assert reasons["2025-12-31T14:00:00+00:00"] == (
        "newest", "last", "within_days", "daily", "weekly", "monthly", "yearly")
    assert reasons["2024-12-31T02:00:00+00:00"] == ()
    assert reasons["2025-12-21T02:00:00+00:00"] == ()


def test_periods_without_a_backup_do_not_use_up_the_count() -> None:
    days = [date(2026, 1, 1), date(2026, 1, 5), date(2026, 1, 9), date(2026, 1, 10)]
    backups = [(str(day), at(day, 3)) for day in days]
    kept = select_kept(backups, RetentionRules(daily=3), now=at(date(2026, 1, 10), 12))
    assert kept == {"2026-01-10", "2026-01-09", "2026-01-05"}


def test_periods_are_counted_in_the_timezone_given() -> None:
    # 23:30 UTC on the 1st is 00:30 on the 2nd in Berlin: two days there, one in UTC.
    backups = [("a", datetime(2026, 1, 1, 12, tzinfo=UTC)),
               ("b", datetime(2026, 1, 1, 23, 30, tzinfo=UTC))]
    now = datetime(2026, 1, 2, 12, tzinfo=UTC)
    assert select_kept(backups, RetentionRules(daily=5), now=now) == {"b"}
    assert select_kept(backups, RetentionRules(daily=5), now=now,
                       tz=ZoneInfo("Europe/Berlin")) == {"a", "b"}


def test_no_rules_keeps_everything() -> None:
    backups = simulated_year()
    for rules in (RetentionRules(), RetentionRules(last=0, daily=0, within_days=0),
                  parse_retention(None), parse_retention({})):
        assert not rules.any()
        assert select_kept(backups, rules, now=NOW) == {b for b, _ in backups}


def test_the_newest_backup_survives_a_keep_within_after_backups_stopped() -> None:
    backups = [("old", datetime(2025, 1, 1, tzinfo=UTC)),
               ("newest", datetime(2025, 2, 1, tzinfo=UTC))]
    assert select_kept(backups, RetentionRules(within_days=7), now=NOW) == {"newest"}


def test_select_forgettable_keeps_within_days_for_manifests() -> None:
    manifests = [Manifest(id=f"b{day}", name="vm", kind="image",
                          created=f"2026-03-{day:02d}T02:00:00.000000Z",
                          finished=f"2026-03-{day:02d}T02:10:00.000000Z", host="h")
                 for day in range(1, 11)]
    forgotten = select_forgettable(manifests, RetentionRules(within_days=3),
                                   now=datetime(2026, 3, 10, 12, tzinfo=UTC))
    assert [m.id for m in forgotten] == [f"b{day}" for day in range(7, 0, -1)]


@pytest.mark.parametrize(("data", "field", "message"), [
    ({"daily": -1}, "retention.daily", "must be 0 or more"),
    ({"last": 2.5}, "retention.last", "must be a whole number"),
    ({"weekly": "4"}, "retention.weekly", "must be a whole number"),
    ({"yearly": True}, "retention.yearly", "must be a whole number"),
    ({"within_days": -10}, "retention.within_days", "must be 0 or more"),
    ({"hourly": 24}, "retention.hourly", "unknown rule"),
])
def test_bad_retention_is_refused_naming_the_field(data: dict[str, object], field: str,
                                                    message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_retention(data)
    assert list(caught.value.problems) == [field]
    assert f"{field}: {message}" in str(caught.value)


def test_retention_rules_refuse_negative_values_however_they_are_built() -> None:
    with pytest.raises(ConfigError, match=r"retention\.monthly: must be 0 or more"):
        RetentionRules(monthly=-3)
    with pytest.raises(ConfigError, match=r"policy\.retention\.last"):
        parse_retention({"last": -1}, field="policy.retention")
    with pytest.raises(ConfigError, match="expected an object"):
        parse_retention([3])  # type: ignore[arg-type]


def test_retention_round_trips_through_its_dict() -> None:
    rules = parse_retention({"last": 3, "daily": 7, "within_days": 10, "monthly": None})
    assert rules == RetentionRules(last=3, daily=7, within_days=10)
    assert rules.to_dict() == {"last": 3, "daily": 7, "within_days": 10}
    assert parse_retention(rules.to_dict()) == rules
