"""The server's own engine loop: every tick it takes back expired leases (and, as they
arrive, runs the scheduler and retention). One thread; each pass opens its own database
connection, and one failing pass is logged and the next one runs."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import peewee as pw

from sbr_core.engine.announce import Announcer
from sbr_core.engine.claims import reap

log = logging.getLogger(__name__)

TICK_SECONDS = 30.0


class EngineLoop:
    """Runs :meth:`tick` every ``tick_seconds`` until stopped."""

    def __init__(self, db: pw.Database, announcer: Announcer, *,
                 tick_seconds: float = TICK_SECONDS,
                 passes: tuple[Callable[[], None], ...] = ()) -> None:
        self.db = db
        self.announcer = announcer
        self.tick_seconds = tick_seconds
        self.passes = passes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sbr-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def tick(self) -> None:
        """One pass: reap expired leases, then the other passes."""
        self.db.connect(reuse_if_open=True)
        try:
            reaped = reap(self.db)
            if reaped:
                log.warning("took back %d task(s) from lost nodes", len(reaped))
                self.announcer.reaped(reaped)
            for work in self.passes:
                work()
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
