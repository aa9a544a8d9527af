"""When a policy runs: schedules, their next fire time, and the rule for missed windows.

A schedule is one of

- ``cron``: a five-field cron expression (``"30 2 * * 1-5"``) or a macro (``@daily``);
- ``daily``: every day at ``HH:MM``;
- ``weekly``: at ``HH:MM`` on the weekdays given (``mon`` … ``sun``);

read as wall-clock time in an IANA timezone (``Europe/Berlin``; ``UTC`` by default), with a
window in minutes (0: no window) within which a run that is late may still start.

Fire times follow Debian's cron across daylight-saving changes (we evaluate cron with
cronsim, which mimics it): a time that does not exist (02:30 on the day clocks jump from
02:00 to 03:00) fires at the jump, 03:00; a time that happens twice (02:30 on the day clocks
fall back) fires once, the first time. Expressions that run every minute or hour (``*`` in
the minute or hour field) fire on real time instead, so hourly jobs neither double nor skip.

Every datetime taken must be timezone-aware; every datetime returned is in UTC.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
from cronsim import CronSim, CronSimError

from sbr_core.errors import ConfigError

KINDS = ("cron", "daily", "weekly")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_NAMES = {day: day for day in WEEKDAYS} | {
    full: full[:3]
    for full in ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")}

_MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_CRON_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_CRON_RANGES = {
    "minute": "0-59",
    "hour": "0-23",
    "day-of-month": "1-31, L or LW",
    "month": "1-12 or JAN-DEC",
    "day-of-week": "0-7 or SUN-SAT (also MON#2, 5L)",
}
_AT = re.compile(r"(\d{1,2}):(\d{2})")
# A far-back start from which every valid expression fires within cronsim's 50-year horizon.
_PROBE_FROM = datetime(2001, 1, 1, tzinfo=UTC)


@attrs.frozen
class Schedule:
    """One schedule of a policy; build it with :func:`parse_schedule`.

    ``expression`` is what the database stores: the cron text for ``cron``, ``"HH:MM"`` for
    ``daily``, and ``"sat,sun HH:MM"`` for ``weekly``.
    """

    kind: str
    expression: str
    window_minutes: int = 0
    timezone: str = "UTC"

    @property
    def cron(self) -> str:
        """The five-field cron expression that drives this schedule."""
        return _to_cron(self.kind, self.expression)

    @property
    def zone(self) -> ZoneInfo:
        """The timezone the schedule's times are read in."""
        return ZoneInfo(self.timezone)

    @property
    def window(self) -> timedelta | None:
        """How long after its time a late run may still start; None: any time."""
        return timedelta(minutes=self.window_minutes) if self.window_minutes else None

    def to_dict(self) -> dict[str, Any]:
        """The plain form :func:`parse_schedule` reads (for the API and the UI)."""
        data: dict[str, Any] = {"kind": self.kind}
        if self.kind == "cron":
            data["expression"] = self.expression
        else:
            days, at = _split_stored(self.kind, self.expression)
            data["at"] = at
            if self.kind == "weekly":
                data["weekdays"] = list(days)
        data["window_minutes"] = self.window_minutes
        data["timezone"] = self.timezone
        return data


def parse_schedule(data: Mapping[str, Any] | str, *, field: str = "schedule") -> Schedule:
    """Validate a schedule given as a dict (the API's form, or a stored row's columns).

    Keys: ``kind`` (``cron``, ``daily``, ``weekly``); for ``cron`` an ``expression``; for
    ``daily`` and ``weekly`` an ``at`` (``"HH:MM"``) and, for ``weekly``, ``weekdays``
    (``["sat", "sun"]``) — or instead their stored ``expression`` (``"sat,sun 02:30"``);
    ``window_minutes`` (0 or more, default 0: no window); ``timezone`` (IANA, default UTC).
    A plain string is a cron expression. ``field`` is where the value sits in the request,
    so that errors name it ("policy.schedules[1].expression").

    Raises ConfigError naming every bad field.
    """
    if isinstance(data, str):
        data = {"kind": "cron", "expression": data}
    if not isinstance(data, Mapping):
        raise ConfigError("invalid schedule", {field: "expected an object"})
    problems: dict[str, str] = {}
    allowed = {"kind", "expression", "at", "weekdays", "window_minutes", "timezone"}
    for key in sorted(set(data) - allowed, key=str):
        problems[f"{field}.{key}"] = "unknown setting (expected one of: " \
            + ", ".join(sorted(allowed)) + ")"

    kind = data.get("kind")
    expression: str | None = None
    if kind not in KINDS:
        problems[f"{field}.kind"] = f"must be one of {', '.join(KINDS)} (got {kind!r})"
    elif kind == "cron":
        for key in ("at", "weekdays"):
            if key in data:
                problems[f"{field}.{key}"] = "only for daily and weekly schedules"
        expression = _check_cron(data.get("expression"), f"{field}.expression", problems)
    else:
        expression = _check_time_of_day(kind, data, field, problems)

    window = data.get("window_minutes", 0)
    if window is None:
        window = 0
    if isinstance(window, bool) or not isinstance(window, int):
        problems[f"{field}.window_minutes"] = f"must be a whole number of minutes (got {window!r})"
    elif window < 0:
        problems[f"{field}.window_minutes"] = "must be 0 or more (0: no window)"

    timezone = data.get("timezone") or "UTC"
    if not _valid_zone(timezone):
        problems[f"{field}.timezone"] = \
            f"{timezone!r} is not an IANA timezone name (such as 'Europe/Berlin' or 'UTC')"

    if problems:
        raise ConfigError("invalid schedule", problems)
    # Every check above passed: kind, expression and timezone are text, window an int.
    return Schedule(kind=str(kind), expression=str(expression), window_minutes=int(window),
                    timezone=str(timezone))


