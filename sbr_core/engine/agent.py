"""The node agent: register with the server, then claim and run workflows until stopped.

``sbr node`` runs one in its own process; ``sbr server`` runs one in-process as its local
node. Each claimed workflow runs in its own thread; the server never hands a node more
tasks at once than its concurrency limit, so the agent simply asks again whenever it has
room. A server that is away (restarting, network) is waited for with backoff, never a
crash: running workflows keep going and report when it answers again.
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

from sbr_core import __version__
from sbr_core.engine.client import NodeClient, ServerUnreachable
from sbr_core.engine.runner import HEARTBEAT_SECONDS, WorkflowRun
from sbr_core.errors import SbrError
from sbr_core.plugins import PluginHost

log = logging.getLogger(__name__)


class NodeAgent:
    """Claims and runs work for one node."""

    def __init__(self, client: NodeClient, host: PluginHost, *, staging_dir: Path,
                 poll_seconds: float = 2.0, heartbeat_seconds: float | None = None) -> None:
        self.client = client
        self.host = host
        self.staging_dir = staging_dir
        self.poll_seconds = poll_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.name = ""
        self.concurrency = 1
        self._running: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self.stopping = threading.Event()

    def register(self) -> None:
        """Tell the server who we are; waits (with backoff) until it answers."""
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        delay = 1.0
        while not self.stopping.is_set():
            try:
                answer = self.client.register(
                    version=__version__, staging_path=str(self.staging_dir),
                    free_bytes=shutil.disk_usage(self.staging_dir).free)
            except ServerUnreachable as exc:
                log.warning("%s; trying again in %.0f s", exc, delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, 30.0)
                continue
            self.name = str(answer.get("node", ""))
            self.concurrency = max(1, int(answer.get("concurrency", 1)))
            if self.heartbeat_seconds is None:
                self.heartbeat_seconds = float(answer.get("heartbeat_seconds",
                                                          HEARTBEAT_SECONDS))
            log.info("node %r registered (concurrency %d)", self.name, self.concurrency)
            return

    def run(self) -> None:
        """Claim and run until :meth:`stop`; then wait for running workflows to end."""
        self.register()
        delay = self.poll_seconds
        while not self.stopping.is_set():
            with self._lock:
                self._running = {t for t in self._running if t.is_alive()}
                room = len(self._running) < self.concurrency
            order = None
            if room:
                try:
                    order = self.client.claim()
                    delay = self.poll_seconds
                except ServerUnreachable as exc:
                    log.warning("%s", exc)
                    delay = min(delay * 2, 30.0)
                except SbrError as exc:  # revoked token: nothing more to do here
                    log.error("the server refused this node: %s", exc)
                    self.stopping.set()
                    break
            if order is not None:
                self._start(order)
                continue  # there may be more work: ask again at once
            self.stopping.wait(delay)
        for thread in list(self._running):
            thread.join()

    def _start(self, order: dict[str, object]) -> None:
        run = WorkflowRun(dict(order), client=self.client, host=self.host,
                          node_name=self.name, staging_dir=self.staging_dir,
                          heartbeat_seconds=self.heartbeat_seconds or HEARTBEAT_SECONDS)
        thread = threading.Thread(target=self._guarded, args=(run,), daemon=True,
                                  name=f"sbr-workflow-{order.get('workflow', {})}")
        with self._lock:
            self._running.add(thread)
        thread.start()

    @staticmethod
    def _guarded(run: WorkflowRun) -> None:
        try:
            run.run()
        except Exception:  # never let one workflow take the agent down
            log.exception("workflow run failed")

    def stop(self) -> None:
        self.stopping.set()
