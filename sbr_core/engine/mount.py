"""The mount step: a backup's disks served over NBD from the node, read-only, for a while.

A mount reads on demand (DESIGN.md, "Workflows and tasks": restore *or on-demand read* →
mount): nothing is restored first, each client read fetches the chunks it touches. The step
runs until its time is up (the workflow succeeds) or it is cancelled (the workflow is
cancelled); both close every client connection. The repository's read lock is held all the
while, so garbage collection never removes what a client may still read.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sbr_core.errors import TaskCancelled, UsageError
from sbr_core.steps import StepContext, StepResult

if TYPE_CHECKING:
    from sbr_core.repository import Manifest, Repository
    from sbr_core.repository.nbdserver import NbdDiskServer

#: How long a mount is served unless the request says otherwise, and at most.
DEFAULT_MINUTES = 60
MAX_MINUTES = 7 * 24 * 60
POLL_SECONDS = 0.5


def serve_backup(repo: Repository, manifest: Manifest, context: StepContext, *,
                 announce: Callable[[], None]) -> StepResult:
    """Serve the disks of ``manifest`` named in the workflow's params (all by default) at
    ``listen``:``port`` (a free port when 0) for ``minutes``; ``announce`` pushes the log
    line that says where, so the user waiting for it need not wait for a heartbeat."""
    from sbr_core.repository import DiskImageReader
    from sbr_core.repository.nbdserver import NbdDiskServer

    params = context.params
    secret = str(params.get("export", ""))
    if not secret:
        raise UsageError("export: the mount has no export name")
    if not manifest.disks:
        raise UsageError(f"backup {manifest.id[:8]} holds no disk images: a mount serves "
                         "disks; restore files with a restore")
    wanted = [str(key) for key in params.get("disks") or ()]
    known = {disk.key: disk for disk in manifest.disks}
    missing = [key for key in wanted if key not in known]
    if missing:
        raise UsageError(f"disks: backup {manifest.id[:8]} has no disk "
                         f"{', '.join(missing)} (it has {', '.join(known)})")
    disks = [known[key] for key in wanted] if wanted else list(manifest.disks)
    listen = str(params.get("listen", "127.0.0.1"))
    minutes = int(params.get("minutes", DEFAULT_MINUTES))
    exports = {f"{secret}/{disk.key}": (lambda d=disk: DiskImageReader(repo, d))
               for disk in disks}
    sizes = {f"{secret}/{disk.key}": disk.size for disk in disks}
    log = context.logger
    with repo.reading():
        server = NbdDiskServer(exports, sizes, host=listen, port=int(params.get("port", 0)))
        until = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=minutes)
        deadline = time.monotonic() + minutes * 60
        with server:
            log.info("serving nbd://%s:%d/ until %s UTC, read-only: %s; a disk's export name "
                     "is the mount's export name, a slash and the disk's key; cancel this "
                     "task to stop", _url_host(listen), server.port,
                     until.strftime("%Y-%m-%d %H:%M"),
                     ", ".join(f"{d.key} ({d.size} bytes)" for d in disks))
            announce()
            try:
                while time.monotonic() < deadline:
                    context.op.check()
                    context.op.progress(server.bytes_read, 0)
                    time.sleep(POLL_SECONDS)
            except TaskCancelled:
                log.info("mount stopped by request: %s", _served(server))
                raise
    if server.errors:
        log.warning("%d read(s) failed; the last: %s", server.errors, server.last_error)
    return StepResult(summary=f"mount ended after {minutes} minute(s): {_served(server)}",
                      figures={"connections": server.connections, "reads": server.reads,
                               "bytes_read": server.bytes_read, "errors": server.errors})


def _served(server: NbdDiskServer) -> str:
    return (f"{server.connections} connection(s), {server.reads} read(s), "
            f"{server.bytes_read} bytes served")


def _url_host(listen: str) -> str:
    """The host part of the URL a client uses: this node's name when listening on every
    address, brackets around an IPv6 address."""
    address = ipaddress.ip_address(listen)
    if address.is_unspecified:
        return socket.getfqdn()
    return f"[{listen}]" if address.version == 6 else listen
