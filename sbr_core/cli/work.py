"""Work through the server's REST API: ``sbr backup``, ``backups``, ``restore``, ``import``,
``tasks``, ``task`` and ``cancel``.

These commands act as a user (``sbr login``, or ``SBR_SERVER``/``SBR_TOKEN``), never on the
database directly, so the server checks the role and writes the audit log. A task is a
workflow (a backup's export and store together); its id is what ``sbr backup`` prints.
``--wait`` and ``--follow`` end with the workflow and exit non-zero when it failed or was
cancelled, printing the reason.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from sbr_core.cli.admin import key_value_pairs
from sbr_core.cli.api_client import ApiClient, ApiError
from sbr_core.cli.output import size
from sbr_core.errors import SbrError, TaskCancelled, UsageError
from sbr_core.providers.items import RESTORE_CONFLICTS

FINISHED = ("succeeded", "failed", "cancelled")
POLL_SECONDS = 1.0
#: How long --wait keeps asking a server that does not answer before giving up.
UNREACHABLE_PATIENCE = 60.0


class WorkflowFailed(SbrError):
    """The workflow ``--wait`` or ``--follow`` watched ended failed."""


# --- formatting ---------------------------------------------------------------------------


def _duration(seconds: Any) -> str:
    if seconds is None:
        return ""
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _time(value: str | None) -> str:
    """An API time (UTC) in the local time zone."""
    if not value:
        return ""
    moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone()
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _speed(value: Any) -> str:
    return f"{size(value)}/s" if value else ""


def _whole(value: str, name: str) -> int:
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise UsageError(f"{name}: must be a whole number from 1, not {value!r}")
    return int(text)


def _what(flow: dict[str, Any]) -> str:
    """``backup of share1 to disk1``, ``restore of backup 5 to /srv/x``."""
    params = flow.get("params") or {}
    if flow["kind"] == "backup":
        text = f"backup of {flow.get('instance') or '?'}"
        return text + (f" to {flow['destination']}" if flow.get("destination") else "")
    if flow["kind"] == "restore":
        return f"restore of backup {params.get('backup_id')} to {params.get('path')}"
    if flow["kind"] == "restore-import":
        into = "over the original" if params.get("replace") else f"as {params.get('name')}"
        return f"import of backup {params.get('backup_id')} {into}"
    if flow["kind"] == "mount":
        return f"mount of backup {params.get('backup_id')}"
    if flow.get("instance"):
        return f"{flow['kind']} of {flow['instance']}"
    return f"{flow['kind']} on {flow['destination']}" if flow.get("destination") \
        else flow["kind"]


def _progress_text(current: dict[str, Any] | None) -> tuple[str, str, str]:
    """Percent, speed and ETA cells of a workflow's current task."""
    if not current or current.get("state") != "running":
        return "", "", ""
    progress = current.get("progress") or {}
    percent = progress.get("percent")
    return (f"{percent:.0f}%" if percent is not None else size(progress.get("done")),
            _speed(progress.get("speed")), _duration(progress.get("eta_seconds")))


def _client() -> ApiClient:
    return ApiClient.from_environment()


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


# --- waiting for a workflow ---------------------------------------------------------------


def _poll(client: ApiClient, workflow_id: int, after: int) -> dict[str, Any]:
    """The workflow with its log lines after ``after``; a server that does not answer is
    asked again for a while (it may be restarting)."""
    deadline = time.monotonic() + UNREACHABLE_PATIENCE
    while True:
        try:
            detail: dict[str, Any] = client.get(f"/tasks/{workflow_id}", after=after)
            return detail
        except ApiError as exc:
            if exc.status != 0 or time.monotonic() > deadline:
                raise
            time.sleep(POLL_SECONDS)


