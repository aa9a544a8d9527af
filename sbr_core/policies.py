"""Policies as the admin writes them: validated in one place, stored in one transaction.

A policy document (the REST API's JSON, what ``sbr policy add`` sends) is::

    {"name": "gold", "kind": "backup" | "snapshot",
     "destination": "disk1",                 # backup policies only, required there
     "instances": [12, "web-1"],             # explicit members: ids, or unique names
     "rules": [{"name": "^web", "tag": "prod"}],
     "schedules": [{"kind": "daily", "at": "02:30", "window_minutes": 120}],
     "retention": {"last": 7, "daily": 14},  # snapshot policies: {"keep_snapshots": N}
     "options": {"quiesce": true},           # see OPTIONS
     "priority": 50, "enabled": true}

:func:`parse_policy` checks all of it and raises one ConfigError naming every bad field
(``destination: no destination named 'x'``, ``schedules[0].expression: …``,
``retention.last: must be 0 or more``); :func:`save_policy` writes the policy row, its
schedules and its explicit members together, so a reader never sees half a policy.
Members matched by rules are the scheduler's business
(:func:`sbr_core.engine.scheduler.refresh_membership`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import peewee as pw

from sbr_core.db.schema import (
    Backup,
    Destination,
    Instance,
    Policy,
    PolicyInstance,
    ProviderConnection,
    Schedule,
    Workflow,
    utcnow,
)
from sbr_core.engine.rules import MembershipRule, parse_rules
from sbr_core.engine.scheduler import refresh_membership
from sbr_core.engine.schedules import Schedule as ScheduleSpec
from sbr_core.engine.schedules import parse_schedule, stored_schedule
from sbr_core.errors import ConfigError, ConflictError, NotFoundError
from sbr_core.repository.retention import parse_retention

KINDS = ("backup", "snapshot")
FIELDS = ("name", "kind", "destination", "instances", "rules", "schedules", "retention",
          "options", "priority", "enabled")
#: The options each kind of policy takes (name -> allowed values), passed to its workflows
#: as ``params["options"]``. Their defaults live where they are used: the export's
#: ``ExportRequest.quiesce`` (true) and the snapshot step (internal, no memory, quiesce).
OPTIONS: dict[str, dict[str, tuple[Any, ...]]] = {
    "backup": {"quiesce": (True, False)},
    "snapshot": {"kind": ("internal", "external"), "memory": (True, False),
                 "quiesce": (True, False)},
}
DEFAULT_PRIORITY = 50
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
EXPLICIT = "explicit"


@attrs.frozen
class PolicySpec:
    """A validated policy document, ready to store."""

    name: str
    kind: str
    destination_id: int | None
    instance_ids: tuple[int, ...]
    rules: tuple[MembershipRule, ...]
    schedules: tuple[ScheduleSpec, ...]
    retention: Mapping[str, int]
    options: Mapping[str, Any]
    priority: int
    enabled: bool


# --- reading ------------------------------------------------------------------------------


def get_policy(name: str) -> Policy:
    """The policy named ``name``; NotFoundError otherwise."""
    row: Policy | None = Policy.get_or_none(Policy.name == name)
    if row is None:
        raise NotFoundError(f"policy: no policy named {name!r}")
    return row


def explicit_member_ids(policy: Policy) -> list[int]:
    """Ids of the instances the admin put into ``policy`` by hand."""
    return [row.instance_id for row in
            PolicyInstance.select(PolicyInstance.instance)
            .where((PolicyInstance.policy == policy.id)
                   & (PolicyInstance.source == EXPLICIT))
            .order_by(PolicyInstance.instance)]


def describe_policy(policy: Policy) -> dict[str, Any]:
    """The policy as the API shows it: the document :func:`parse_policy` reads, plus ids,
    times, the schedules' next runs and the members (explicit and by rule)."""
    members = (PolicyInstance.select(PolicyInstance, Instance, ProviderConnection)
               .join(Instance).join(ProviderConnection)
               .where(PolicyInstance.policy == policy.id).order_by(Instance.name, Instance.id))
    explicit: list[dict[str, Any]] = []
    by_rule: list[dict[str, Any]] = []
    for row in members:
        entry = {"id": row.instance.id, "name": row.instance.name,
                 "provider": row.instance.connection.name, "present": row.instance.present}
        (explicit if row.source == EXPLICIT else by_rule).append(entry)
    schedules = []
    for stored in Schedule.select().where(Schedule.policy == policy.id).order_by(Schedule.id):
        shown = _schedule_json(stored)
        shown.update(id=stored.id, enabled=stored.enabled, next_run_at=_iso(stored.next_run_at),
                     last_run_at=_iso(stored.last_run_at))
        schedules.append(shown)
    destination = (Destination.get_by_id(policy.destination_id).name
                   if policy.destination_id is not None else None)
    return {"id": policy.id, "name": policy.name, "kind": policy.kind,
            "destination": destination, "instances": [e["id"] for e in explicit],
            "rules": list(policy.rules or []), "schedules": schedules,
            "retention": dict(policy.retention or {}),
            "options": dict(policy.options or {}), "priority": policy.priority,
            "enabled": policy.enabled, "members": {"explicit": explicit, "rules": by_rule},
            "created_at": _iso(policy.created_at), "updated_at": _iso(policy.updated_at)}