def stored_schedule(row: Any, *, field: str = "schedule") -> Schedule:
    """The schedule a database row (``kind``, ``expression``, ``window_minutes``,
    ``timezone``) holds; ConfigError if it cannot be read."""
    return parse_schedule({"kind": row.kind, "expression": row.expression,
                           "window_minutes": row.window_minutes, "timezone": row.timezone},
                          field=field)


def next_fire_after(schedule: Schedule, after: datetime) -> datetime:
    """The first time the schedule fires strictly after ``after``, in UTC.

    Raises ConfigError if the expression never fires again (cronsim looks 50 years ahead).
    """
    after = _utc(after, "after")
    for candidate in CronSim(schedule.cron, after.astimezone(schedule.zone)):
        fire = candidate.astimezone(UTC)
        # In the hour a fall-back repeats, cron may hand back the first pass of a time we are
        # already past in the second: compare real instants, not wall times.
        if fire > after:
            return fire
    raise ConfigError("invalid schedule", {
        "schedule.expression": f"{schedule.expression!r} never fires after {after:%Y-%m-%d}"})


def upcoming(schedule: Schedule, after: datetime, count: int = 5) -> list[datetime]:
    """The next ``count`` fire times after ``after``, in UTC (for the UI's preview)."""
    times: list[datetime] = []
    for _ in range(count):
        after = next_fire_after(schedule, after)
        times.append(after)
    return times


def due(schedule: Schedule, next_run_at: datetime | None,
        now: datetime) -> tuple[bool, datetime]:
    """Whether to run now, and the ``next_run_at`` to store; called on every scheduler tick.

    ``next_run_at`` None (a new schedule) does not run: it is given its first fire time.
    While ``next_run_at`` is in the future, nothing changes. Once it has passed, the schedule
    runs **once**, however many occurrences were missed (a server down for a week runs a
    daily schedule once, not seven times), provided the window of the latest missed
    occurrence is still open, or the schedule has no window; otherwise the run is skipped.
    The new ``next_run_at`` is the first fire time after ``now``, never a missed one.
    """
    now = _utc(now, "now")
    if next_run_at is None:
        return False, next_fire_after(schedule, now)
    next_run_at = _utc(next_run_at, "next_run_at")
    if next_run_at > now:
        return False, next_run_at
    window = schedule.window
    run = window is None or now < _latest_fire(schedule, next_run_at, now) + window
    return run, next_fire_after(schedule, now)


def _latest_fire(schedule: Schedule, since: datetime, now: datetime) -> datetime:
    """The latest fire time in [since, now]; ``since`` itself when none is later.

    Stepping forward from ``since`` could take millions of steps after a long outage of an
    every-minute schedule, so step back from ``now`` once, then forward the few steps that a
    repeated hour can hide.
    """
    latest = since
    try:
        back = next(CronSim(schedule.cron, (now + timedelta(seconds=1)).astimezone(schedule.zone),
                            reverse=True)).astimezone(UTC)
    except StopIteration:
        return latest
    if since < back <= now:
        latest = back
    for _ in range(100):
        later = next_fire_after(schedule, latest)
        if later > now:
            break
        latest = later
    return latest