def _follow(client: ApiClient, workflow_id: int,
            on_update: Callable[[dict[str, Any]], None], *,
            first: dict[str, Any] | None = None) -> dict[str, Any]:
    """Poll until the workflow ends; ``on_update`` sees each answer (with only the new log
    lines), starting with ``first`` when the caller already has it. Returns the last
    answer."""
    after = 0
    while True:
        detail = first if first is not None else _poll(client, workflow_id, after)
        first = None
        on_update(detail)
        if detail["log"]:
            after = detail["log"][-1]["id"]
        if detail["state"] in FINISHED and not detail.get("log_more"):
            return detail
        if not detail.get("log_more"):
            time.sleep(POLL_SECONDS)


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Callable[[dict[str, Any]], None]]:
    """An updater that draws a bar (bytes, speed, ETA, as the server measures them) on a
    terminal's stderr, and does nothing otherwise."""
    if not enabled:
        yield lambda detail: None
        return
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.fields[amount]}"), TextColumn("{task.fields[speed]}"),
               TextColumn("{task.fields[eta]}"))
    with Progress(*columns, console=console, transient=True) as bar:
        # One row, for the step the workflow is at; it starts afresh with each step.
        row = bar.add_task("waiting", total=None, amount="", speed="", eta="")
        shown_task: list[int] = []

        def update(detail: dict[str, Any]) -> None:
            for line in detail["log"]:
                if line["level"] in ("warning", "error"):
                    bar.console.print(f"{line['level']}: {escape(line['message'])}")
            current = detail.get("current") or {}
            if not current:
                return
            progress = current.get("progress") or {}
            total, done = progress.get("total") or 0, progress.get("done") or 0
            if shown_task != [current["task_id"]]:
                shown_task[:] = [current["task_id"]]
                bar.reset(row, total=total or None)
            state = "" if current["state"] == "running" else f" ({current['state']})"
            eta = progress.get("eta_seconds")
            bar.update(row, description=f"{current['step']}{state}", completed=done,
                       total=total or None,
                       amount=f"{size(done)} of {size(total)}" if total else size(done),
                       speed=_speed(progress.get("speed")),
                       eta=f"ETA {_duration(eta)}" if eta is not None else "")

        yield update


def _wait(client: ApiClient, workflow_id: int) -> dict[str, Any]:
    """Wait for the workflow to end, with a progress bar on a terminal."""
    try:
        with _progress_bar(sys.stderr.isatty()) as update:
            return _follow(client, workflow_id, update)
    except KeyboardInterrupt:
        click.echo(f"stopped waiting; task {workflow_id} goes on (`sbr task {workflow_id} "
                   f"--follow` to follow it, `sbr cancel {workflow_id}` to stop it)", err=True)
        raise click.exceptions.Exit(130) from None


def _outcome(detail: dict[str, Any]) -> str:
    """What a finished workflow did, in one line; raises if it did not succeed."""
    head = f"task {detail['id']}: {_what(detail)}"
    if detail["state"] == "cancelled":
        raise TaskCancelled(f"{head} was cancelled: {detail.get('error') or 'by request'}")
    if detail["state"] != "succeeded":
        raise WorkflowFailed(f"{head} failed: {detail.get('error') or 'no reason given'}")
    backup = detail.get("backup")
    if backup:
        return (f"{head} succeeded: backup {backup['id']} ({backup['kind']}), "
                f"{size(backup['bytes_logical'])} read, {size(backup['bytes_stored'])} "
                "stored")
    figures = (detail["tasks"][-1].get("result") or {}) if detail.get("tasks") else {}
    if "files" in figures:
        return (f"{head} succeeded: {figures['files']} files, "
                f"{size(figures.get('bytes', 0))}")
    if "external_id" in figures:
        return f"{head} succeeded: VM {figures['name']} ({figures['external_id']})"
    if "disks" in figures:
        return (f"{head} succeeded: {figures['disks']} disk image(s), "
                f"{size(figures.get('bytes', 0))}")
    return f"{head} succeeded"


def _started(client: ApiClient, flow: dict[str, Any], *, wait: bool, as_json: bool) -> None:
    """After creating a workflow: print it, or wait for it and print how it ended."""
    if not wait:
        if as_json:
            _print_json(flow)
        else:
            click.echo(f"task {flow['id']}: {_what(flow)} {flow['state']} "
                       f"(`sbr task {flow['id']} --follow` to follow it)")
        return
    if not as_json:
        click.echo(f"task {flow['id']}: {_what(flow)} started")
    detail = _wait(client, flow["id"])
    if as_json:
        _print_json(detail)
        _outcome(detail)
        return
    click.echo(_outcome(detail))


# --- commands -----------------------------------------------------------------------------


@click.command("backup")
@click.argument("instance")
@click.option("--destination", "-d", help="Destination name (default: the one of the "
                                          "instance's backup policy).")
