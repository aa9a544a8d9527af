"""``sbr backup``, ``backups``, ``restore``, ``tasks``, ``task`` and ``cancel`` as an admin
runs them: real ``sbr`` processes talking to a real ``sbr server`` over HTTP, with a real
``sbr node`` doing the work where a test needs one; on SQLite and MariaDB."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sbr_core.db.schema import AuditLog, Backup, Workflow
from tests.api_server import ApiServer, Cli
from tests.cli_runs import SBR, as_json, ok, one_line_error, sbr
from tests.integration.api.test_work_api import make_site


def run_with_terminal_stderr(args: list[str], env: dict[str, str]
                             ) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run ``sbr ARGS`` with stderr on a pseudo-terminal (where --wait draws its bar);
    the result (stdout captured) and what the terminal showed."""
    main, secondary = pty.openpty()
    shown: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(main, 4096)
            except OSError:  # the other side closed
                return
            if not data:
                return
            shown.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        result = subprocess.run([*SBR, *args], env=env, stdout=subprocess.PIPE,
                                stderr=secondary, text=True, timeout=120, check=False)
    finally:
        os.close(secondary)
        reader.join(timeout=10)
        os.close(main)
    terminal = b"".join(shown).decode(errors="replace")
    result.stderr = terminal
    return result, terminal


@pytest.fixture
def site(api_server: ApiServer, tmp_path: Path) -> dict[str, Any]:
    return make_site(api_server, tmp_path)


@pytest.fixture
def operator(api_server: ApiServer) -> Cli:
    return Cli(api_server, "operator")


@pytest.fixture
def node(api_server: ApiServer, site: dict[str, Any], tmp_path: Path) -> Iterator[None]:
    """A real ``sbr node`` working for the server."""
    with api_server.node("n1", tmp_path):
        yield


def test_backup_wait_lists_the_backup_and_restore_wait_writes_the_files(
        operator: Cli, site: dict[str, Any], node: None) -> None:
    done = ok(operator("backup", "share1", "--destination", "disk1", "--wait"))
    backup = Backup.get()
    assert f"succeeded: backup {backup.id} (full)" in done.stdout, done.stdout
    assert done.stderr == ""  # not a terminal: no progress bar

    (site["share"] / "docs" / "new.txt").write_text("new file\n")
    second, terminal = run_with_terminal_stderr(
        ["backup", "share1", "--destination", "disk1", "--wait"], operator.env)
    ok(second)
    assert "succeeded" in second.stdout and "(incremental)" in second.stdout, second.stdout
    assert "Traceback" not in terminal and "\x1b[" in terminal, terminal  # the bar was drawn
    newest = Backup.select().order_by(Backup.id.desc()).first()

    rows = as_json(operator("backups", "--json"))
    assert [(r["id"], r["instance"], r["destination"], r["kind"]) for r in rows] == [
        (newest.id, "share1", "disk1", "incremental"), (backup.id, "share1", "disk1", "full")]
    table = ok(operator("backups", "share1")).stdout
    assert "share1" in table and "disk1" in table and "full" in table

    target = site["tmp"] / "restored"
    restored = ok(operator("restore", str(backup.id), "--to", str(target), "--wait"))
    assert "succeeded" in restored.stdout and "files" in restored.stdout, restored.stdout
    assert (target / "docs" / "a.txt").read_text() == "alpha\n" * 1000
    assert (target / "b.bin").read_bytes() == (site["share"] / "b.bin").read_bytes()

    only_docs = site["tmp"] / "docs-only"
    ok(operator("restore", str(backup.id), "--to", str(only_docs), "--include", "docs",
                "--wait"))
    assert (only_docs / "docs" / "a.txt").exists() and not (only_docs / "b.bin").exists()

    flows = as_json(operator("tasks", "--all", "--json"))
    assert [(f["kind"], f["state"]) for f in flows] == [
        ("restore", "succeeded"), ("restore", "succeeded"), ("backup", "succeeded"),
        ("backup", "succeeded")]
    assert "no running or queued tasks" in ok(operator("tasks")).stdout
    backup_flow = flows[-1]["id"]
    shown = ok(operator("task", str(backup_flow))).stdout
    assert "export" in shown and "store" in shown and "stored backup" in shown, shown
    detail = as_json(operator("task", str(backup_flow), "--json"))
    assert [t["node"] for t in detail["tasks"]] == ["n1", "n1"]
    assert detail["backup"]["id"] == backup.id
    followed = ok(operator("task", str(backup_flow), "--follow"))
    assert "stored backup" in followed.stdout and "succeeded" in followed.stdout