def policy_document(policy: Policy) -> dict[str, Any]:
    """The stored policy as a document :func:`parse_policy` accepts (for updates)."""
    shown = describe_policy(policy)
    document = {key: shown[key] for key in FIELDS}
    document["schedules"] = [_schedule_json(row) for row in
                             Schedule.select().where(Schedule.policy == policy.id)
                             .order_by(Schedule.id)]
    return document


# --- validating ---------------------------------------------------------------------------


def parse_policy(data: Mapping[str, Any], *, subject: str = "invalid policy") -> PolicySpec:
    """Check a whole policy document; ConfigError names every bad field."""
    if not isinstance(data, Mapping):
        raise ConfigError(subject, {"(policy)": "expected an object"})
    problems: dict[str, str] = {}
    for key in sorted(set(data) - set(FIELDS), key=str):
        problems[str(key)] = f"unknown field (expected one of: {', '.join(FIELDS)})"

    name = data.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        problems["name"] = (f"{name!r} is invalid: use letters, digits and ._- "
                            "(up to 100 characters)")
    kind = data.get("kind", "backup")
    if kind not in KINDS:
        problems["kind"] = f"must be one of {', '.join(KINDS)} (got {kind!r})"

    destination_id = _destination(data.get("destination"), kind, problems)
    instance_ids = _instances(data.get("instances"), problems)
    rules = _collect(problems, lambda: parse_rules(data.get("rules") or [], field="rules"),
                     ())
    schedules = _schedules(data.get("schedules"), problems)
    retention = _retention(data.get("retention"), kind, problems)
    options = _options(data.get("options"), kind, problems)

    priority = data.get("priority", DEFAULT_PRIORITY)
    if isinstance(priority, bool) or not isinstance(priority, int) \
            or not 0 <= priority <= 100:
        problems["priority"] = f"must be a whole number from 0 to 100 (got {priority!r})"
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        problems["enabled"] = f"must be true or false (got {enabled!r})"

    if problems:
        raise ConfigError(subject, problems)
    return PolicySpec(name=str(name), kind=str(kind), destination_id=destination_id,
                      instance_ids=instance_ids, rules=rules, schedules=schedules,
                      retention=retention, options=options, priority=int(priority),
                      enabled=bool(enabled))


def _collect(problems: dict[str, str], parse: Any, fallback: Any) -> Any:
    """Run a parser that raises ConfigError; its problems join ``problems``."""
    try:
        return parse()
    except ConfigError as exc:
        problems.update(exc.problems)
        return fallback


def _destination(value: object, kind: object, problems: dict[str, str]) -> int | None:
    if kind == "snapshot":
        if value not in (None, ""):
            problems["destination"] = "snapshot policies keep snapshots on the platform; " \
                                      "they have no destination"
        return None
    if value in (None, ""):
        problems["destination"] = "required for backup policies (the name of a destination)"
        return None
    if not isinstance(value, str):
        problems["destination"] = f"must be the name of a destination (got {value!r})"
        return None
    row = Destination.get_or_none(Destination.name == value)
    if row is None:
        problems["destination"] = f"no destination named {value!r}"
        return None
    return int(row.id)