@click.option("--full", is_flag=True, help="A full backup, even if an earlier one exists.")
@click.option("--wait", is_flag=True, help="Wait until it ends; non-zero exit if it fails.")
@click.option("--json", "as_json", is_flag=True, help="Print the task as JSON.")
def backup(instance: str, destination: str | None, full: bool, wait: bool,
           as_json: bool) -> None:
    """Back up INSTANCE (a name or an id) now."""
    body: dict[str, Any] = {"instance": instance, "full": full}
    if destination is not None:
        body["destination"] = destination
    client = _client()
    _started(client, client.post("/backups", body), wait=wait, as_json=as_json)


@click.command("backups")
@click.argument("instance", required=False)
@click.option("--destination", "-d", help="Only backups on this destination.")
@click.option("--all", "show_all", is_flag=True, help="Also backups that are not complete.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def backups(instance: str | None, destination: str | None, show_all: bool, limit: int,
            as_json: bool) -> None:
    """List backups in the catalog, newest first (of INSTANCE, a name or an id)."""
    rows = _client().get("/backups", instance=instance, destination=destination,
                         all=1 if show_all else None, limit=limit)
    if as_json:
        _print_json(rows)
        return
    table = Table("ID", "Instance", "Destination", "Kind", "State", "Finished", "Read",
                  "Stored", "Policy", box=box.SIMPLE_HEAD, title=None if rows else "no backups")
    for row in rows:
        table.add_row(str(row["id"]), escape(row["instance"]), escape(row["destination"]),
                      row["kind"], row["state"], _time(row["finished_at"]),
                      size(row["bytes_logical"]), size(row["bytes_stored"]),
                      escape(row["policy"] or ""))
    Console().print(table)


@click.command("restore")
@click.argument("backup_id")
@click.option("--to", "target", help="Absolute path on the node to restore into.")
@click.option("--original", is_flag=True,
              help="Back into the backed-up instance, where the files were (its provider "
                   "writes them, with owners, links and extended attributes).")
@click.option("--instance", metavar="INSTANCE",
              help="Back into this instance (id or name) of the same plugin instead.")
@click.option("--into", metavar="FOLDER", default="",
              help="With --original or --instance: below this folder of the instance.")
@click.option("--conflict", type=click.Choice(list(RESTORE_CONFLICTS)),
              help="With --original or --instance: what to do with what exists already "
                   "(rename keeps both; the default).")
@click.option("--include", default="",
              help="Only this path of the backup (a file or a directory and all below it).")
@click.option("--format", "image_format", type=click.Choice(["raw", "qcow2"]),
              help="VM backups: the format of the disk images (default raw).")
@click.option("--disk", "disks", multiple=True, metavar="KEY",
              help="VM backups: only this disk (e.g. vda); repeat for more. Default: all.")
@click.option("--wait", is_flag=True, help="Wait until it ends; non-zero exit if it fails.")
@click.option("--json", "as_json", is_flag=True, help="Print the task as JSON.")
def restore(backup_id: str, target: str | None, original: bool, instance: str | None,
            into: str, conflict: str | None, include: str, image_format: str | None,
            disks: tuple[str, ...], wait: bool, as_json: bool) -> None:
    """Restore backup BACKUP_ID: into the directory --to on a node (the files of a file
    backup, or the disks of a VM backup as image files, one per disk, with the VM's
    configuration beside them); or, for a file share or application backup, back into
    its own instance (--original) or another one (--instance)."""
    number = _whole(backup_id, "BACKUP_ID")
    if sum((target is not None, original, instance is not None)) != 1:
        raise UsageError("say where to restore: --to PATH, --original or --instance "
                         "INSTANCE (one of them)")
    if target is not None and (into or conflict):
        raise UsageError("--into and --conflict go with --original or --instance, not --to")
    client = _client()
    body: dict[str, Any] = {}
    if target is not None:
        body["to"] = target
    else:
        body["instance"] = instance if instance is not None \
            else client.get(f"/backups/{number}")["instance_id"]
        if into:
            body["into"] = into
        if conflict:
            body["conflict"] = conflict
    if include:
        body["include"] = include
    if image_format:
        body["format"] = image_format
    if disks:
        body["disks"] = list(disks)
    _started(client, client.post(f"/backups/{number}/restore", body), wait=wait,
             as_json=as_json)


