"""The server's own engine loop: every tick it takes back expired leases, fires the
schedules that are due and starts the prune workflows of retention; every
``retention_seconds`` it also applies every policy's retention to the catalog (rules
with a time in them expire backups as the clock moves, not only after a new backup), and
every ``inventory_seconds`` it refreshes every connection's inventory on a thread of its own.
One thread; each tick opens its own database connection, and one failing pass is logged
and the next one runs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import peewee as pw

from sbr_core import inventory
from sbr_core.engine import expiry, scheduler
from sbr_core.engine.announce import Announcer
from sbr_core.engine.claims import DEFAULT_TIMING, Timing, reap
from sbr_core.plugins import PluginHost

log = logging.getLogger(__name__)

TICK_SECONDS = 30.0
RETENTION_SECONDS = 600.0
#: How often every connection's inventory is refreshed (new, changed and gone instances).
INVENTORY_SECONDS = 3600.0


def standard_passes(db: pw.Database, host: PluginHost | None, *,
                    retention_seconds: float = RETENTION_SECONDS, box: Any = None,
                    inventory_seconds: float = INVENTORY_SECONDS
                    ) -> tuple[Callable[[], None], ...]:
    """The server's passes after the reaper: schedules, retention, prunes, and (given the
    secret box to open connection settings) the inventory refresh of every connection."""
    last_retention = [float("-inf")]

    def schedules() -> None:
        report = scheduler.schedule_pass(db, host=host)
        if report.created or report.busy:
            log.info("scheduler: %d schedule(s) fired, %d workflow(s) created, %d instance(s) "
                     "still busy", report.fired, report.created, report.busy)

    def retention() -> None:
        if time.monotonic() - last_retention[0] >= retention_seconds:
            expiry.expire_backups(db)
            last_retention[0] = time.monotonic()
        started = scheduler.prune_pass(db, host=host)
        if started:
            log.info("retention: %d prune workflow(s) started", started)

    if box is None or host is None or inventory_seconds <= 0:
        return (schedules, retention)
    return (schedules, retention,
            inventory.Refresher(db, host=host, box=box, interval=inventory_seconds))


class EngineLoop:
    """Runs :meth:`tick` every ``tick_seconds`` until stopped."""

    def __init__(self, db: pw.Database, announcer: Announcer, *,
                 tick_seconds: float = TICK_SECONDS,
                 passes: tuple[Callable[[], None], ...] = (),
                 timing: Timing = DEFAULT_TIMING) -> None:
        self.db = db
        self.announcer = announcer
        self.tick_seconds = tick_seconds
        self.passes = passes
        self.timing = timing
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sbr-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def tick(self) -> None:
        """One tick: reap expired leases, then the other passes, each on its own."""
        self.db.connect(reuse_if_open=True)
        try:
            reaped = reap(self.db, timing=self.timing)
            if reaped:
                log.warning("took back %d task(s) from lost nodes", len(reaped))
                self.announcer.reaped(reaped)
            for work in self.passes:
                try:
                    work()
                except Exception:  # the scheduler failing must not stop retention
                    log.exception("engine pass %s failed", getattr(work, "__name__", work))
        finally:
            if not self.db.is_closed():
                self.db.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.tick_seconds):
            try:
                self.tick()
            except Exception:
                log.exception("engine pass failed; the next one runs in %.0f s",
                              self.tick_seconds)