def test_a_share_restores_to_its_original_location_keeping_both_skipping_or_overwriting(
        operator: Cli, site: dict[str, Any], node: None) -> None:
    share = site["share"]
    os.setxattr(share / "docs" / "a.txt", "user.origin", b"scanner")
    os.symlink("a.txt", share / "docs" / "latest")
    os.chmod(share / "docs" / "a.txt", 0o640)
    before = {p: (p.read_bytes(), p.stat().st_mode) for p in (share / "docs" / "a.txt",
                                                              share / "b.bin")}
    ok(operator("backup", "share1", "--destination", "disk1", "--wait"))
    backup = Backup.get()
    # The admin's bad day: a file deleted, one overwritten, a link gone.
    (share / "b.bin").unlink()
    (share / "docs" / "a.txt").write_text("ransomware was here\n")
    (share / "docs" / "latest").unlink()

    kept = ok(operator("restore", str(backup.id), "--original", "--wait"))
    assert "succeeded" in kept.stdout, kept.stdout
    assert (share / "b.bin").read_bytes() == before[share / "b.bin"][0]  # was gone: back
    assert os.readlink(share / "docs" / "latest") == "a.txt"
    assert (share / "docs" / "a.txt").read_text() == "ransomware was here\n"  # both kept
    renamed = share / "docs" / "a (restored).txt"
    assert (renamed.read_bytes(), renamed.stat().st_mode) == before[share / "docs" / "a.txt"]
    assert os.getxattr(renamed, "user.origin") == b"scanner"
    flow = Workflow.select().order_by(Workflow.id.desc()).first()
    assert flow.instance.name == "share1" and flow.provider_name == "nas1"
    detail = as_json(operator("task", str(flow.id), "--json"))
    lines = " ".join(line["message"] for line in detail["log"])
    assert "restored as a (restored).txt: a.txt exists" in lines, lines
    assert "on conflict: rename" in lines, lines

    renamed.unlink()
    skipped = ok(operator("restore", str(backup.id), "--original", "--conflict", "skip",
                          "--include", "docs/a.txt", "--wait"))
    assert "succeeded" in skipped.stdout, skipped.stdout
    assert (share / "docs" / "a.txt").read_text() == "ransomware was here\n"
    assert not renamed.exists()

    ok(operator("restore", str(backup.id), "--original", "--conflict", "overwrite",
                "--include", "docs/a.txt", "--wait"))
    assert ((share / "docs" / "a.txt").read_bytes(),
            (share / "docs" / "a.txt").stat().st_mode) == before[share / "docs" / "a.txt"]

    ok(operator("restore", str(backup.id), "--instance", "share1", "--into", "from-backup",
                "--include", "docs", "--wait"))
    assert (share / "from-backup" / "docs" / "a.txt").read_bytes() == \
        before[share / "docs" / "a.txt"][0]
    assert not (share / "from-backup" / "b.bin").exists()
    entry = AuditLog.select().where(AuditLog.action == "restore.start") \
        .order_by(AuditLog.id.desc()).first()
    assert entry.target == "share1" and entry.detail["into"] == "from-backup"


def test_a_restore_into_the_share_fails_naming_the_entries_it_could_not_write(
        operator: Cli, site: dict[str, Any], node: None) -> None:
    ok(operator("backup", "share1", "--destination", "disk1", "--wait"))
    backup = Backup.get()
    (site["share"] / "b.bin").unlink()
    (site["share"] / "b.bin").mkdir()  # a directory where the file was: overwrite cannot
    (site["share"] / "docs" / "a.txt").unlink()
    failed = operator("restore", str(backup.id), "--original", "--conflict", "overwrite",
                      "--wait")
    line = one_line_error(failed, "1 failed", "b.bin: a directory is in the way")
    assert "restored 2 entries" in line, line  # docs and docs/a.txt: written all the same
    assert (site["share"] / "docs" / "a.txt").read_text() == "alpha\n" * 1000
    assert (site["share"] / "b.bin").is_dir()


