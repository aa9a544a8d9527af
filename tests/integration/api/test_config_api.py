"""The configuration API over real HTTP: destinations, providers, inventory, instances and
policies; every refusal names its field and leaves nothing half-written; secrets never
come back; every change is audited."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from sbr_core.db.schema import (
    AuditLog,
    Backup,
    Destination,
    Instance,
    Policy,
    PolicyInstance,
    ProviderConnection,
    Schedule,
)
from tests.api_server import ApiServer

SECRET = "wJalrXUtnFEMI-K7MDENG-very-secret"  # a made-up key to look for


def _ok(result: tuple[int, Any], status: int = 200) -> Any:
    assert result[0] == status, result
    return result[1]


def _refused(result: tuple[int, Any], status: int, *fragments: str) -> str:
    assert result[0] == status, result
    message = result[1]["error"]
    for fragment in fragments:
        assert fragment in message, message
    return str(message)


def _audit(action: str) -> list[AuditLog]:
    return list(AuditLog.select().where(AuditLog.action == action).order_by(AuditLog.id))


@pytest.fixture
def share(tmp_path: Path) -> Path:
    """A file share with two top-level directories."""
    root = tmp_path / "share"
    for name in ("alpha", "beta"):
        (root / name).mkdir(parents=True)
        (root / name / "file.txt").write_text(name)
    return root


def _destination(api: ApiServer, tmp_path: Path, name: str = "disk1") -> dict[str, Any]:
    return _ok(api.call("POST", "/destinations", {
        "name": name, "plugin": "filesystem", "settings": {"path": str(tmp_path / name)}},
        user="admin"), 201)


def _provider(api: ApiServer, share: Path, name: str = "nas1") -> dict[str, Any]:
    return _ok(api.call("POST", "/providers", {
        "name": name, "plugin": "fileshare",
        "settings": {"path": str(share), "instances": "subdirectories"}}, user="admin"), 201)


# --- destinations -------------------------------------------------------------------------


def test_destination_round_trip_with_audit(api_server: ApiServer, tmp_path: Path) -> None:
    added = _destination(api_server, tmp_path)
    assert added["name"] == "disk1" and added["plugin"] == "filesystem"
    assert added["settings"]["path"] == str(tmp_path / "disk1")
    listed = _ok(api_server.call("GET", "/destinations", user="viewer"))
    assert [d["name"] for d in listed] == ["disk1"]
    shown = _ok(api_server.call("GET", "/destinations/disk1", user="viewer"))
    assert shown["policies"] == [] and shown["backups"] == 0

    updated = _ok(api_server.call("PUT", "/destinations/disk1",
                                  {"settings": {"fsync": "false"}}, user="admin"))
    assert updated["settings"]["fsync"] is False
    assert updated["settings"]["path"] == str(tmp_path / "disk1"), "PUT lost a setting"
    _refused(api_server.call("PUT", "/destinations/disk1", {"plugin": "s3"}, user="admin"),
             400, "plugin: cannot be changed")

    assert _ok(api_server.call("DELETE", "/destinations/disk1", user="admin")) == \
        {"removed": "disk1"}
    _refused(api_server.call("GET", "/destinations/disk1", user="admin"), 404,
             "no destination named 'disk1'")
    actions = [(r.action, r.username, r.target) for r in AuditLog.select()
               .where(AuditLog.action.startswith("destination.")).order_by(AuditLog.id)]
    assert actions == [("destination.add", "admin", "disk1"),
                       ("destination.update", "admin", "disk1"),
                       ("destination.remove", "admin", "disk1")]


def test_bad_destinations_are_refused_naming_the_field(api_server: ApiServer,
                                                       tmp_path: Path) -> None:
    def post(body: Any) -> tuple[int, Any]:
        return api_server.call("POST", "/destinations", body, user="admin")

    _refused(post({"name": "d", "plugin": "tape", "settings": {}}), 400,
             "plugin: no destination plugin named 'tape'", "filesystem")
    _refused(post({"name": "d", "plugin": "filesystem", "settings": {}}), 400,
             "settings.path: required")
    _refused(post({"name": "d", "plugin": "filesystem",
                   "settings": {"path": "/x", "fsync": "sometimes"}}), 400, "settings.fsync:")
    _refused(post({"name": "d", "plugin": "filesystem",
                   "settings": {"path": "/x", "colour": "red"}}), 400,
             "settings.colour: unknown setting")
    _refused(post({"name": "d", "plugin": "filesystem", "settings": "/x"}), 400, "settings:")
    _refused(post({"name": "bad name", "plugin": "filesystem", "settings": {"path": "/x"}}),
             400, "name: 'bad name' is invalid")
    _refused(post({"plugin": "filesystem"}), 400, "name: required")
    _refused(post({"name": "d", "plugin": "filesystem", "settings": {"path": "/x"},
                   "extra": 1}), 400, "extra: unknown field")
    _refused(api_server.call("POST", "/destinations", raw=b"[1, 2", user="admin"), 400,
             "request body must be a JSON object")
    assert Destination.select().count() == 0, "a refused request left a row behind"
    _destination(api_server, tmp_path, "dup")
    _refused(post({"name": "dup", "plugin": "filesystem", "settings": {"path": "/y"}}), 409,
             "name: destination 'dup' already exists")
    _refused(api_server.call("POST", "/destinations", {
        "name": "v", "plugin": "filesystem", "settings": {"path": "/v"}}, user="viewer"),
        403, "configure")
    _refused(api_server.call("POST", "/destinations", {
        "name": "o", "plugin": "filesystem", "settings": {"path": "/o"}}, user="operator"),
        403, "configure")
    assert Destination.select().count() == 1


def test_secrets_are_never_returned_nor_audited(api_server: ApiServer) -> None:
    added = _ok(api_server.call("POST", "/destinations", {
        "name": "cloud", "plugin": "s3",
        "settings": {"bucket": "backups", "endpoint": "http://127.0.0.1:9",
                     "access_key_id": "AKIDEXAMPLE", "secret_access_key": SECRET}},
        user="admin"), 201)
    assert added["settings"]["secret_access_key"] == "(set)"
    assert added["settings"]["session_token"] == "(not set)"
    # a PUT that leaves the secret out keeps it
    _ok(api_server.call("PUT", "/destinations/cloud", {"settings": {"region": "eu-west-1"}},
                        user="admin"))
    answers = [api_server.call("GET", "/destinations", user="admin"),
               api_server.call("GET", "/destinations/cloud", user="admin"),
               api_server.call("GET", "/audit", user="admin")]
    for answer in answers:
        assert SECRET not in json.dumps(answer)
    assert answers[1][1]["settings"]["secret_access_key"] == "(set)"
    row = Destination.get(Destination.name == "cloud")
    assert SECRET not in json.dumps(row.settings) and SECRET not in row.secrets
    assert "secret_access_key" not in row.settings
    for entry in AuditLog.select():
        assert SECRET not in json.dumps(entry.detail)


def test_a_destination_in_use_is_not_removed(api_server: ApiServer, tmp_path: Path) -> None:
    _destination(api_server, tmp_path)
    _ok(api_server.call("POST", "/policies", {"name": "nightly", "destination": "disk1"},
                        user="admin"), 201)
    _refused(api_server.call("DELETE", "/destinations/disk1", user="admin"), 409,
             "used by policies: nightly")
    assert Destination.select().count() == 1
    _ok(api_server.call("DELETE", "/policies/nightly", user="admin"))
    # once a repository was made there, its passphrase goes with the destination: confirm
    Destination.update(repository_secret="sealed").execute()
    _refused(api_server.call("DELETE", "/destinations/disk1", user="admin"), 409,
             "passphrase", "forget_repository=true")
    _ok(api_server.call("DELETE", "/destinations/disk1?forget_repository=true", user="admin"))
    assert Destination.select().count() == 0
    assert _audit("destination.remove")[0].detail["repository_forgotten"] is True


# --- providers, inventory, instances ------------------------------------------------------


def test_provider_inventory_sync_and_instances(api_server: ApiServer, share: Path) -> None:
    added = _provider(api_server, share)
    assert added["kind"] == "storage" and added["plugin"] == "fileshare"
    synced = _ok(api_server.call("POST", "/providers/nas1/inventory", user="admin"))
    assert synced == {"provider": "nas1", "present": 2, "added": 2, "updated": 0,
                      "unchanged": 0, "vanished": 0}
    rows = _ok(api_server.call("GET", "/instances", user="viewer"))
    assert [(r["name"], r["kind"], r["provider"], r["present"]) for r in rows] == \
        [("alpha", "share", "nas1", True), ("beta", "share", "nas1", True)]
    assert rows[0]["external_id"] == str(share / "alpha")
    assert rows[0]["location"] == str(share) and rows[0]["state"] == "available"
    assert rows[0]["last_backup_at"] is None and rows[0]["policies"] == []
    alpha_id = rows[0]["id"]

    (share / "alpha").rename(share / "gamma")
    synced = _ok(api_server.call("POST", "/providers/nas1/inventory", user="admin"))
    assert synced == {"provider": "nas1", "present": 2, "added": 1, "updated": 0,
                      "unchanged": 1, "vanished": 1}
    gone = _ok(api_server.call("GET", "/instances?present=false", user="viewer"))
    assert [(r["id"], r["name"]) for r in gone] == [(alpha_id, "alpha")]
    assert [r["name"] for r in _ok(api_server.call(
        "GET", "/instances?provider=nas1&name=amm&present=true", user="viewer"))] == ["gamma"]
    _refused(api_server.call("GET", "/instances?present=maybe", user="viewer"), 400,
             "present: must be true or false")
    _refused(api_server.call("GET", "/instances?provider=nope", user="viewer"), 404,
             "no provider connection named 'nope'")

    (share / "gamma").rename(share / "alpha")  # back: the same row, present again
    synced = _ok(api_server.call("POST", "/providers/nas1/inventory", user="admin"))
    assert (synced["added"], synced["updated"], synced["vanished"]) == (0, 1, 1)
    shown = _ok(api_server.call("GET", f"/instances/{alpha_id}", user="viewer"))
    assert shown["present"] is True and shown["attributes"] == {"path": str(share / "alpha")}
    _refused(api_server.call("GET", "/instances/999999", user="viewer"), 404,
             "no instance with id 999999")
    entries = _audit("inventory.sync")
    assert len(entries) == 3 and entries[0].username == "admin"
    assert entries[0].target == "nas1" and entries[0].detail["added"] == 2
    _refused(api_server.call("POST", "/providers/nas1/inventory", user="operator"), 403)

    listed = _ok(api_server.call("GET", "/providers", user="viewer"))
    assert [(p["name"], p["instances"]) for p in listed] == [("nas1", 2)]

    # the newest complete backup is the instance's last backup; it keeps the provider
    disk = Destination.create(name="disk1", plugin="filesystem", settings={"path": "/d"})
    for day in (1, 3, 2):
        Backup.create(instance=alpha_id, destination=disk, repo_backup_id=f"b{day}",
                      finished_at=dt.datetime(2024, 5, day, 2, 30))
    shown = _ok(api_server.call("GET", f"/instances/{alpha_id}", user="viewer"))
    assert shown["last_backup_at"] == "2024-05-03T02:30:00Z" and shown["backups"] == 3
    _refused(api_server.call("DELETE", "/providers/nas1", user="admin"), 409,
             "provider 'nas1': its instances have 3 backup(s)")
    Backup.delete().execute()
    assert _ok(api_server.call("DELETE", "/providers/nas1", user="admin")) == \
        {"removed": "nas1", "instances": 3}
    assert Instance.select().count() == 0 and ProviderConnection.select().count() == 0


def test_bad_providers_are_refused_naming_the_field(api_server: ApiServer,
                                                    tmp_path: Path) -> None:
    def post(body: Any) -> tuple[int, Any]:
        return api_server.call("POST", "/providers", body, user="admin")

    _refused(post({"name": "p", "plugin": "vmware", "settings": {}}), 400,
             "plugin: no provider plugin named 'vmware'", "fileshare")
    _refused(post({"name": "p", "plugin": "filesystem", "settings": {"path": "/x"}}), 400,
             "plugin: no provider plugin named 'filesystem'")
    _refused(post({"name": "p", "plugin": "fileshare", "kind": "hypervisor",
                   "settings": {}}), 400, "plugin: no hypervisor plugin named 'fileshare'")
    _refused(post({"name": "p", "plugin": "fileshare", "settings": {}}), 400,
             "settings.path: required")
    _refused(post({"name": "p", "plugin": "fileshare",
                   "settings": {"path": "/x", "instances": "all"}}), 400, "settings.instances:")
    _refused(post({"name": "p", "plugin": "fileshare", "settings": {"path": "rel"}}), 400,
             "settings.path: 'rel' is not an absolute path")
    _refused(post({"name": "p", "plugin": "fileshare", "settings": {"path": "/x"},
                   "test": "yes"}), 400, "test: must be true or false")
    missing = tmp_path / "not-there"
    _refused(post({"name": "p", "plugin": "fileshare", "settings": {"path": str(missing)},
                   "test": True}), 400, "test: the connection test failed",
             f"{missing} does not exist")
    assert ProviderConnection.select().count() == 0
    tested = _ok(post({"name": "p", "plugin": "fileshare", "settings": {"path": str(tmp_path)},
                       "test": True}), 201)
    assert tested["tested"] is True
    assert _ok(api_server.call("POST", "/providers/p/test", user="admin")) == {"ok": True}
    _refused(api_server.call("POST", "/providers/nope/inventory", user="admin"), 404,
             "no provider connection named 'nope'")
    # the platform fails: the reason, and no change to the inventory
    _ok(post({"name": "gone", "plugin": "fileshare", "settings": {"path": str(missing)}}),
        201)
    status, answer = api_server.call("POST", "/providers/gone/inventory", user="admin")
    assert status >= 400 and f"{missing} does not exist" in answer["error"]


# --- policies -----------------------------------------------------------------------------


def test_policy_round_trip(api_server: ApiServer, tmp_path: Path, share: Path) -> None:
    _destination(api_server, tmp_path)
    _provider(api_server, share)
    _ok(api_server.call("POST", "/providers/nas1/inventory", user="admin"))
    ids = {r["name"]: r["id"] for r in _ok(api_server.call("GET", "/instances", user="admin"))}
    body = {"name": "nightly", "kind": "backup", "destination": "disk1",
            "instances": ["alpha"], "rules": [{"name": "^be"}],
            "schedules": [{"kind": "cron", "expression": "0 2 * * *"},
                          {"kind": "weekly", "at": "03:30", "weekdays": ["sun", "sat"],
                           "window_minutes": 120, "timezone": "Europe/Berlin"}],
            "retention": {"last": 7, "daily": 14}, "priority": 80}
    created = _ok(api_server.call("POST", "/policies", body, user="admin"), 201)
    assert created["name"] == "nightly" and created["destination"] == "disk1"
    assert created["instances"] == [ids["alpha"]]
    assert [m["name"] for m in created["members"]["explicit"]] == ["alpha"]
    assert [m["name"] for m in created["members"]["rules"]] == ["beta"]
    assert created["retention"] == {"last": 7, "daily": 14}
    assert created["priority"] == 80 and created["enabled"] is True
    assert [(s["kind"], s.get("expression"), s.get("at"), s.get("weekdays"),
             s["window_minutes"], s["timezone"]) for s in created["schedules"]] == [
        ("cron", "0 2 * * *", None, None, 0, "UTC"),
        ("weekly", None, "03:30", ["sat", "sun"], 120, "Europe/Berlin")]
    stored = [(s.kind, s.expression, s.window_minutes, s.timezone)
              for s in Schedule.select().order_by(Schedule.id)]
    assert stored == [("cron", "0 2 * * *", 0, "UTC"),
                      ("weekly", "sat,sun 03:30", 120, "Europe/Berlin")]
    shown = _ok(api_server.call("GET", "/policies/nightly", user="viewer"))
    for schedule in (*shown["schedules"], *created["schedules"]):
        del schedule["next_run_at"]  # the scheduler plans the first run meanwhile
    assert shown == created
    assert [p["name"] for p in _ok(api_server.call("GET", "/policies", user="viewer"))] == \
        ["nightly"]
    instances = _ok(api_server.call("GET", "/instances", user="viewer"))
    assert [r["policies"] for r in instances] == [["nightly"], ["nightly"]]

    # an update that keeps one schedule keeps its row (and its next run)
    kept = Schedule.get(Schedule.kind == "cron").id
    updated = _ok(api_server.call("PUT", "/policies/nightly", {
        "schedules": [{"kind": "cron", "expression": "0 2 * * *"},
                      {"kind": "daily", "at": "12:00"}],
        "instances": [ids["beta"]], "rules": [], "enabled": False}, user="admin"))
    assert updated["destination"] == "disk1" and updated["retention"] == created["retention"]
    assert updated["enabled"] is False and updated["instances"] == [ids["beta"]]
    assert updated["members"]["rules"] == []
    assert updated["schedules"][0]["id"] == kept
    assert PolicyInstance.select().count() == 1

    snapshot = _ok(api_server.call("POST", "/policies", {
        "name": "snaps", "kind": "snapshot", "instances": [ids["alpha"]],
        "schedules": [{"kind": "daily", "at": "01:00"}],
        "retention": {"keep_snapshots": 3},
        "options": {"kind": "external", "quiesce": False}}, user="admin"), 201)
    assert snapshot["destination"] is None and snapshot["retention"] == {"keep_snapshots": 3}
    assert snapshot["options"] == {"kind": "external", "quiesce": False}
    assert created["options"] == {}  # defaults are not stored: later defaults still apply

    assert _ok(api_server.call("DELETE", "/policies/nightly", user="admin"))["removed"] == \
        "nightly"
    _refused(api_server.call("GET", "/policies/nightly", user="admin"), 404,
             "no policy named 'nightly'")
    assert Policy.select().count() == 1
    assert Schedule.select().count() == 1 and PolicyInstance.select().count() == 1
    actions = [(r.action, r.username, r.target) for r in AuditLog.select()
               .where(AuditLog.action.startswith("policy.")).order_by(AuditLog.id)]
    assert actions == [("policy.add", "admin", "nightly"), ("policy.update", "admin", "nightly"),
                       ("policy.add", "admin", "snaps"), ("policy.remove", "admin", "nightly")]
    assert _audit("policy.add")[0].detail["schedules"][1]["weekdays"] == ["sat", "sun"]


def test_bad_policies_are_refused_naming_every_field(api_server: ApiServer,
                                                     tmp_path: Path) -> None:
    _destination(api_server, tmp_path)

    def post(**fields: Any) -> tuple[int, Any]:
        return api_server.call("POST", "/policies",
                               {"name": "p", "destination": "disk1", **fields}, user="admin")

    _refused(api_server.call("POST", "/policies", {"name": "p", "destination": "x"},
                             user="admin"), 400, "destination: no destination named 'x'")
    _refused(api_server.call("POST", "/policies", {"name": "p"}, user="admin"), 400,
             "destination: required for backup policies")
    _refused(post(schedules=[{"kind": "cron", "expression": "61 * * * *"}]), 400,
             "schedules[0].expression: '61 * * * *' is not a valid cron expression")
    _refused(post(schedules=[{"kind": "daily", "at": "02:00"},
                             {"kind": "weekly", "at": "25:00", "weekdays": ["sat"]}]),
             400, "schedules[1].at:")
    _refused(post(schedules=[{"kind": "daily", "at": "02:00", "timezone": "Mars/Olympus"}]),
             400, "schedules[0].timezone:")
    _refused(post(retention={"last": -1}), 400, "retention.last: must be 0 or more")
    _refused(post(retention={"hourly": 3}), 400, "retention.hourly: unknown rule")
    _refused(post(priority=101), 400, "priority: must be a whole number from 0 to 100")
    _refused(post(priority="high"), 400, "priority:")
    _refused(post(instances=[999999]), 400, "instances[0]: no instance with id 999999")
    _refused(post(instances=["nothing-like-it"]), 400,
             "instances[0]: no instance named 'nothing-like-it'")
    _refused(post(rules=[{"name": "web-("}]), 400, "rules[0].name:")
    _refused(post(rules=[{}]), 400, "rules[0]: give at least one condition")
    _refused(post(kind="archive"), 400, "kind: must be one of backup, snapshot")
    _refused(post(enabled="yes"), 400, "enabled: must be true or false")
    _refused(post(colour="red"), 400, "colour: unknown field")
    _refused(post(options={"quiesce": "no"}), 400,
             "options.quiesce: must be one of true, false (got 'no')")
    _refused(post(options={"kind": "external"}), 400,
             "options.kind: backup policies take only quiesce")
    _refused(post(options=["quiesce"]), 400, "options: expected an object")
    _refused(api_server.call("POST", "/policies", {
        "name": "s", "kind": "snapshot", "retention": {"keep_snapshots": 2},
        "options": {"kind": "fast", "memory": 1}}, user="admin"), 400,
        "options.kind: must be one of internal, external", "options.memory:")
    _refused(api_server.call("POST", "/policies", {"name": "a b", "destination": "disk1"},
                             user="admin"), 400, "name: 'a b' is invalid")
    _refused(api_server.call("POST", "/policies", {"name": "s", "kind": "snapshot",
                                                   "retention": {"keep_snapshots": 0}},
                             user="admin"), 400, "retention.keep_snapshots:")
    _refused(api_server.call("POST", "/policies", {"name": "s", "kind": "snapshot",
                                                   "destination": "disk1",
                                                   "retention": {"keep_snapshots": 2}},
                             user="admin"), 400, "destination: snapshot policies")
    # several problems at once: all of them named
    _refused(post(priority=-1, retention={"last": -2, "daily": "x"},
                  schedules=[{"kind": "cron", "expression": "* *"}]), 400,
             "priority:", "retention.last:", "retention.daily:", "schedules[0].expression:")
    _refused(api_server.call("POST", "/policies", raw=b'{"name": ', user="admin"), 400,
             "request body must be a JSON object")
    _refused(api_server.call("POST", "/policies", raw=b'{"name": "p"}',
                             headers={"Content-Type": "text/plain"}, user="admin"), 400,
             "request body must be a JSON object")
    assert Policy.select().count() == 0 and Schedule.select().count() == 0

    _ok(post(), 201)
    _refused(post(), 409, "name: a policy named 'p' already exists")
    _refused(api_server.call("PUT", "/policies/p", {"retention": {"weekly": -3}},
                             user="admin"), 400, "retention.weekly: must be 0 or more")
    _refused(api_server.call("PUT", "/policies/nope", {}, user="admin"), 404,
             "no policy named 'nope'")
    _refused(api_server.call("DELETE", "/policies/p", user="viewer"), 403)
    assert Policy.get(Policy.name == "p").retention == {}


def test_explicit_members_leave_rule_members_alone(database: Any) -> None:
    """policies.set_explicit_members without a server: a rule member named by hand becomes
    explicit; dropping it from the list removes only explicit rows."""
    from sbr_core import policies

    connection = ProviderConnection.create(name="c", kind="storage", plugin="fileshare")
    one, two, three = (Instance.create(connection=connection, external_id=f"/{n}", name=n)
                       for n in ("one", "two", "three"))
    policy = Policy.create(name="p")
    PolicyInstance.create(policy=policy, instance=two, source="rule")
    PolicyInstance.create(policy=policy, instance=three, source="rule")

    policies.set_explicit_members(policy, [one.id, two.id])
    rows = {(r.instance_id, r.source) for r in PolicyInstance.select()}
    assert rows == {(one.id, "explicit"), (two.id, "explicit"), (three.id, "rule")}
    assert policies.explicit_member_ids(policy) == [one.id, two.id]

    policies.set_explicit_members(policy, [])
    assert {(r.instance_id, r.source) for r in PolicyInstance.select()} == {(three.id, "rule")}


def test_a_notifier_is_configured_through_the_api_and_the_server_then_sends(
        api_server: ApiServer, tmp_path: Path) -> None:
    from sbr_core.db.schema import Workflow
    from sbr_core.engine import nodes, workflows
    from tests.webhooks import receiving_webhooks

    _refused(api_server.call("POST", "/providers", {
        "name": "hook", "plugin": "webhook", "kind": ["notifier"], "settings": {}},
        user="admin"), 400, "kind: must be one of")
    with receiving_webhooks() as hooks:
        added = _ok(api_server.call("POST", "/providers", {
            "name": "hook", "plugin": "webhook",
            "settings": {"url": hooks.url, "secret": "s3cret-for-signing"}}, user="admin"), 201)
        assert added["kind"] == "notifier"
        assert "s3cret-for-signing" not in json.dumps(added)  # never shown back
        _refused(api_server.call("POST", "/providers", {
            "name": "hook2", "plugin": "webhook", "settings": {"url": hooks.url}},
            user="operator"), 403)
        # a restore fails on a node: the server tells the notifier it just read
        _, token = nodes.add_node("n1", concurrency=1)
        flow = workflows.create_workflow(api_server.db, "restore", params={})
        status, order = api_server.call("POST", "/node/claim", {}, token=token)
        assert status == 200 and order["workflow"]["id"] == flow.id, order
        status, answer = api_server.call(
            "POST", f"/node/tasks/{order['task']['id']}/finish",
            {"attempt": order["task"]["attempt"], "state": "failed",
             "error": "target is read-only"}, token=token)
        assert status == 200, answer
        told = json.loads(hooks.wait_for("task-failed").body)
        assert told["data"]["error"] == "target is read-only"
        assert Workflow.get_by_id(flow.id).state == "failed"


def test_a_finish_hands_on_the_next_task_alone_and_the_node_keeps_the_claims_order(
        api_server: ApiServer) -> None:
    from sbr_core.db.schema import Task
    from sbr_core.engine import nodes, workflows

    _, token = nodes.add_node("n1", concurrency=1)
    flow = workflows.create_workflow(api_server.db, "restore-import", params={"note": "x"})
    status, order = api_server.call("POST", "/node/claim", {}, token=token)
    assert status == 200 and order["task"]["step"] == "restore", order
    assert [s["step"] for s in order["workflow"]["steps"]] == ["restore", "import"]
    status, answer = api_server.call(
        "POST", f"/node/tasks/{order['task']['id']}/finish",
        {"attempt": order["task"]["attempt"], "state": "succeeded"}, token=token)
    assert status == 200, answer
    following = Task.get((Task.workflow == flow.id) & (Task.step == "import"))
    # Only the task: building the whole work order again cost a third of a workflow's
    # server time, and nothing else in it changes within a workflow.
    assert answer == {"workflow_state": None, "next": {"task": {
        "id": following.id, "attempt": 1, "step": "import"}}}
    assert (following.state, following.node.name) == ("running", "n1")