def _instances(value: object, problems: dict[str, str]) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, list | tuple):
        problems["instances"] = "expected a list of instance ids or names"
        return ()
    found: list[int] = []
    for index, ref in enumerate(value):
        where = f"instances[{index}]"
        if isinstance(ref, bool) or not isinstance(ref, int | str) or ref == "":
            problems[where] = f"must be an instance id or name (got {ref!r})"
        elif isinstance(ref, int):
            if Instance.get_or_none(Instance.id == ref) is None:
                problems[where] = f"no instance with id {ref}"
            else:
                found.append(ref)
        else:
            ids = [row.id for row in Instance.select(Instance.id).where(Instance.name == ref)
                   .order_by(Instance.id)]
            if not ids:
                problems[where] = f"no instance named {ref!r}"
            elif len(ids) > 1:
                problems[where] = (f"{ref!r} names {len(ids)} instances (ids "
                                   f"{', '.join(map(str, ids))}); give the id")
            else:
                found.append(ids[0])
    return tuple(dict.fromkeys(found))


def _schedules(value: object, problems: dict[str, str]) -> tuple[ScheduleSpec, ...]:
    if value is None:
        return ()
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, list | tuple):
        problems["schedules"] = "expected a list of schedules"
        return ()
    parsed = []
    for index, entry in enumerate(value):
        spec = _collect(problems, lambda e=entry, i=index: parse_schedule(
            e, field=f"schedules[{i}]"), None)
        if spec is not None:
            parsed.append(spec)
    return tuple(parsed)


def _retention(value: object, kind: object, problems: dict[str, str]) -> dict[str, int]:
    if kind == "snapshot":
        if not isinstance(value, Mapping):
            problems["retention"] = 'snapshot policies need {"keep_snapshots": N}'
            return {}
        for key in value:
            if key != "keep_snapshots":
                problems[f"retention.{key}"] = "snapshot policies take only keep_snapshots"
        keep = value.get("keep_snapshots")
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            problems["retention.keep_snapshots"] = \
                f"must be a whole number, 1 or more (got {keep!r})"
            return {}
        return {"keep_snapshots": keep}
    if value is not None and not isinstance(value, Mapping):
        problems["retention"] = "expected an object such as {\"last\": 7, \"daily\": 14}"
        return {}
    rules = _collect(problems, lambda: parse_retention(value or None, field="retention"),
                     None)
    return rules.to_dict() if rules is not None else {}


def _options(value: object, kind: object, problems: dict[str, str]) -> dict[str, Any]:
    """The options given, checked against :data:`OPTIONS` (defaults are not stored, so a
    later default applies to policies that never chose)."""
    if value is None:
        return {}
    allowed = OPTIONS.get(str(kind), {})
    if not isinstance(value, Mapping):
        problems["options"] = "expected an object such as {\"quiesce\": true}"
        return {}
    chosen: dict[str, Any] = {}
    for key, given in value.items():
        if key not in allowed:
            problems[f"options.{key}"] = (f"{kind} policies take only "
                                          f"{', '.join(allowed) or 'no options'}")
            continue
        values = allowed[key]
        if isinstance(given, bool) is not isinstance(values[0], bool) or given not in values:
            shown = ", ".join(json.dumps(v) if isinstance(v, bool) else str(v) for v in values)
            problems[f"options.{key}"] = f"must be one of {shown} (got {given!r})"
            continue
        chosen[str(key)] = given
    return chosen


# --- writing ------------------------------------------------------------------------------


def save_policy(db: pw.Database, spec: PolicySpec, *, existing: Policy | None = None
                ) -> Policy:
    """Create a policy, or replace ``existing`` with ``spec``, with its schedules and
    explicit members, in one transaction. ConflictError when the name is taken."""
    now = utcnow()
    fields = {"name": spec.name, "kind": spec.kind, "destination": spec.destination_id,
              "rules": [rule.to_dict() for rule in spec.rules],
              "retention": dict(spec.retention), "options": dict(spec.options),
              "priority": spec.priority, "enabled": spec.enabled, "updated_at": now}
    clash = Policy.get_or_none(Policy.name == spec.name)
    if clash is not None and (existing is None or clash.id != existing.id):
        raise ConflictError(f"name: a policy named {spec.name!r} already exists")
    try:
        with db.atomic():
            if existing is None:
                policy = Policy.create(created_at=now, **fields)
            else:
                Policy.update(**fields).where(Policy.id == existing.id).execute()
                policy = Policy.get_by_id(existing.id)
            _set_schedules(policy, spec.schedules)
            set_explicit_members(policy, spec.instance_ids)
            refresh_membership(db, [policy])  # its rule members, at once
    except pw.IntegrityError:
        raise ConflictError(f"name: a policy named {spec.name!r} already exists") from None
    stored: Policy = Policy.get_by_id(policy.id)  # as the database keeps it (its precision)
    return stored