def test_a_backup_of_a_vanished_share_fails_wait_with_the_reason(
        operator: Cli, site: dict[str, Any], node: None) -> None:
    site["share"].rename(site["tmp"] / "gone")
    failed = operator("backup", "share1", "--destination", "disk1", "--wait")
    line = one_line_error(failed, "failed")
    assert failed.returncode == 1
    assert str(site["share"]) in line or "share1" in line, line
    assert Backup.select().count() == 0
    flow = Workflow.get()
    assert flow.state == "failed"
    following = operator("task", str(flow.id), "--follow")
    one_line_error(following, f"task {flow.id}", "failed")


def test_cancel_of_a_queued_backup_and_of_unknown_tasks(
        api_server: ApiServer, operator: Cli, site: dict[str, Any]) -> None:
    # no node runs: the backup stays queued
    flow = as_json(operator("backup", "share1", "--destination", "disk1", "--json"))
    assert flow["state"] == "pending"
    busy = operator("backup", "share1", "--destination", "disk1")
    one_line_error(busy, "share1", "already has a backup")
    assert busy.returncode == 2

    cancelled = ok(operator("cancel", str(flow["id"])))
    assert f"task {flow['id']}: cancelled" in cancelled.stdout
    assert Workflow.get_by_id(flow["id"]).state == "cancelled"
    one_line_error(operator("cancel", str(flow["id"])), "already cancelled")
    missing = operator("cancel", "99999")
    one_line_error(missing, "no task 99999")
    assert missing.returncode == 2
    one_line_error(operator("cancel", "abc"), "TASK_ID")


