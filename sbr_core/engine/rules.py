"""Which instances a policy protects by rule (beside those assigned to it explicitly).

A policy's rules are a list; each rule has one or more conditions:

- ``name``: a regular expression searched in the instance's name (``re.search``: ``web-``
  matches ``prod-web-1``; anchor with ``^…$`` for the whole name; case-sensitive unless the
  pattern says ``(?i)``);
- ``tag``: a tag the instance carries, compared exactly;
- ``location``: a placement path prefix, by whole segments: ``dc1/cluster-a`` matches
  ``dc1/cluster-a`` and ``dc1/cluster-a/esx3``, not ``dc1/cluster-ab``;
- ``provider``: the name of the provider connection the instance was found through.

Within one rule every condition given must hold (AND); an instance matches the policy when
any rule matches (OR). No rules match nothing: the policy has only its explicit members.
A rule without conditions is refused rather than read as "everything"; an admin who wants
every instance of a connection says ``{"provider": "vcenter1"}``.

The engine re-evaluates the rules against the inventory each time it is refreshed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from sbr_core.errors import ConfigError

CONDITIONS = ("name", "tag", "location", "provider")


@attrs.frozen
class InstanceView:
    """What the rules look at in an instance."""

    name: str
    tags: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    location: str = ""
    provider: str = ""


@attrs.frozen
class MembershipRule:
    """One rule: the conditions it was given (None: not a condition); see the module doc."""

    name: str | None = None
    tag: str | None = None
    location: str | None = None
    provider: str | None = None
    _pattern: re.Pattern[str] | None = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        pattern = re.compile(self.name) if self.name is not None else None
        object.__setattr__(self, "_pattern", pattern)

    def matches(self, instance: InstanceView) -> bool:
        """Whether every condition of this rule holds for ``instance``."""
        if self._pattern is not None and not self._pattern.search(instance.name):
            return False
        if self.tag is not None and self.tag not in instance.tags:
            return False
        if self.location is not None and not _under(instance.location, self.location):
            return False
        return self.provider is None or self.provider == instance.provider

    def to_dict(self) -> dict[str, str]:
        """The conditions given, as :func:`parse_rules` reads them."""
        return {key: getattr(self, key) for key in CONDITIONS if getattr(self, key) is not None}


def parse_rules(data: Sequence[Mapping[str, Any]] | None, *,
                field: str = "rules") -> tuple[MembershipRule, ...]:
    """Validate a policy's rules given as a list of dicts (``[{"tag": "gold"}, …]``).

    ``field`` is where the list sits in the request, so that errors name the entry
    ("rules[1].name: 'web-(' is not a valid regular expression: …").
    Raises ConfigError naming every bad field.
    """
    if data is None:
        return ()
    if isinstance(data, str | bytes | Mapping) or not isinstance(data, Sequence):
        raise ConfigError("invalid rules", {field: "expected a list of rules"})
    problems: dict[str, str] = {}
    rules: list[MembershipRule] = []
    for index, entry in enumerate(data):
        where = f"{field}[{index}]"
        rule = _parse_rule(entry, where, problems)
        if rule is not None:
            rules.append(rule)
    if problems:
        raise ConfigError("invalid rules", problems)
    return tuple(rules)


def matches(rules: Iterable[MembershipRule], instance: InstanceView) -> bool:
    """Whether any rule matches ``instance`` (False for no rules)."""
    return any(rule.matches(instance) for rule in rules)


def _parse_rule(entry: object, where: str, problems: dict[str, str]) -> MembershipRule | None:
    if not isinstance(entry, Mapping):
        problems[where] = "expected an object with one or more of: " + ", ".join(CONDITIONS)
        return None
    bad = False
    for key in entry:
        if key not in CONDITIONS:
            problems[f"{where}.{key}"] = \
                f"unknown condition (expected one of: {', '.join(CONDITIONS)})"
            bad = True
    values: dict[str, str] = {}
    for key in CONDITIONS:
        value = entry.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            problems[f"{where}.{key}"] = f"must be non-empty text (got {value!r})"
            bad = True
            continue
        values[key] = value
    if "name" in values:
        try:
            re.compile(values["name"])
        except re.error as exc:
            problems[f"{where}.name"] = \
                f"{values['name']!r} is not a valid regular expression: {exc}"
            bad = True
    if "location" in values:
        values["location"] = values["location"].strip().strip("/")
        if not values["location"]:
            problems[f"{where}.location"] = "must name a path, such as 'dc1/cluster-a'"
            bad = True
    if not values and not bad:
        problems[where] = "give at least one condition: " + ", ".join(CONDITIONS)
        return None
    return None if bad else MembershipRule(**values)


def _under(location: str, prefix: str) -> bool:
    prefix = prefix.strip("/")
    location = location.strip("/")
    return location == prefix or location.startswith(prefix + "/")
