"""``sbr mount``: a VM backup's disks served over NBD by a node, until cancelled or timed out.

The command starts the mount, waits until a node serves it, and prints one NBD URL per
disk. The export name in those URLs is the key to the disks: the server shows it only in
the answer to the request that started the mount, so only this command prints it.
"""

from __future__ import annotations

import re
import sys
import time
from typing import Any

import click

from sbr_core.cli.work import _client, _outcome, _poll, _print_json, _whole
from sbr_core.engine.mount import DEFAULT_MINUTES, MAX_MINUTES
from sbr_core.errors import SbrError

#: The mount step's first log line (sbr_core.engine.mount.serve_backup).
SERVING = re.compile(r"^serving (nbd://\S+/) until (.+? UTC), read-only: (.+?);")
DISK = re.compile(r"(\S+) \((\d+) bytes\)")
POLL_SECONDS = 0.5


@click.command("mount")
@click.argument("backup_id")
@click.option("--listen", default="127.0.0.1", show_default=True,
              help="Address on the node to serve on (0.0.0.0: all of them). NBD is not "
                   "encrypted: keep it on loopback or a trusted network.")
@click.option("--port", type=click.IntRange(0, 65535), default=0,
              help="TCP port on the node (default: any free one).")
@click.option("--minutes", type=click.IntRange(1, MAX_MINUTES), default=DEFAULT_MINUTES,
              show_default=True, help="How long to serve; `sbr cancel` ends it sooner.")
@click.option("--disk", "disks", multiple=True, metavar="KEY",
              help="Only this disk (e.g. vda); repeat for more. Default: all.")
@click.option("--json", "as_json", is_flag=True, help="Print the task and URLs as JSON.")
def mount_backup(backup_id: str, listen: str, port: int, minutes: int,
                 disks: tuple[str, ...], as_json: bool) -> None:
    """Serve the disks of VM backup BACKUP_ID read-only over NBD from a node, without
    restoring them, e.g. for `qemu-nbd --read-only --connect /dev/nbd0 URL` and a mount of
    the guest's file system, or `guestfish --ro -a URL`."""
    number = _whole(backup_id, "BACKUP_ID")
    client = _client()
    body: dict[str, Any] = {"listen": listen, "port": port, "minutes": minutes}
    if disks:
        body["disks"] = list(disks)
    flow = client.post(f"/backups/{number}/mount", body)
    if not as_json:
        click.echo(f"task {flow['id']}: mount of backup {number} started; waiting for a node",
                   err=True)
    served = _wait_until_served(client, flow["id"])
    base, until, listed = served["base"], served["until"], served["disks"]
    urls = {key: f"{base}{flow['export']}/{key}" for key in listed}
    if as_json:
        _print_json({"task": flow["id"], "backup_id": number, "node": served["node"],
                     "until": until, "urls": urls, "sizes": listed})
        return
    click.echo(f"task {flow['id']}: backup {number} is served read-only by node "
               f"{served['node']} until {until}:")
    for key, url in urls.items():
        click.echo(f"  {key}  {url}")
    click.echo(f"stop it with `sbr cancel {flow['id']}`")


def _wait_until_served(client: Any, workflow_id: int) -> dict[str, Any]:
    """Follow the mount's log until its serving line; raise if it ends before that."""
    after = 0
    try:
        while True:
            detail = _poll(client, workflow_id, after)
            for line in detail["log"]:
                found = SERVING.match(line["message"])
                if found:
                    current = detail.get("current") or {}
                    return {"base": found.group(1), "until": found.group(2),
                            "disks": {key: int(size) for key, size
                                      in DISK.findall(found.group(3))},
                            "node": current.get("node") or "?"}
                if line["level"] in ("warning", "error"):
                    click.echo(f"{line['level']}: {line['message']}", err=True)
            if detail["log"]:
                after = detail["log"][-1]["id"]
            if detail["state"] in ("succeeded", "failed", "cancelled"):
                _outcome(detail)  # raises for a failed or cancelled one
                raise SbrError(f"task {workflow_id} ended without serving the backup")
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        click.echo(f"stopped waiting; task {workflow_id} goes on (`sbr cancel {workflow_id}` "
                   "to stop it)", err=True)
        sys.exit(130)