def test_wait_ends_non_zero_when_the_backup_is_cancelled_meanwhile(
        api_server: ApiServer, operator: Cli, site: dict[str, Any]) -> None:
    waiting = subprocess.Popen([*SBR, "backup", "share1", "--destination", "disk1", "--wait"],
                               env=operator.env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while Workflow.select().count() == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        flow = Workflow.get()
        ok(operator("cancel", str(flow.id)))
        out, err = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.communicate()
    result = subprocess.CompletedProcess(waiting.args, waiting.returncode, out, err)
    one_line_error(result, f"task {flow.id}", "was cancelled", "cancelled by request")
    assert f"task {flow.id}: backup of share1 to disk1 started" in out


def test_a_viewer_may_list_but_not_start_work(api_server: ApiServer,
                                              site: dict[str, Any]) -> None:
    viewer = Cli(api_server, "viewer")
    refused = viewer("backup", "share1", "--destination", "disk1")
    one_line_error(refused, "permission denied", "operate")
    assert refused.returncode == 3
    assert as_json(viewer("tasks", "--all", "--json")) == []
    assert as_json(viewer("backups", "--json")) == []
    assert Workflow.select().count() == 0


def test_bad_input_names_the_field_and_changes_nothing(
        api_server: ApiServer, operator: Cli, site: dict[str, Any]) -> None:
    backup = Backup.create(instance=site["instance"], destination=site["destination"],
                           repo_backup_id="abc", kind="full")
    cases = [
        (("backup", "nope", "--destination", "disk1"), "instance"),
        (("backup", "share1", "--destination", "nowhere"), "destination"),
        (("backup", "share1"), "destination"),
        (("restore", "abc", "--to", "/srv/x"), "BACKUP_ID"),
        (("restore", str(backup.id), "--to", "relative/dir"), "to"),
        (("restore", "99999", "--to", "/srv/x"), "no backup 99999"),
        (("restore", str(backup.id)), "--to PATH, --original or --instance"),
        (("restore", str(backup.id), "--to", "/srv/x", "--original"), "one of them"),
        (("restore", str(backup.id), "--to", "/srv/x", "--into", "a"), "--into"),
        (("restore", str(backup.id), "--instance", "nope"), "no instance 'nope'"),
        (("restore", str(backup.id), "--original", "--into", "../up"), "into"),
        (("task", "x1"), "TASK_ID"),
        (("task", "99999"), "no task 99999"),
        (("backups", "nope"), "instance"),
        (("tasks", "--watch", "--json"), "--watch"),
        (("task", "1", "--follow", "--json"), "--follow"),
    ]
    for args, fragment in cases:
        one_line_error(operator(*args), fragment)
    unknown = operator("restore", str(backup.id), "--original", "--conflict", "merge")
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr  # click's usage error
    assert "'--conflict': 'merge' is not one of 'rename', 'skip', 'overwrite'" in unknown.stderr
    assert Workflow.select().count() == 0
    logged_out = sbr("tasks", env={k: v for k, v in operator.env.items()
                                   if k not in ("SBR_SERVER", "SBR_TOKEN")})
    one_line_error(logged_out, "not logged in")


def test_tasks_watch_refreshes_until_interrupted(api_server: ApiServer, operator: Cli,
                                                 site: dict[str, Any]) -> None:
    as_json(operator("backup", "share1", "--destination", "disk1", "--json"))
    watching = subprocess.Popen([*SBR, "tasks", "--watch"], env=operator.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    watching.send_signal(signal.SIGINT)
    out, err = watching.communicate(timeout=30)
    assert watching.returncode == 0, err
    assert "Traceback" not in err
    assert "share1" in out and "pending" in out, out


def test_the_recovery_key_opens_the_servers_repository_without_the_server(
        api_server: ApiServer, operator: Cli, site: dict[str, Any], node: None) -> None:
    admin = Cli(api_server, "admin")
    one_line_error(admin("destination", "recovery-key", "disk1", "--out",
                         str(site["tmp"] / "early.json")), "holds no repository")
    assert not (site["tmp"] / "early.json").exists()
    ok(operator("backup", "share1", "--destination", "disk1", "--wait"))
    backup = Backup.get()
    one_line_error(operator("destination", "recovery-key", "disk1", "--out",
                            str(site["tmp"] / "op.json")), "configure")
    assert not (site["tmp"] / "op.json").exists()

    key_file = site["tmp"] / "disk1-recovery.json"
    ok(admin("destination", "recovery-key", "disk1", "--out", str(key_file)))
    assert key_file.stat().st_mode & 0o077 == 0
    saved = json.loads(key_file.read_text())
    assert saved["destination"] == "disk1" and saved["plugin"] == "filesystem"
    one_line_error(admin("destination", "recovery-key", "disk1", "--out", str(key_file)),
                   "already exists")
    assert AuditLog.select().where(AuditLog.action == "destination.recovery_key").count() == 1
    # no server involved: the standalone repository command with the exported passphrase
    env = {key: value for key, value in api_server.env.items()
           if key not in ("SBR_DATABASE_URL",)}
    listed = as_json(sbr("repo", "list", str(site["tmp"] / "repo"), "--json",
                         env={**env, "SBR_REPO_PASSWORD": saved["passphrase"]}))
    assert [b["backup_id"] for b in listed] == [backup.repo_backup_id]  # type: ignore[index]


def test_an_admin_deletes_a_backup_and_the_prune_removes_it_but_not_the_next_one(
        api_server: ApiServer, operator: Cli, site: dict[str, Any], node: None) -> None:
    admin = Cli(api_server, "admin")
    ok(operator("backup", "share1", "--destination", "disk1", "--wait"))
    (site["share"] / "docs" / "new.txt").write_text("new file\n")
    ok(operator("backup", "share1", "--destination", "disk1", "--wait"))
    full, incremental = Backup.select().order_by(Backup.id)

    one_line_error(operator("delete-backup", str(full.id), "--yes"), "does not grant 'configure'")
    one_line_error(admin("delete-backup", str(full.id)), "--yes: not on a terminal")
    status, answer = api_server.call("DELETE", f"/backups/{full.id}", {}, user="admin")
    assert status == 400 and "confirm" in answer["error"], answer
    assert Backup.get_by_id(full.id).state == "complete"  # nothing happened yet

    done = ok(admin("delete-backup", str(full.id), "--yes"))
    assert f"backup {full.id} (full of share1) expired" in done.stdout, done.stdout
    one_line_error(admin("delete-backup", str(full.id), "--yes"), "being deleted already")
    deadline = time.monotonic() + 60  # the server's next engine pass starts the prune
    while Backup.get_or_none(Backup.id == full.id) is not None:
        assert time.monotonic() < deadline, "the deleted backup was never pruned"
        time.sleep(0.3)
    assert AuditLog.get(AuditLog.action == "backup.delete").username == "admin"

    # the incremental is a whole picture of its own: it restores without its parent
    target = site["tmp"] / "after"
    ok(operator("restore", str(incremental.id), "--to", str(target), "--wait"))
    assert (target / "docs" / "new.txt").read_text() == "new file\n"
    assert (target / "b.bin").read_bytes() == (site["share"] / "b.bin").read_bytes()
