"""Who is working on a repository: one ``locks/<id>`` object per writer, kept fresh.

Writers never block each other: they write objects under names nobody else uses. The locks
exist for garbage collection, which must know which writers started before it condemned
data (see :mod:`.gc`). A lock not refreshed for ``stale_after`` seconds, or held by a
process of this host that no longer runs, belongs to a writer that died.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

import attrs

from sbr_core.errors import DestinationError, ObjectNotFound, RepositoryCorrupt, RepositoryError

log = logging.getLogger(__name__)

#: Seconds between refreshes, and after which an unrefreshed lock is stale. Tests shorten them.
REFRESH_SECONDS = float(os.environ.get("SBR_REPO_LOCK_REFRESH", "60"))
STALE_SECONDS = float(os.environ.get("SBR_REPO_LOCK_STALE", "900"))


@attrs.frozen
class LockInfo:
    id: str
    kind: str
    host: str
    pid: int
    created: float
    refreshed: float

    def stale(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        if self.host == socket.gethostname() and not _pid_alive(self.pid):
            return True
        return now - self.refreshed > STALE_SECONDS


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lock:
    """A held lock; a daemon thread refreshes it until :meth:`release`."""

    def __init__(self, repo: Any, kind: str, *, key: str | None = None) -> None:
        """Take a shared lock under ``locks/``, or the exclusive lock ``key`` (created only
        if absent: ObjectExists if someone holds it)."""
        self.repo = repo
        self.id = os.urandom(16).hex()
        self.key = key or f"locks/{self.id}"
        self.kind = kind
        self.created = time.time()
        self._stop = threading.Event()
        self._write(if_absent=key is not None)
        self.last_refresh = time.monotonic()
        self.lost = ""
        self._thread = threading.Thread(target=self._refresh_loop, daemon=True,
                                        name=f"sbr-lock-{self.id[:8]}")
        self._thread.start()

    def _write(self, *, if_absent: bool = False) -> None:
        self.repo.put_document(self.key, {
            "kind": self.kind, "host": socket.gethostname(), "pid": os.getpid(),
            "created": self.created, "refreshed": time.time()}, if_absent=if_absent)

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH_SECONDS):
            try:
                self.repo.destination.stat(self.key)
            except ObjectNotFound:
                # Someone (a gc that judged us dead) removed it: data we rely on may be gone.
                self.lost = "the repository lock was removed by another process"
                return
            except DestinationError as exc:
                log.warning("could not check repository lock %s: %s", self.id, exc)
                continue
            try:
                self._write()
                self.last_refresh = time.monotonic()
            except DestinationError as exc:  # retried at the next tick
                log.warning("could not refresh repository lock %s: %s", self.id, exc)

    def check(self) -> None:
        """Raise if the lock can no longer be trusted: a gc may then delete data in use."""
        if not self.lost and time.monotonic() - self.last_refresh > STALE_SECONDS / 2:
            self.lost = (f"the repository lock could not be refreshed for "
                         f"{time.monotonic() - self.last_refresh:.0f} s")
        if self.lost:
            raise RepositoryError(f"{self.lost}; stopping so that no backup refers to data a "
                                  "gc may delete. Run the backup again.")

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.repo.destination.delete(self.key)
        except DestinationError as exc:
            log.warning("could not remove repository lock %s: %s (it will go stale)",
                        self.id, exc)


def read_lock(repo: Any, key: str, mtime: float) -> LockInfo | None:
    """One lock; None if it is gone; an unreadable one counts as live until it goes stale."""
    lock_id = key.rsplit("/", 1)[-1]
    try:
        doc = repo.get_document(key)
        return LockInfo(lock_id, str(doc["kind"]), str(doc["host"]), int(doc["pid"]),
                        float(doc["created"]), float(doc["refreshed"]))
    except ObjectNotFound:
        return None
    except (RepositoryCorrupt, KeyError, TypeError, ValueError):
        return LockInfo(lock_id, "unknown", "", 0, mtime, mtime)


def list_locks(repo: Any) -> list[LockInfo]:
    """Every shared lock now present."""
    found = []
    for info in repo.destination.list("locks/"):
        lock = read_lock(repo, info.key, info.mtime)
        if lock is not None:
            found.append(lock)
    return found