def set_explicit_members(policy: Policy, instance_ids: Iterable[int]) -> None:
    """Make ``instance_ids`` the explicit members of ``policy``. An instance that was a
    member by rule becomes explicit; one no longer explicit leaves (the next rule refresh
    brings it back if a rule matches it)."""
    wanted = list(dict.fromkeys(instance_ids))
    current = {row.instance_id: row.source for row in
               PolicyInstance.select(PolicyInstance.instance, PolicyInstance.source)
               .where(PolicyInstance.policy == policy.id)}
    dropped = [i for i, source in current.items() if source == EXPLICIT and i not in wanted]
    if dropped:
        PolicyInstance.delete().where((PolicyInstance.policy == policy.id)
                                      & PolicyInstance.instance.in_(dropped)).execute()
    promoted = [i for i in wanted if current.get(i, EXPLICIT) != EXPLICIT]
    if promoted:
        PolicyInstance.update(source=EXPLICIT).where(
            (PolicyInstance.policy == policy.id)
            & PolicyInstance.instance.in_(promoted)).execute()
    new = [i for i in wanted if i not in current]
    if new:
        PolicyInstance.insert_many(
            [{"policy": policy.id, "instance": i, "source": EXPLICIT} for i in new]).execute()


def _set_schedules(policy: Policy, wanted: Iterable[ScheduleSpec]) -> None:
    """Store ``wanted`` as the policy's schedules; a schedule that stays as it was keeps
    its row, and so its next and last run times."""
    remaining = list(wanted)
    for row in Schedule.select().where(Schedule.policy == policy.id).order_by(Schedule.id):
        spec = _schedule_spec(row)
        if spec is not None and spec in remaining:
            remaining.remove(spec)
        else:
            row.delete_instance()
    for spec in remaining:
        Schedule.create(policy=policy, kind=spec.kind, expression=spec.expression,
                        window_minutes=spec.window_minutes, timezone=spec.timezone)


def delete_policy(db: pw.Database, policy: Policy) -> dict[str, int]:
    """Remove a policy with its schedules and members. Its backups stay (no longer tied to
    it); refused while one of its workflows is pending or running."""
    from sbr_core.engine.workflows import ACTIVE_STATES

    with db.atomic():
        active = (Workflow.select().where((Workflow.policy == policy.id)
                                          & Workflow.state.in_(ACTIVE_STATES)).count())
        if active:
            raise ConflictError(f"policy {policy.name!r} has {active} workflow(s) pending or "
                                "running; cancel them or wait, then remove it")
        backups = Backup.update(policy=None).where(Backup.policy == policy.id).execute()
        Workflow.update(policy=None).where(Workflow.policy == policy.id).execute()
        Schedule.delete().where(Schedule.policy == policy.id).execute()
        members = PolicyInstance.delete().where(PolicyInstance.policy == policy.id).execute()
        policy.delete_instance()
    return {"backups_kept": backups, "members": members}


def _schedule_spec(row: Schedule) -> ScheduleSpec | None:
    """The stored schedule as a value; None for one that cannot be read (the scheduler
    disables such a schedule)."""
    try:
        return stored_schedule(row, field=f"schedule {row.id}")
    except ConfigError:
        return None


def _schedule_json(row: Schedule) -> dict[str, Any]:
    spec = _schedule_spec(row)
    shown: dict[str, Any] = spec.to_dict() if spec is not None else {
        "kind": row.kind, "expression": row.expression,
        "window_minutes": row.window_minutes, "timezone": row.timezone,
        "error": "this schedule cannot be read; replace it"}
    return shown


def _iso(moment: Any) -> str | None:
    return moment.isoformat() + "Z" if moment is not None else None
