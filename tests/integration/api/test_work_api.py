"""The work API over HTTP, against a real ``sbr server`` (no node: work stays queued):
starting backups and restores, the task list and its progress, cancel, the catalog, roles,
and every bad request answered with a 4xx that names the field, writing nothing."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import pytest

from sbr_core import connections
from sbr_core.db.schema import (
    AuditLog,
    Backup,
    Destination,
    Instance,
    Policy,
    PolicyInstance,
    Task,
    TaskLog,
    Workflow,
    utcnow,
)
from sbr_core.plugins import PluginHost
from sbr_core.providers import ProviderKind
from sbr_core.secretbox import SecretBox, load_or_create_key
from tests.api_server import ApiServer

HOUR = dt.timedelta(hours=1)


def make_site(server: ApiServer, tmp_path: Path) -> dict[str, Any]:
    """A file share with files (connection ``nas1``), its instance ``share1`` and a
    filesystem destination ``disk1``, saved as the server would."""
    box = SecretBox(load_or_create_key(server.data_dir / "secret.key"))
    host = PluginHost.discover()
    share = tmp_path / "share"
    (share / "docs").mkdir(parents=True)
    (share / "docs" / "a.txt").write_text("alpha\n" * 1000)
    (share / "b.bin").write_bytes(os.urandom(2 * 2**20))
    connection = connections.save(ProviderKind.STORAGE, "nas1", "fileshare",
                                  {"path": str(share)}, host=host, box=box)
    (tmp_path / "repo").mkdir()
    destination = connections.save(ProviderKind.DESTINATION, "disk1", "filesystem",
                                   {"path": str(tmp_path / "repo")}, host=host, box=box)
    instance = Instance.create(connection=connection, external_id=str(share), name="share1",
                               kind="share")
    return {"share": share, "instance": instance, "destination": destination,
            "connection": connection, "tmp": tmp_path}


@pytest.fixture
def site(api_server: ApiServer, tmp_path: Path) -> dict[str, Any]:
    return make_site(api_server, tmp_path)


def _error(answer: tuple[int, Any], status: int, *fragments: str) -> str:
    code, body = answer
    assert code == status, (code, body)
    message = str(body["error"])
    for fragment in fragments:
        assert fragment in message, message
    return message


def _catalog_row(site: dict[str, Any], **fields: Any) -> Backup:
    values: dict[str, Any] = {"instance": site["instance"], "destination": site["destination"],
                              "repo_backup_id": "abc123", "kind": "full",
                              "bytes_logical": 1000, "bytes_stored": 400, **fields}
    return Backup.create(**values)


# --- starting backups ---------------------------------------------------------------------


def test_a_backup_is_queued_for_the_named_destination_and_audited(
        api_server: ApiServer, site: dict[str, Any]) -> None:
    status, flow = api_server.call("POST", "/backups",
                                   {"instance": "share1", "destination": "disk1", "full": True},
                                   user="operator")
    assert status == 201, flow
    assert flow["kind"] == "backup" and flow["state"] == "pending"
    assert flow["instance"] == "share1" and flow["destination"] == "disk1"
    assert flow["requested_by"] == "operator"
    assert flow["params"] == {"destination_id": site["destination"].id, "full": True}
    assert [s["step"] for s in flow["steps"]] == ["export", "store"]
    assert flow["current"]["step"] == "export" and flow["current"]["state"] == "queued"
    assert flow["current"]["node"] is None
    entry = AuditLog.get(AuditLog.action == "backup.start")
    assert entry.username == "operator" and entry.target == "share1"
    assert entry.detail["workflow_id"] == flow["id"] and entry.detail["full"] is True
    assert entry.remote_addr == "127.0.0.1"
    # the instance by its id works too
    api_server.call("POST", f"/tasks/{flow['id']}/cancel", {}, user="operator")
    status, again = api_server.call("POST", "/backups", {"instance": site["instance"].id,
                                                         "destination": "disk1"},
                                    user="operator")
    assert status == 201 and again["instance"] == "share1"


def test_without_a_destination_the_highest_priority_enabled_policy_chooses(
        api_server: ApiServer, site: dict[str, Any]) -> None:
    disk2 = Destination.create(name="disk2", plugin="filesystem", settings={"path": "/x"})
    disk3 = Destination.create(name="disk3", plugin="filesystem", settings={"path": "/y"})
    Policy.create(name="low", destination=disk2, priority=10, rules=[{"name": "^share"}])
    high = Policy.create(name="high", destination=site["destination"], priority=80, rules=[])
    PolicyInstance.create(policy=high, instance=site["instance"])
    Policy.create(name="off", destination=disk3, priority=100, enabled=False,
                  rules=[{"name": "share"}])
    Policy.create(name="other", destination=disk3, priority=99, rules=[{"tag": "gold"}])
    status, flow = api_server.call("POST", "/backups", {"instance": "share1"}, user="operator")
    assert status == 201, flow
    assert flow["destination"] == "disk1"
    workflow = Workflow.get_by_id(flow["id"])
    assert workflow.policy_id == high.id and workflow.priority == 80


def test_a_second_backup_of_a_busy_instance_is_refused_with_409(
        api_server: ApiServer, site: dict[str, Any]) -> None:
    body = {"instance": "share1", "destination": "disk1"}
    first = api_server.call("POST", "/backups", body, user="operator")
    assert first[0] == 201
    _error(api_server.call("POST", "/backups", body, user="operator"), 409,
           "share1", "already has a backup", f"workflow {first[1]['id']}")
    assert Workflow.select().count() == 1


@pytest.mark.parametrize(("body", "field"), [
    ({}, "instance"),
    ({"instance": None}, "instance"),
    ({"instance": True, "destination": "disk1"}, "instance"),
    ({"instance": 1.5, "destination": "disk1"}, "instance"),
    ({"instance": ["share1"], "destination": "disk1"}, "instance"),
    ({"instance": "", "destination": "disk1"}, "instance"),
    ({"instance": "nope", "destination": "disk1"}, "instance"),
    ({"instance": 99999, "destination": "disk1"}, "instance"),
    ({"instance": 10**30, "destination": "disk1"}, "instance"),
    ({"instance": "9" * 40, "destination": "disk1"}, "instance"),
    ({"instance": "share1"}, "destination"),
    ({"instance": "share1", "destination": 7}, "destination"),
    ({"instance": "share1", "destination": "nowhere"}, "destination"),
    ({"instance": "share1", "destination": "disk1", "full": "yes"}, "full"),
    ({"instance": "share1", "destination": "disk1", "colour": "red"}, "colour"),
])
def test_bad_backup_requests_name_the_field_and_queue_nothing(
        api_server: ApiServer, site: dict[str, Any], body: dict[str, Any], field: str) -> None:
    _error(api_server.call("POST", "/backups", body, user="operator"), 400, field)
    assert Workflow.select().count() == 0 and Task.select().count() == 0
    assert AuditLog.select().where(AuditLog.action == "backup.start").count() == 0


def test_bodies_that_are_not_json_objects_are_refused_naming_the_body(
        api_server: ApiServer, site: dict[str, Any]) -> None:
    for raw in (b"not json", b"[1, 2]", b'"share1"', b"{"):
        _error(api_server.call("POST", "/backups", raw=raw, user="operator"), 400, "body")
    assert Workflow.select().count() == 0


def test_two_instances_of_one_name_need_the_id(api_server: ApiServer,
                                               site: dict[str, Any]) -> None:
    twin = Instance.create(connection=site["connection"], external_id="/elsewhere",
                           name="share1", kind="share")
    _error(api_server.call("POST", "/backups", {"instance": "share1", "destination": "disk1"},
                           user="operator"), 400, "instance", "give the id")
    status, flow = api_server.call("POST", "/backups", {"instance": twin.id,
                                                        "destination": "disk1"},
                                   user="operator")
    assert status == 201 and flow["instance_id"] == twin.id


# --- roles --------------------------------------------------------------------------------


def test_a_viewer_reads_but_cannot_start_or_cancel_work(api_server: ApiServer,
                                                        site: dict[str, Any]) -> None:
    body = {"instance": "share1", "destination": "disk1"}
    _error(api_server.call("POST", "/backups", body, user="viewer"), 403, "operate")
    backup = _catalog_row(site)
    _error(api_server.call("POST", f"/backups/{backup.id}/restore", {"to": "/tmp/x"},
                           user="viewer"), 403, "operate")
    status, flow = api_server.call("POST", "/backups", body, user="admin")
    assert status == 201
    _error(api_server.call("POST", f"/tasks/{flow['id']}/cancel", {}, user="viewer"), 403)
    assert api_server.call("GET", "/tasks", user="viewer")[0] == 200
    assert api_server.call("GET", "/backups", user="viewer")[0] == 200
    assert api_server.call("GET", f"/tasks/{flow['id']}", user="viewer")[0] == 200
    assert Workflow.select().count() == 1
    assert api_server.call("GET", "/tasks")[0] == 401
    assert api_server.call("POST", "/backups", body)[0] == 401


# --- the task list, progress and cancel ---------------------------------------------------


def test_tasks_list_newest_first_with_progress_speed_and_eta(
        api_server: ApiServer, site: dict[str, Any]) -> None:
    backup = _catalog_row(site)
    restore = api_server.call("POST", f"/backups/{backup.id}/restore", {"to": "/srv/back"},
                              user="operator")[1]
    flow = api_server.call("POST", "/backups", {"instance": "share1", "destination": "disk1"},
                           user="operator")[1]
    export = Task.get((Task.workflow == flow["id"]) & (Task.step == "export"))
    from sbr_core.db.schema import Node

    node = Node.create(name="n1")
    Task.update(state="running", node=node, attempts=1, lease_expires_at=utcnow() + HOUR,
                progress_done=250 * 2**20,
                progress_total=1000 * 2**20, speed_bps=50 * 2**20).where(
        Task.id == export.id).execute()
    Workflow.update(state="running").where(Workflow.id == flow["id"]).execute()
    TaskLog.create(task=export, level="info", message="first line")
    TaskLog.create(task=export, level="warning", message="second line")

    status, rows = api_server.call("GET", "/tasks", user="viewer")
    assert status == 200
    assert [r["id"] for r in rows] == [flow["id"], restore["id"]]
    current = rows[0]["current"]
    assert current["step"] == "export" and current["node"] == "n1"
    assert current["progress"] == {"done": 250 * 2**20, "total": 1000 * 2**20,
                                   "percent": 25.0, "speed": 50 * 2**20, "eta_seconds": 15}
    assert rows[0]["steps"] == [{"step": "export", "state": "running"},
                                {"step": "store", "state": "waiting"}]
    assert rows[1]["kind"] == "restore" and rows[1]["instance"] is None

    detail = api_server.call("GET", f"/tasks/{flow['id']}", user="viewer")[1]
    assert [(t["step"], t["state"], t["node"], t["attempts"]) for t in detail["tasks"]] == [
        ("export", "running", "n1", 1), ("store", "waiting", None, 0)]
    assert [line["message"] for line in detail["log"]] == ["first line", "second line"]
    assert detail["log"][0]["step"] == "export" and detail["log_more"] is False
    after = detail["log"][0]["id"]
    later = api_server.call("GET", f"/tasks/{flow['id']}?after={after}", user="viewer")[1]
    assert [line["message"] for line in later["log"]] == ["second line"]

    assert [r["id"] for r in api_server.call("GET", "/tasks?state=active&limit=1",
                                             user="viewer")[1]] == [flow["id"]]
    assert [r["id"] for r in api_server.call("GET", f"/tasks?before={flow['id']}",
                                             user="viewer")[1]] == [restore["id"]]
    assert api_server.call("GET", "/tasks?state=finished", user="viewer")[1] == []


def test_cancel_of_a_queued_backup_cancels_it_at_once_and_only_once(
        api_server: ApiServer, site: dict[str, Any]) -> None:
    flow = api_server.call("POST", "/backups", {"instance": "share1", "destination": "disk1"},
                           user="operator")[1]
    status, done = api_server.call("POST", f"/tasks/{flow['id']}/cancel", user="operator")
    assert status == 200, done
    assert done["state"] == "cancelled" and done["error"] == "cancelled by request"
    assert {t["state"] for t in done["tasks"]} == {"cancelled"}
    entry = AuditLog.get(AuditLog.action == "task.cancel")
    assert entry.username == "operator" and entry.detail["workflow_id"] == flow["id"]
    _error(api_server.call("POST", f"/tasks/{flow['id']}/cancel", {}, user="operator"), 409,
           "already cancelled")
    # the instance is free again
    assert api_server.call("POST", "/backups", {"instance": "share1", "destination": "disk1"},
                           user="operator")[0] == 201


def test_unknown_and_malformed_task_ids(api_server: ApiServer, site: dict[str, Any]) -> None:
    _error(api_server.call("POST", "/tasks/99999/cancel", {}, user="operator"), 404,
           "no task 99999")
    _error(api_server.call("GET", "/tasks/99999", user="viewer"), 404, "no task 99999")
    for bad in ("abc", "-1", "0", "1.5", "9" * 30, "%C2%B2"):
        _error(api_server.call("POST", f"/tasks/{bad}/cancel", {}, user="operator"), 400, "id")
        _error(api_server.call("GET", f"/tasks/{bad}", user="viewer"), 400, "id")
    flow = api_server.call("POST", "/backups", {"instance": "share1", "destination": "disk1"},
                           user="operator")[1]
    _error(api_server.call("POST", f"/tasks/{flow['id']}/cancel", {"force": True},
                           user="operator"), 400, "force")
    _error(api_server.call("GET", f"/tasks/{flow['id']}?after=x", user="viewer"), 400, "after")
    assert Workflow.get_by_id(flow["id"]).state == "pending"


@pytest.mark.parametrize(("query", "field"), [
    ("state=bogus", "state"), ("limit=0", "limit"), ("limit=1001", "limit"),
    ("limit=ten", "limit"), ("before=x", "before"), ("colour=red", "colour"),
    ("state=active&state=all", "state"), ("before=" + "9" * 25, "before"),
])
def test_bad_task_list_queries_name_the_parameter(api_server: ApiServer, query: str,
                                                  field: str) -> None:
    _error(api_server.call("GET", f"/tasks?{query}", user="viewer"), 400, field)


# --- the catalog and restores -------------------------------------------------------------


def test_the_catalog_lists_complete_backups_unless_asked_for_all(
        api_server: ApiServer, site: dict[str, Any]) -> None:
    old = _catalog_row(site, repo_backup_id="old1")
    broken = _catalog_row(site, repo_backup_id="bad1", state="deleting")
    other_instance = Instance.create(connection=site["connection"], external_id="/other",
                                     name="share2", kind="share")
    policy = Policy.create(name="p", destination=site["destination"])
    other = _catalog_row(site, instance=other_instance, repo_backup_id="oth1", policy=policy)
    status, rows = api_server.call("GET", "/backups", user="viewer")
    assert status == 200
    assert [r["id"] for r in rows] == [other.id, old.id]
    assert rows[0] == {**rows[0], "instance": "share2", "destination": "disk1",
                       "kind": "full", "state": "complete", "bytes_logical": 1000,
                       "bytes_stored": 400, "repo_backup_id": "oth1", "policy": "p"}
    assert rows[1]["policy"] is None
    everything = api_server.call("GET", "/backups?all=1", user="viewer")[1]
    assert [r["id"] for r in everything] == [other.id, broken.id, old.id]
    by_name = api_server.call("GET", "/backups?instance=share1&all=true", user="viewer")[1]
    assert [r["id"] for r in by_name] == [broken.id, old.id]
    by_id = api_server.call("GET", f"/backups?instance={other_instance.id}", user="viewer")[1]
    assert [r["id"] for r in by_id] == [other.id]
    paged = api_server.call("GET", f"/backups?limit=1&before={other.id}", user="viewer")[1]
    assert [r["id"] for r in paged] == [old.id]
    assert api_server.call("GET", "/backups?destination=disk1", user="viewer")[1] == rows
    one = api_server.call("GET", f"/backups/{old.id}", user="viewer")
    assert one[0] == 200 and one[1]["repo_backup_id"] == "old1"


@pytest.mark.parametrize(("query", "field"), [
    ("instance=nope", "instance"), ("destination=nowhere", "destination"),
    ("all=maybe", "all"), ("limit=-1", "limit"), ("sort=id", "sort"),
])
def test_bad_catalog_queries_name_the_parameter(api_server: ApiServer, site: dict[str, Any],
                                                query: str, field: str) -> None:
    _error(api_server.call("GET", f"/backups?{query}", user="viewer"), 400, field)


def test_a_restore_is_queued_for_any_node_with_its_parameters(
        api_server: ApiServer, site: dict[str, Any]) -> None:
    backup = _catalog_row(site)
    status, flow = api_server.call("POST", f"/backups/{backup.id}/restore",
                                   {"to": "/srv/restored", "include": "docs"},
                                   user="operator")
    assert status == 201, flow
    assert flow["kind"] == "restore" and flow["instance"] is None
    assert flow["params"] == {"backup_id": backup.id, "path": "/srv/restored",
                              "include": "docs"}
    assert [s["step"] for s in flow["steps"]] == ["restore"]
    workflow = Workflow.get_by_id(flow["id"])
    assert workflow.instance_id is None and workflow.provider_name == ""
    entry = AuditLog.get(AuditLog.action == "restore.start")
    assert entry.detail == {"workflow_id": flow["id"], "backup_id": backup.id,
                            "to": "/srv/restored", "include": "docs"}


@pytest.mark.parametrize(("body", "field"), [
    ({}, "to"), ({"to": None}, "to"), ({"to": "relative/path"}, "to"), ({"to": 5}, "to"),
    ({"to": ""}, "to"), ({"to": "/srv/x", "include": 3}, "include"),
    ({"to": "/srv/x", "overwrite": True}, "overwrite"),
    ({"to": "/srv/x", "conflict": "skip"}, "conflict"), ({"to": "/srv/x", "into": "a"}, "into"),
    ({"instance": "nope"}, "instance"), ({"instance": 99999}, "instance"),
    ({"instance": None}, "instance"), ({"instance": "share1", "to": "/srv/x"}, "to"),
    ({"instance": "share1", "into": "/abs"}, "into"),
    ({"instance": "share1", "into": "a/../.."}, "into"),
    ({"instance": "share1", "into": 3}, "into"),
    ({"instance": "share1", "conflict": "merge"}, "conflict"),
    ({"instance": "share1", "format": "raw"}, "format"),
])
def test_bad_restore_requests_name_the_field_and_queue_nothing(
        api_server: ApiServer, site: dict[str, Any], body: dict[str, Any], field: str) -> None:
    backup = _catalog_row(site)
    _error(api_server.call("POST", f"/backups/{backup.id}/restore", body, user="operator"),
           400, field)
    assert Workflow.select().count() == 0


def test_a_restore_into_an_instance_goes_to_the_nodes_of_its_connection(
        api_server: ApiServer, site: dict[str, Any]) -> None:
    backup = _catalog_row(site)
    status, flow = api_server.call("POST", f"/backups/{backup.id}/restore",
                                   {"instance": "share1", "into": "old", "include": "docs"},
                                   user="operator")
    assert status == 201, flow
    assert flow["kind"] == "restore" and flow["instance"] == "share1"
    assert flow["params"] == {"backup_id": backup.id, "mode": "instance", "include": "docs",
                              "into": "old", "conflict": "rename"}
    workflow = Workflow.get_by_id(flow["id"])
    assert workflow.instance_id == site["instance"].id and workflow.provider_name == "nas1"
    entry = AuditLog.get(AuditLog.action == "restore.start")
    assert entry.target == "share1" and entry.detail["conflict"] == "rename"
    _error(api_server.call("POST", f"/backups/{backup.id}/restore",
                           {"instance": site["instance"].id}, user="viewer"), 403)


def test_a_restore_into_an_instance_of_another_kind_is_refused(
        api_server: ApiServer, site: dict[str, Any]) -> None:
    backup = _catalog_row(site)
    host = PluginHost.discover()
    box = SecretBox(load_or_create_key(api_server.data_dir / "secret.key"))
    other = connections.save(ProviderKind.HYPERVISOR, "kvm1", "kvm",
                             {"uri": "qemu:///system"}, host=host, box=box)
    vm = Instance.create(connection=other, external_id="uuid-9", name="db1", kind="vm")
    _error(api_server.call("POST", f"/backups/{backup.id}/restore", {"instance": vm.id},
                           user="operator"), 400, "instance", "import")
    vm_backup = _vm_backup(site)
    _error(api_server.call("POST", f"/backups/{vm_backup.id}/restore",
                           {"instance": "share1"}, user="operator"), 400, "instance", "import")
    assert Workflow.select().count() == 0


def _vm_backup(site: dict[str, Any]) -> Backup:
    vm = Instance.create(connection=site["connection"], external_id="uuid-1", name="web1",
                         kind="vm")
    return _catalog_row(site, instance=vm)


def test_an_import_is_queued_with_its_parameters_and_audited(
        api_server: ApiServer, site: dict[str, Any]) -> None:
    backup = _vm_backup(site)
    status, flow = api_server.call("POST", f"/backups/{backup.id}/import", {
        "name": "web1-copy", "directory": "/srv/vms", "network_map": {"lan": ""},
        "power_on": True, "disks": ["vda"]}, user="operator")
    assert status == 201, flow
    assert flow["kind"] == "restore-import" and flow["instance"] == "web1"
    assert [s["step"] for s in flow["steps"]] == ["restore", "import"]
    assert flow["params"] == {"backup_id": backup.id, "name": "web1-copy",
                              "directory": "/srv/vms", "network_map": {"lan": ""},
                              "power_on": True, "disks": ["vda"]}
    entry = AuditLog.get(AuditLog.action == "import.start")
    assert entry.username == "operator" and entry.target == "web1"
    assert entry.detail["replace"] is False


@pytest.mark.parametrize(("body", "field"), [
    ({"directory": "/srv/vms"}, "name"), ({"name": "a/b", "directory": "/srv"}, "name"),
    ({"name": "copy"}, "directory"), ({"name": "copy", "directory": "srv"}, "directory"),
    ({"name": "copy", "directory": "/srv", "disk_format": "vmdk"}, "disk_format"),
    ({"name": "copy", "directory": "/srv", "network_map": ["lan"]}, "network_map"),
    ({"name": "copy", "disk_targets": {"vda": "rel.qcow2"}}, "disk_targets"),
    ({"name": "copy", "directory": "/srv", "power_on": "yes"}, "power_on"),
    ({"name": "copy", "directory": "/srv", "disks": "vda"}, "disks"),
    ({"replace": True}, "confirm"), ({"replace": True, "confirm": "other"}, "confirm"),
    ({"name": "copy", "directory": "/srv", "cluster": "c1"}, "cluster"),
])
def test_bad_import_requests_name_the_field_and_queue_nothing(
        api_server: ApiServer, site: dict[str, Any], body: dict[str, Any], field: str) -> None:
    backup = _vm_backup(site)
    _error(api_server.call("POST", f"/backups/{backup.id}/import", body, user="operator"),
           400, field)
    assert Workflow.select().count() == 0


def test_imports_of_file_backups_or_by_viewers_are_refused(
        api_server: ApiServer, site: dict[str, Any]) -> None:
    share_backup = _catalog_row(site)
    body = {"name": "copy", "directory": "/srv"}
    _error(api_server.call("POST", f"/backups/{share_backup.id}/import", body,
                           user="operator"), 409, "of a share, not a VM")
    vm_backup = _vm_backup(site)
    assert api_server.call("POST", f"/backups/{vm_backup.id}/import", body,
                           user="viewer")[0] == 403
    assert Workflow.select().count() == 0


def test_a_mount_is_queued_with_a_secret_export_name_only_its_starter_sees(
        api_server: ApiServer, site: dict[str, Any]) -> None:
    backup = _vm_backup(site)
    status, flow = api_server.call("POST", f"/backups/{backup.id}/mount",
                                   {"minutes": 5, "disks": ["vda"]}, user="operator")
    assert status == 201, flow
    assert flow["kind"] == "mount" and [s["step"] for s in flow["steps"]] == ["mount"]
    export = flow["export"]
    assert len(export) >= 32
    assert Workflow.get_by_id(flow["id"]).params["export"] == export
    assert flow["params"] == {"backup_id": backup.id, "listen": "127.0.0.1", "port": 0,
                              "minutes": 5, "disks": ["vda"], "export": "(hidden)"}
    for path in (f"/tasks/{flow['id']}", "/tasks"):
        status, shown = api_server.call("GET", path, user="viewer")
        assert status == 200 and export not in str(shown)
    entry = AuditLog.get(AuditLog.action == "mount.start")
    assert entry.username == "operator" and entry.target == "web1"
    assert export not in str(entry.detail)
    second = api_server.call("POST", f"/backups/{backup.id}/mount", {}, user="operator")[1]
    assert second["export"] != export  # each mount has a name of its own


@pytest.mark.parametrize(("body", "field"), [
    ({"listen": "my-host"}, "listen"), ({"listen": 127}, "listen"),
    ({"port": 70000}, "port"), ({"port": "10809"}, "port"), ({"port": -1}, "port"),
    ({"minutes": 0}, "minutes"), ({"minutes": 10081}, "minutes"),
    ({"minutes": True}, "minutes"), ({"disks": "vda"}, "disks"), ({"to": "/srv"}, "to"),
])
def test_bad_mount_requests_name_the_field_and_queue_nothing(
        api_server: ApiServer, site: dict[str, Any], body: dict[str, Any], field: str) -> None:
    backup = _vm_backup(site)
    _error(api_server.call("POST", f"/backups/{backup.id}/mount", body, user="operator"),
           400, field)
    assert Workflow.select().count() == 0


def test_mounts_of_file_backups_unknown_backups_or_by_viewers_are_refused(
        api_server: ApiServer, site: dict[str, Any]) -> None:
    share_backup = _catalog_row(site)
    _error(api_server.call("POST", f"/backups/{share_backup.id}/mount", {}, user="operator"),
           409, "of a share", "restore files")
    _error(api_server.call("POST", "/backups/99999/mount", {}, user="operator"), 404,
           "no backup 99999")
    vm_backup = _vm_backup(site)
    assert api_server.call("POST", f"/backups/{vm_backup.id}/mount", {},
                           user="viewer")[0] == 403
    broken = _catalog_row(site, instance=vm_backup.instance, state="deleting")
    _error(api_server.call("POST", f"/backups/{broken.id}/mount", {}, user="operator"), 409,
           "deleting")
    assert Workflow.select().count() == 0


def test_restores_of_unknown_or_incomplete_backups_are_refused(
        api_server: ApiServer, site: dict[str, Any]) -> None:
    _error(api_server.call("POST", "/backups/99999/restore", {"to": "/srv/x"},
                           user="operator"), 404, "no backup 99999")
    _error(api_server.call("GET", "/backups/99999", user="viewer"), 404, "no backup 99999")
    _error(api_server.call("POST", "/backups/abc/restore", {"to": "/srv/x"},
                           user="operator"), 400, "id")
    _error(api_server.call("GET", "/backups/abc", user="viewer"), 400, "id")
    broken = _catalog_row(site, state="deleting")
    _error(api_server.call("POST", f"/backups/{broken.id}/restore", {"to": "/srv/x"},
                           user="operator"), 409, "deleting")
    assert Workflow.select().count() == 0
