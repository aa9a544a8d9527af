"""Policy membership rules: AND within a rule, OR across rules, errors that name the field."""

from __future__ import annotations

import pytest

from sbr_core.engine.rules import InstanceView, MembershipRule, matches, parse_rules
from sbr_core.errors import ConfigError

WEB1 = InstanceView(name="prod-web-1", tags=("gold", "linux"), location="dc1/cluster-a/esx3",
                    provider="vcenter1")
DB1 = InstanceView(name="prod-db-1", tags=("silver",), location="dc1/cluster-ab/esx1",
                   provider="vcenter1")
LAB = InstanceView(name="web-test", tags=(), location="lab/host1", provider="kvm-lab")


def test_conditions_of_one_rule_must_all_hold() -> None:
    rules = parse_rules([{"name": "web", "tag": "gold", "provider": "vcenter1"}])
    assert matches(rules, WEB1)
    assert not matches(rules, LAB)  # name matches, tag and provider do not
    assert not matches(rules, DB1)


def test_an_instance_matching_any_rule_belongs_to_the_policy() -> None:
    rules = parse_rules([{"tag": "silver"}, {"provider": "kvm-lab"}])
    assert [matches(rules, i) for i in (WEB1, DB1, LAB)] == [False, True, True]


def test_no_rules_match_nothing() -> None:
    assert not matches(parse_rules([]), WEB1)
    assert not matches(parse_rules(None), WEB1)


def test_the_name_is_searched_with_the_regular_expression() -> None:
    assert matches(parse_rules([{"name": "web-\\d+$"}]), WEB1)
    assert not matches(parse_rules([{"name": "^web"}]), WEB1)
    assert matches(parse_rules([{"name": "^web"}]), LAB)
    assert not matches(parse_rules([{"name": "PROD"}]), WEB1)
    assert matches(parse_rules([{"name": "(?i)PROD"}]), WEB1)


def test_location_is_a_prefix_of_whole_path_segments() -> None:
    rules = parse_rules([{"location": "dc1/cluster-a/"}])
    assert matches(rules, WEB1)
    assert not matches(rules, DB1)  # dc1/cluster-ab is another cluster
    assert matches(rules, InstanceView(name="x", location="dc1/cluster-a"))
    assert matches(parse_rules([{"location": "dc1"}]), DB1)


def test_tags_compare_exactly() -> None:
    assert not matches(parse_rules([{"tag": "Gold"}]), WEB1)
    assert not matches(parse_rules([{"tag": "gol"}]), WEB1)


def test_bad_rules_are_refused_naming_each_field() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_rules([{"tag": "gold"}, {"name": "web-("}, {}, {"cluster": "a"}, {"tag": 3},
                     "gold", {"location": "/"}], field="policy.rules")
    problems = caught.value.problems
    assert set(problems) == {"policy.rules[1].name", "policy.rules[2]",
                             "policy.rules[3].cluster", "policy.rules[4].tag",
                             "policy.rules[5]", "policy.rules[6].location"}
    assert problems["policy.rules[1].name"].startswith(
        "'web-(' is not a valid regular expression: missing )")
    assert "give at least one condition" in problems["policy.rules[2]"]
    with pytest.raises(ConfigError, match="expected a list"):
        parse_rules({"tag": "gold"})  # type: ignore[arg-type]


def test_rules_round_trip_through_their_dicts() -> None:
    data = [{"name": "^prod-", "location": "dc1"}, {"tag": "gold", "provider": "vcenter1"}]
    rules = parse_rules(data)
    assert [rule.to_dict() for rule in rules] == data
    assert parse_rules([rule.to_dict() for rule in rules]) == rules
    assert rules[1] == MembershipRule(tag="gold", provider="vcenter1")
