"""Which backups retention rules keep: ``sbr repo forget --keep-*`` and policy retention.

One series of backups (one name in a repository, one instance in the catalog) is judged on
its own, newest first, as restic's ``forget`` counts:

- ``last``: the N newest backups;
- ``within_days``: every backup newer than ``now`` minus N days;
- ``daily``, ``weekly`` (ISO weeks), ``monthly``, ``yearly``: the newest backup of each of
  the N newest periods *that have a backup* (a week without backups does not use up one of
  the N weeks).

A backup is kept if any rule keeps it. A rule that is unset or 0 keeps nothing by itself;
**no rule at all keeps everything**: an empty or all-zero retention never deletes. The
newest backup of a series is always kept, so that a ``within_days``-only policy cannot
delete the last backup of an instance whose backups have been failing for N days.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import attrs

from sbr_core.errors import ConfigError
from sbr_core.repository.manifest import Manifest

RULES = ("last", "within_days", "daily", "weekly", "monthly", "yearly")
_PERIODS: tuple[tuple[str, Callable[[datetime], object]], ...] = (
    ("daily", lambda t: t.date()),
    ("weekly", lambda t: t.isocalendar()[:2]),
    ("monthly", lambda t: (t.year, t.month)),
    ("yearly", lambda t: t.year),
)


@attrs.frozen
class RetentionRules:
    """How many backups to keep, per rule; None (or 0): the rule is off.

    Raises ConfigError, naming the field, for a value that is not a whole number ≥ 0.
    """

    last: int | None = None
    daily: int | None = None
    weekly: int | None = None
    monthly: int | None = None
    yearly: int | None = None
    within_days: int | None = None

    def __attrs_post_init__(self) -> None:
        problems = _problems({rule: getattr(self, rule) for rule in RULES}, "retention")
        if problems:
            raise ConfigError("invalid retention", problems)

    def any(self) -> bool:
        """Whether some rule is on; with none, everything is kept."""
        return any(getattr(self, rule) for rule in RULES)

    def to_dict(self) -> dict[str, int]:
        """The rules that are set, as :func:`parse_retention` reads them."""
        return {rule: getattr(self, rule) for rule in RULES if getattr(self, rule) is not None}


def parse_retention(data: Mapping[str, Any] | None, *,
                    field: str = "retention") -> RetentionRules:
    """Validate retention given as a dict (``{"last": 3, "daily": 7, "within_days": 10}``).

    Missing keys and None are rules that are off. ``field`` is where the value sits in the
    request, so that errors name it ("retention.daily: must be 0 or more").
    Raises ConfigError naming every bad field.
    """
    if data is None:
        return RetentionRules()
    if not isinstance(data, Mapping):
        raise ConfigError("invalid retention", {field: "expected an object"})
    problems = {f"{field}.{key}": f"unknown rule (expected one of: {', '.join(RULES)})"
                for key in data if key not in RULES}
    problems.update(_problems({rule: data.get(rule) for rule in RULES}, field))
    if problems:
        raise ConfigError("invalid retention", problems)
    return RetentionRules(**{rule: data.get(rule) for rule in RULES})


def explain_retention(backups: Iterable[tuple[str, datetime]], rules: RetentionRules, *,
                      now: datetime, tz: tzinfo | None = None) -> dict[str, tuple[str, ...]]:
    """Why each backup of one series is kept: id → the rules that keep it, () if none.

    ``backups`` are (id, created) pairs with timezone-aware times. Days, weeks, months and
    years are counted in ``tz`` (by default in each time's own timezone), so a policy can
    count them in its schedule's timezone.
    """
    def local(when: datetime) -> datetime:
        if when.utcoffset() is None:
            raise ValueError(f"backup times must be timezone-aware (got {when!r})")
        return when.astimezone(tz) if tz is not None else when

    series = sorted(((local(when), backup_id) for backup_id, when in backups),
                    key=lambda pair: (pair[0].astimezone(UTC), pair[1]), reverse=True)
    reasons: dict[str, list[str]] = {backup_id: [] for _, backup_id in series}
    if not series:
        return {}
    if not rules.any():
        return {backup_id: ("no rules",) for backup_id in reasons}
    reasons[series[0][1]].append("newest")
    for _, backup_id in series[: rules.last or 0]:
        reasons[backup_id].append("last")
    if rules.within_days:
        if now.utcoffset() is None:
            raise ValueError(f"now must be timezone-aware (got {now!r})")
        # In UTC: times that share a tzinfo would otherwise compare as wall-clock times.
        cutoff = now.astimezone(UTC) - timedelta(days=rules.within_days)
        for when, backup_id in series:
            if when.astimezone(UTC) > cutoff:
                reasons[backup_id].append("within_days")
    for rule, period_of in _PERIODS:
        count: int = getattr(rules, rule) or 0
        seen: set[object] = set()
        for when, backup_id in series:  # newest first: the newest of each period is kept
            period = period_of(when)
            if period in seen:
                continue
            if len(seen) == count:
                break
            seen.add(period)
            reasons[backup_id].append(rule)
    return {backup_id: tuple(why) for backup_id, why in reasons.items()}


def select_kept(backups: Iterable[tuple[str, datetime]], rules: RetentionRules, *,
                now: datetime, tz: tzinfo | None = None) -> set[str]:
    """The ids of one series that some rule keeps (see :func:`explain_retention`)."""
    return {backup_id for backup_id, why in
            explain_retention(backups, rules, now=now, tz=tz).items() if why}


def select_forgettable(manifests: Iterable[Manifest], rules: RetentionRules, *,
                       now: datetime | None = None) -> list[Manifest]:
    """The backups no rule keeps. Each name is judged on its own backups, in UTC.

    ``now`` (default: the current time) matters only for ``within_days``.
    """
    now = now or datetime.now(UTC)
    by_name: dict[str, list[Manifest]] = defaultdict(list)
    for manifest in manifests:
        by_name[manifest.name].append(manifest)
    forgettable: list[Manifest] = []
    for backups in by_name.values():
        kept = select_kept(((m.id, _when(m)) for m in backups), rules, now=now)
        backups.sort(key=lambda m: (_when(m), m.id), reverse=True)
        forgettable.extend(m for m in backups if m.id not in kept)
    return forgettable


def _when(manifest: Manifest) -> datetime:
    when = datetime.fromisoformat(manifest.created.replace("Z", "+00:00"))
    return when if when.utcoffset() is not None else when.replace(tzinfo=UTC)


def _problems(values: Mapping[str, object], field: str) -> dict[str, str]:
    problems: dict[str, str] = {}
    for rule, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            problems[f"{field}.{rule}"] = f"must be a whole number (got {value!r})"
        elif value < 0:
            problems[f"{field}.{rule}"] = f"must be 0 or more (got {value})"
    return problems