@click.command("import")
@click.argument("backup_id")
@click.option("--name", help="The new VM's name.")
@click.option("--directory", help="Absolute path on the node for the new VM's disk images.")
@click.option("--pool", help="Storage pool for the new VM's disk images (KVM: a dir pool).")
@click.option("--disk-target", "disk_targets", multiple=True, metavar="KEY=PATH",
              help="Where one disk's image goes, e.g. vda=/srv/vm/new.qcow2; repeatable.")
@click.option("--disk-format", type=click.Choice(["raw", "qcow2"]),
              help="Image format of the new disks (default: as backed up).")
@click.option("--network", "networks", multiple=True, metavar="OLD=NEW",
              help="Connect NICs on network OLD to NEW instead (NEW empty: drop them); "
                   "repeatable.")
@click.option("--disk", "disks", multiple=True, metavar="KEY",
              help="Only this disk (e.g. vda); repeat for more. Default: all.")
@click.option("--power-on", is_flag=True, help="Start the VM once it is imported.")
@click.option("--keep-identity", is_flag=True,
              help="Keep the backed-up UUID and MAC addresses (default: new ones).")
@click.option("--replace", is_flag=True,
              help="Overwrite the original VM, which must be shut off (needs --confirm).")
@click.option("--confirm", metavar="VM", help="With --replace: the original VM's name.")
@click.option("--wait", is_flag=True, help="Wait until it ends; non-zero exit if it fails.")
@click.option("--json", "as_json", is_flag=True, help="Print the task as JSON.")
def import_vm(backup_id: str, name: str | None, directory: str | None, pool: str | None,
              disk_targets: tuple[str, ...], disk_format: str | None,
              networks: tuple[str, ...], disks: tuple[str, ...], power_on: bool,
              keep_identity: bool, replace: bool, confirm: str | None, wait: bool,
              as_json: bool) -> None:
    """Recreate the VM of backup BACKUP_ID on its hypervisor: as a new VM (--name and
    --directory, --pool or --disk-target), or over the original with --replace."""
    number = _whole(backup_id, "BACKUP_ID")
    body: dict[str, Any] = {"power_on": power_on, "new_identity": not keep_identity}
    if replace:
        body.update(replace=True, confirm=confirm or "")
    for key, value in (("name", name), ("directory", directory), ("pool", pool),
                       ("disk_format", disk_format)):
        if value:
            body[key] = value
    if disk_targets:
        body["disk_targets"] = key_value_pairs(disk_targets, "--disk-target")
    if networks:
        body["network_map"] = key_value_pairs(networks, "--network")
    if disks:
        body["disks"] = list(disks)
    client = _client()
    _started(client, client.post(f"/backups/{number}/import", body), wait=wait,
             as_json=as_json)


@click.command("delete-backup")
@click.argument("backup_id")
@click.option("--yes", is_flag=True, help="Do not ask (needed when not on a terminal).")
def delete_backup(backup_id: str, yes: bool) -> None:
    """Delete backup BACKUP_ID: it expires now, and the next prune removes it from its
    repository and the catalog. There is no undo once it is pruned; every other backup
    stays restorable."""
    number = _whole(backup_id, "BACKUP_ID")
    client = _client()
    if not yes:
        row = client.get(f"/backups/{number}")
        if not sys.stdin.isatty():
            raise UsageError(f"--yes: not on a terminal, so nobody can confirm; add --yes to "
                             f"delete backup {number}")
        click.confirm(f"Delete backup {number} ({row['kind']} of {row['instance']} on "
                      f"{row['destination']}, {_time(row['finished_at'])})?", abort=True)
    row = client.delete(f"/backups/{number}", {"confirm": number})
    click.echo(f"backup {number} ({row['kind']} of {row['instance']}) expired; the next "
               "prune removes it from the repository and the catalog")


def _tasks_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(box=box.SIMPLE_HEAD, title=title if not rows else None)
    table.add_column("ID", no_wrap=True)
    table.add_column("What", ratio=1, min_width=16, overflow="fold")
    for name in ("State", "Step", "Node", "Done", "Speed", "ETA"):
        table.add_column(name, no_wrap=True)
    table.add_column("Created", max_width=11)
    for row in rows:
        current = row.get("current") or {}
        percent, speed, eta = _progress_text(current)
        what = escape(_what(row))
        if row.get("error") and row["state"] != "cancelled":
            what += f"\n[red]{escape(row['error'])}[/red]"
        table.add_row(str(row["id"]), what, row["state"], current.get("step", ""),
                      escape(current.get("node") or ""), percent, speed, eta,
                      _time(row["created_at"])[5:16])
    return table