def _utc(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (got {moment!r})")
    return moment.astimezone(UTC)


def _valid_zone(name: object) -> bool:
    if not isinstance(name, str) or not name:
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _check_cron(expression: object, where: str, problems: dict[str, str]) -> str | None:
    if not isinstance(expression, str) or not expression.strip():
        problems[where] = "a cron expression is required (such as '30 2 * * *')"
        return None
    expression = " ".join(expression.split())
    problem = _cron_problem(expression)
    if problem:
        problems[where] = f"{expression!r} is not a valid cron expression: {problem}"
        return None
    return expression


def _cron_problem(expression: str) -> str | None:
    """What is wrong with a cron expression, in the admin's terms; None if nothing."""
    cron = _MACROS.get(expression.lower(), expression)
    if cron.startswith("@"):
        return f"unknown macro (known: {', '.join(_MACROS)})"
    parts = cron.split()
    if len(parts) != 5:
        return f"needs 5 fields ({' '.join(_CRON_FIELDS)}), got {len(parts)}"
    try:
        it = CronSim(cron, _PROBE_FROM)
    except CronSimError as exc:
        return _explain(str(exc), parts)
    try:
        next(it)
    except StopIteration:
        return "it never fires"
    return None


def _explain(message: str, parts: list[str]) -> str:
    name = message.removeprefix("Bad ").strip()
    if name not in _CRON_FIELDS:
        return message
    part = parts[_CRON_FIELDS.index(name)]
    if re.search(r"/0*(,|$)", part):
        return f"{name} step must be 1 or more (got {part!r})"
    if name == "day-of-month":
        try:
            CronSim(f"0 0 {part} * *", _PROBE_FROM)
        except CronSimError:
            pass
        else:
            return f"day-of-month {part!r} never occurs in month {parts[3]!r}"
    return f"{name} must be {_CRON_RANGES[name]} (got {part!r})"


def _check_time_of_day(kind: str, data: Mapping[str, Any], field: str,
                       problems: dict[str, str]) -> str | None:
    """The stored expression of a daily/weekly schedule ("sat,sun 02:30"), or None."""
    if "expression" in data:
        if "at" in data or "weekdays" in data:
            problems[f"{field}.expression"] = "give either expression or at/weekdays, not both"
            return None
        stored = data["expression"]
        if not isinstance(stored, str):
            problems[f"{field}.expression"] = f"must be text (got {stored!r})"
            return None
        words = stored.split()
        want = 2 if kind == "weekly" else 1
        if len(words) != want:
            example = "'sat,sun 02:30'" if kind == "weekly" else "'02:30'"
            problems[f"{field}.expression"] = f"must look like {example} (got {stored!r})"
            return None
        at_value: object = words[-1]
        days_value: object = words[0].split(",") if kind == "weekly" else None
        at_where = days_where = f"{field}.expression"
    else:
        at_value, days_value = data.get("at"), data.get("weekdays")
        at_where, days_where = f"{field}.at", f"{field}.weekdays"
        if kind == "daily" and "weekdays" in data:
            problems[days_where] = "only for weekly schedules (use kind 'weekly')"
            return None
    at = _check_at(at_value, at_where, problems)
    if kind == "daily":
        return at
    days = _check_weekdays(days_value, days_where, problems)
    if at is None or days is None:
        return None
    return f"{','.join(days)} {at}"


def _check_at(value: object, where: str, problems: dict[str, str]) -> str | None:
    match = _AT.fullmatch(value) if isinstance(value, str) else None
    if match is None or int(match[1]) > 23 or int(match[2]) > 59:
        problems[where] = f"must be a time of day HH:MM from 00:00 to 23:59 (got {value!r})"
        return None
    return f"{int(match[1]):02d}:{match[2]}"


def _check_weekdays(value: object, where: str,
                    problems: dict[str, str]) -> tuple[str, ...] | None:
    if isinstance(value, str) or not isinstance(value, list | tuple) or not value:
        problems[where] = "must be a list of one or more days, such as ['sat', 'sun']"
        return None
    days: set[str] = set()
    for day in value:
        name = _DAY_NAMES.get(day.strip().lower()) if isinstance(day, str) else None
        if name is None:
            problems[where] = f"{day!r} is not a day of the week ({', '.join(WEEKDAYS)})"
            return None
        days.add(name)
    return tuple(d for d in WEEKDAYS if d in days)


def _split_stored(kind: str, expression: str) -> tuple[tuple[str, ...], str]:
    """(weekdays, "HH:MM") of a stored daily/weekly expression."""
    if kind == "daily":
        return WEEKDAYS, expression
    days, at = expression.split()
    return tuple(days.split(",")), at


def _to_cron(kind: str, expression: str) -> str:
    if kind == "cron":
        return _MACROS.get(expression.lower(), expression)
    days, at = _split_stored(kind, expression)
    hour, minute = at.split(":")
    # cron counts weekdays from Sunday = 0
    dow = "*" if kind == "daily" else ",".join(str((WEEKDAYS.index(d) + 1) % 7) for d in days)
    return f"{int(minute)} {int(hour)} * * {dow}"
