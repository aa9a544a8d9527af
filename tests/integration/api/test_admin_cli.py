"""The real ``sbr`` command against a real server: login, configuration, logout."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from sbr_core.db.schema import ApiToken, AuditLog, Policy, Schedule
from tests.api_server import PASSWORD, ApiServer
from tests.cli_runs import as_json, ok, one_line_error, sbr


def _login(api: ApiServer, user: str = "admin") -> None:
    ok(api.sbr("login", "--server", api.url, "--username", user, "--password-stdin",
               stdin=PASSWORD + "\n"))


def test_login_saves_a_private_token_and_logout_revokes_it(api_server: ApiServer) -> None:
    result = one_line_error(api_server.sbr("destination", "list"), "not logged in",
                            "sbr login --server URL")
    assert result
    assert api_server.sbr("destination", "list").returncode == 2

    result = ok(api_server.sbr("login", "--server", api_server.url, "--username", "admin",
                               "--password-stdin", stdin=PASSWORD + "\n"))
    assert "logged in to" in result.stdout and "as admin (role admin)" in result.stdout
    path = Path(api_server.env["XDG_CONFIG_HOME"]) / "sbr" / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = json.loads(path.read_text())
    assert saved["server"] == api_server.url and saved["token"].startswith("sbru_")
    token = ApiToken.get(ApiToken.id == int(saved["token_id"]))
    assert token.name.startswith("sbr-cli@") and token.user.username == "admin"
    assert as_json(api_server.sbr("destination", "list", "--json")) == []

    ok(api_server.sbr("logout"))
    assert not path.exists()
    assert ApiToken.get_by_id(token.id).revoked
    assert api_server.call("GET", "/me", token=saved["token"])[0] == 401
    one_line_error(api_server.sbr("policy", "list"), "not logged in")


def test_login_failures_are_one_line_errors(api_server: ApiServer) -> None:
    result = api_server.sbr("login", "--server", api_server.url, "--username", "admin",
                            "--password-stdin", stdin="wrong password\n")
    one_line_error(result, "wrong user name or password", "sbr login")
    assert result.returncode == 3
    one_line_error(api_server.sbr("login", "--server", "ftp://x", "--username", "admin",
                                  "--password-stdin", stdin=PASSWORD + "\n"),
                   "server: 'ftp://x' is not an http:// or https:// URL")
    one_line_error(api_server.sbr("login", "--server", "http://127.0.0.1:9", "--username",
                                  "admin", "--password-stdin", stdin=PASSWORD + "\n"),
                   "cannot reach the server at http://127.0.0.1:9")
    one_line_error(api_server.sbr("login", "--server", api_server.url, "--password-stdin",
                                  stdin=PASSWORD + "\n"), "username:")


def test_configure_a_backup_policy_from_the_command_line(api_server: ApiServer,
                                                         tmp_path: Path) -> None:
    share = tmp_path / "share"
    for name in ("web-1", "web-2", "db-1"):
        (share / name).mkdir(parents=True)
    _login(api_server)
    ok(api_server.sbr("destination", "add", "disk1", "--plugin", "filesystem",
                      "--set", f"path={tmp_path / 'repo'}"))
    shown = as_json(api_server.sbr("destination", "show", "disk1", "--json"))
    assert shown["settings"]["path"] == str(tmp_path / "repo")
    assert "disk1" in ok(api_server.sbr("destination", "list")).stdout

    result = ok(api_server.sbr("provider", "add", "nas1", "--plugin", "fileshare",
                               "--set", f"path={share}", "--set", "instances=subdirectories",
                               "--test"))
    assert "storage provider 'nas1' added (connection tested)" in result.stdout
    result = ok(api_server.sbr("inventory", "sync", "nas1"))
    assert "nas1: 3 instance(s); 3 added, 0 updated, 0 vanished" in result.stdout
    rows = as_json(api_server.sbr("instances", "--provider", "nas1", "--json"))
    assert [r["name"] for r in rows] == ["db-1", "web-1", "web-2"]
    table = ok(api_server.sbr("instances")).stdout
    assert "LAST BACKUP" in table and "web-2" in table and "never" in table

    stored = as_json(api_server.sbr(
        "policy", "add", "nightly", "--destination", "disk1", "--instance", "db-1",
        "--rule", "name=^web-[0-9]{1,3}$,provider=nas1", "--schedule", "daily:02:30",
        "--schedule", "weekly:sat,sun 04:00", "--schedule", "cron:0 */6 * * *",
        "--window", "90", "--timezone", "Europe/Berlin", "--keep-last", "7",
        "--keep-daily", "14", "--keep-monthly", "6", "--priority", "70", "--json"))
    assert stored["rules"] == [{"name": "^web-[0-9]{1,3}$", "provider": "nas1"}]
    assert [m["name"] for m in stored["members"]["explicit"]] == ["db-1"]
    assert [m["name"] for m in stored["members"]["rules"]] == ["web-1", "web-2"]
    assert stored["retention"] == {"last": 7, "daily": 14, "monthly": 6}
    assert [(s["kind"], s["window_minutes"], s["timezone"]) for s in stored["schedules"]] == \
        [("daily", 90, "Europe/Berlin"), ("weekly", 90, "Europe/Berlin"),
         ("cron", 90, "Europe/Berlin")]
    assert stored["priority"] == 70
    shown_text = ok(api_server.sbr("policy", "show", "nightly")).stdout
    assert "schedule: weekly sat,sun 04:00 Europe/Berlin (window 90 min)" in shown_text
    assert "member: web-1" in shown_text and "by rule" in shown_text
    listed = ok(api_server.sbr("policy", "list")).stdout
    assert "nightly" in listed and "disk1" in listed
    # a stored schedule the server can no longer read is shown as it is, with the reason
    broken = Schedule.get(Schedule.kind == "daily")
    Schedule.update(expression="garbled").where(Schedule.id == broken.id).execute()
    ok(api_server.sbr("policy", "list"))  # a table, no longer a crash (exit 70)
    shown_text = ok(api_server.sbr("policy", "show", "nightly")).stdout
    assert "schedule: daily garbled (this schedule cannot be read; replace it)" in shown_text
    Schedule.update(expression=broken.expression).where(Schedule.id == broken.id).execute()

    ok(api_server.sbr("policy", "add", "snaps", "--kind", "snapshot", "--instance", "db-1",
                      "--schedule", "@daily", "--keep-snapshots", "3",
                      "--snapshot-kind", "external", "--no-quiesce"))
    snaps = Policy.get(Policy.name == "snaps")
    assert snaps.retention == {"keep_snapshots": 3}
    assert snaps.options == {"kind": "external", "quiesce": False}
    assert 'options: {"kind": "external", "quiesce": false}' in ok(
        api_server.sbr("policy", "show", "snaps")).stdout
    one_line_error(api_server.sbr("destination", "remove", "disk1"),
                   "used by policies: nightly")
    ok(api_server.sbr("policy", "remove", "nightly"))
    ok(api_server.sbr("destination", "remove", "disk1"))
    ok(api_server.sbr("provider", "update", "nas1", "--set", "exclude=*.tmp"))
    actions = {r.action for r in AuditLog.select().where(AuditLog.username == "admin")}
    assert {"destination.add", "provider.add", "inventory.sync", "policy.add",
            "policy.remove", "destination.remove", "provider.update"} <= actions


def test_bad_input_is_one_line_naming_the_field(api_server: ApiServer, tmp_path: Path) -> None:
    _login(api_server)
    ok(api_server.sbr("destination", "add", "disk1", "--plugin", "filesystem",
                      "--set", f"path={tmp_path}"))
    cases = [
        (("policy", "add", "p", "--destination", "disk1", "--schedule", "cron:61 * * * *"),
         "schedules[0].expression: '61 * * * *' is not a valid cron expression"),
        (("policy", "add", "p", "--destination", "nowhere"),
         "destination: no destination named 'nowhere'"),
        (("policy", "add", "p", "--destination", "disk1", "--keep-last", "-1"),
         "retention.last: must be 0 or more"),
        (("policy", "add", "p", "--destination", "disk1", "--priority", "101"),
         "priority: must be a whole number from 0 to 100"),
        (("policy", "add", "p", "--destination", "disk1", "--instance", "4242"),
         "instances[0]: no instance with id 4242"),
        (("policy", "add", "p", "--destination", "disk1", "--rule", "web"),
         "--rule: 'web' is not KEY=VALUE"),
        (("policy", "add", "p", "--destination", "disk1", "--rule", "colour=red"),
         "rules[0].colour: unknown condition"),
        (("policy", "add", "p", "--destination", "disk1", "--window", "30"),
         "--window/--timezone: give a --schedule"),
        (("destination", "add", "d2", "--plugin", "tape"), "plugin: no destination plugin"),
        (("destination", "add", "d2", "--plugin", "filesystem", "--set", "path"),
         "--set: 'path' is not KEY=VALUE"),
        (("destination", "add", "d2", "--plugin", "filesystem", "--set", "path=/x",
          "--set", "speed=9"), "settings.speed: unknown setting"),
        (("provider", "add", "p1", "--plugin", "fileshare", "--set", f"path={tmp_path}/no",
          "--test"), "test: the connection test failed"),
        (("inventory", "sync", "nope"), "no provider connection named 'nope'"),
        (("policy", "show", "nope"), "no policy named 'nope'"),
    ]
    for args, fragment in cases:
        result = api_server.sbr(*args)
        one_line_error(result, fragment)
        assert result.returncode == 2, (args, result.returncode)
    assert Policy.select().count() == 0


def test_the_server_enforces_the_role_of_the_cli_user(api_server: ApiServer) -> None:
    _login(api_server, "viewer")
    result = api_server.sbr("policy", "add", "p", "--destination", "disk1")
    one_line_error(result, "permission denied", "configure")
    assert result.returncode == 3
    assert as_json(api_server.sbr("policy", "list", "--json")) == []


def test_environment_variables_override_the_saved_login(api_server: ApiServer) -> None:
    token = api_server.token("viewer")
    env = {**api_server.env, "SBR_SERVER": api_server.url, "SBR_TOKEN": token}
    assert as_json(sbr("policy", "list", "--json", env=env)) == []
    env["SBR_TOKEN"] = "sbru_" + "x" * 43
    one_line_error(sbr("policy", "list", env=env), "unknown API token", "sbr login")

    # the saved token is never sent to another server
    _login(api_server, "admin")
    env = {**api_server.env, "SBR_SERVER": "http://127.0.0.1:9"}
    one_line_error(sbr("policy", "list", env=env), "not logged in")
    env["SBR_SERVER"] = api_server.url + "/"
    assert as_json(sbr("policy", "list", "--json", env=env)) == []