@click.command("tasks")
@click.option("--all", "show_all", is_flag=True, help="Finished tasks too.")
@click.option("--watch", is_flag=True, help="Refresh until Ctrl-C.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def tasks(show_all: bool, watch: bool, limit: int, as_json: bool) -> None:
    """List running and queued tasks (with --all: finished ones too), newest first."""
    if watch and as_json:
        raise UsageError("--watch: cannot be combined with --json")
    client = _client()
    state = "all" if show_all else "active"
    title = "no tasks" if show_all else "no running or queued tasks"

    def fetch() -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = client.get("/tasks", state=state, limit=limit)
        return rows

    if as_json:
        _print_json(fetch())
        return
    if not watch:
        Console().print(_tasks_table(fetch(), title))
        return
    try:
        with Live(_tasks_table(fetch(), title), auto_refresh=False) as live:
            while True:
                time.sleep(POLL_SECONDS)
                live.update(_tasks_table(fetch(), title), refresh=True)
    except KeyboardInterrupt:
        return


def _show_task(detail: dict[str, Any], console: Console) -> None:
    console.print(f"[bold]task {detail['id']}[/bold]: {escape(_what(detail))}: "
                  f"{detail['state']}")
    console.print(f"requested by {escape(detail['requested_by'] or '?')} at "
                  f"{_time(detail['created_at'])}"
                  + (f", finished {_time(detail['finished_at'])}"
                     if detail.get("finished_at") else ""))
    if detail.get("error"):
        console.print(f"error: {escape(detail['error'])}")
    table = Table("Step", "State", "Node", "Tries", "Done", "Speed", "Started", "Finished",
                  "Error", box=box.SIMPLE_HEAD)
    for task in detail["tasks"]:
        progress = task["progress"]
        amount = (f"{progress['percent']:.0f}% of {size(progress['total'])}"
                  if progress.get("percent") is not None else size(progress["done"]))
        table.add_row(task["step"], task["state"], escape(task["node"] or ""),
                      f"{task['attempts']}/{task['max_attempts']}",
                      amount if progress["done"] or task["state"] == "running" else "",
                      _speed(progress["speed"]) if task["state"] == "running" else "",
                      _time(task["started_at"]), _time(task["finished_at"]),
                      escape(task["error"]))
    console.print(table)


def _print_log(lines: list[dict[str, Any]], console: Console) -> None:
    for line in lines:
        console.print(f"{_time(line['at'])} {line['level']:<7} {line['step']}: "
                      f"{escape(line['message'])}", soft_wrap=True)


@click.command("task")
@click.argument("task_id")
@click.option("--follow", "-f", is_flag=True,
              help="Print log lines as they come until the task ends; non-zero exit if it "
                   "failed or was cancelled.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def task(task_id: str, follow: bool, as_json: bool) -> None:
    """Show task TASK_ID: its steps, their progress and its log."""
    number = _whole(task_id, "TASK_ID")
    if follow and as_json:
        raise UsageError("--follow: cannot be combined with --json")
    client = _client()
    console = Console()
    # One look: a server that does not answer is an error now (only following waits).
    first: dict[str, Any] = client.get(f"/tasks/{number}", after=0)
    if as_json:
        detail, lines = first, list(first["log"])
        while detail.get("log_more"):
            detail = client.get(f"/tasks/{number}", after=lines[-1]["id"])
            lines += detail["log"]
        _print_json({**detail, "log": lines, "log_more": False})
        return
    _show_task(first, console)
    if not follow:
        _print_log(first["log"], console)
        if first.get("log_more"):
            console.print(f"(more log lines: `sbr task {number} --json`)")
        return
    try:
        last = _follow(client, number, lambda detail: _print_log(detail["log"], console),
                       first=first)
    except KeyboardInterrupt:
        return
    click.echo(_outcome(last))


@click.command("cancel")
@click.argument("task_id")
def cancel(task_id: str) -> None:
    """Cancel task TASK_ID: what has not started stops now, a running step unwinds."""
    number = _whole(task_id, "TASK_ID")
    detail = _client().post(f"/tasks/{number}/cancel")
    if detail["state"] == "cancelling":
        click.echo(f"task {number}: cancelling (the running step stops at its next "
                   "heartbeat)")
    else:
        click.echo(f"task {number}: {detail['state']}")
