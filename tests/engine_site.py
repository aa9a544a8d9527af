"""A real SBR site for engine tests: one ``sbr server`` and any number of ``sbr node``
processes over one database, a file share with files, a fileshare provider connection, a
filesystem destination and the share's instance row."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import peewee as pw

from sbr_core import connections
from sbr_core.db.schema import Instance, Workflow
from sbr_core.engine import nodes, workflows
from sbr_core.plugins import PluginHost
from sbr_core.providers import ProviderKind
from sbr_core.secretbox import SecretBox, load_or_create_key
from tests.cli_runs import SBR, free_port, spawn_logged, terminate, wait_for_server


def stop(process: subprocess.Popen[str], log: Path) -> str:
    """Stop a server or node gently (for good after 30 s); what it printed."""
    terminate(process)
    return log.read_text()


class EngineSite:
    """Processes and rows of one test site; :meth:`close` stops the processes and fails
    the test if one of them printed a traceback."""

    def __init__(self, tmp_path: Path, db: pw.Database, database_url: str) -> None:
        self.tmp = tmp_path
        self.db = db
        data = tmp_path / "data"
        data.mkdir()
        self.env = {**os.environ, "SBR_DATA_DIR": str(data), "SBR_DATABASE_URL": database_url}
        self.box = SecretBox(load_or_create_key(data / "secret.key"))
        self.host = PluginHost.discover()
        self.share = tmp_path / "share"
        (self.share / "docs").mkdir(parents=True)
        (self.share / "docs" / "a.txt").write_text("alpha\n" * 1000)
        (self.share / "b.bin").write_bytes(os.urandom(3 * 2**20))
        self.connection = connections.save(ProviderKind.STORAGE, "nas1", "fileshare",
                                           {"path": str(self.share)}, host=self.host,
                                           box=self.box)
        self.repo_path = tmp_path / "repo"
        self.repo_path.mkdir()
        self.destination = connections.save(ProviderKind.DESTINATION, "disk1", "filesystem",
                                            {"path": str(self.repo_path)}, host=self.host,
                                            box=self.box)
        self.instance = Instance.create(connection=self.connection, external_id=str(self.share),
                                        name="share1", kind="share")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: subprocess.Popen[str] | None = None
        self.server_log = self.tmp / "logs" / "server.log"
        self._server_starts = 0
        self.nodes: dict[str, subprocess.Popen[str]] = {}
        self._errors: list[str] = []

    def start_server(self, *options: str) -> None:
        """``sbr server`` without a local node, ticking every half second."""
        self._server_starts += 1
        self.server_log = self.tmp / "logs" / f"server-{self._server_starts}.log"
        self.server = spawn_logged(
            [*SBR, "server", "--port", str(self.port), "--no-local-node", "--tick", "0.5",
             *options], env=self.env, log=self.server_log)
        wait_for_server(f"{self.url}/api/v1/health", self.server, log=self.server_log)

    def stop_server(self) -> None:
        if self.server is not None:
            self._errors.append(stop(self.server, self.server_log))
            self.server = None

    def start_node(self, name: str) -> subprocess.Popen[str]:
        """A new node ``name`` with its own staging directory, polling fast."""
        _, token = nodes.add_node(name)
        process = spawn_logged(
            [*SBR, "node", "--server", self.url, "--token", token, "--poll", "0.2",
             "--heartbeat", "0.5", "--staging-dir", str(self.tmp / f"stage-{name}")],
            env=self.env, log=self._node_log(name))
        self.nodes[name] = process
        return process

    def kill_node(self, name: str) -> None:
        """SIGKILL: no clean-up, no last report."""
        process = self.nodes.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    def _node_log(self, name: str) -> Path:
        return self.tmp / "logs" / f"node-{name}.log"

    def workflow(self, kind: str, **params: Any) -> Workflow:
        """Create a workflow of the share (a backup) or of nothing (a restore)."""
        return workflows.create_workflow(
            self.db, kind, instance=self.instance if kind == "backup" else None,
            params={"destination_id": self.destination.id, **params}, requested_by="test")

    def wait(self, flow: Workflow, timeout: float = 60) -> Workflow:
        """The workflow once it has finished."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            flow = Workflow.get_by_id(flow.id)
            if flow.state in workflows.FINISHED_STATES:
                return flow
            time.sleep(0.2)
        raise AssertionError(f"workflow {flow.id} still {flow.state} after {timeout:.0f} s")

    def run(self, kind: str, **params: Any) -> Workflow:
        return self.wait(self.workflow(kind, **params))

    def close(self) -> None:
        for name, process in self.nodes.items():
            self._errors.append(stop(process, self._node_log(name)))
        self.nodes.clear()
        self.stop_server()
        printed = "\n".join(self._errors)
        assert "Traceback" not in printed, printed
