"""A private MariaDB server for tests: its own datadir, socket and port under a temp dir.

Started once per test session with Debian's mariadb-server binaries (``mariadb-install-db``
then ``mariadbd --no-defaults``); never the system's server, never a mock.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pymysql

from tests.cli_runs import free_port, terminate

_SEARCH = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")
USER = "sbr"
PASSWORD = "sbr-test-password"


def _find(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(Path(d) / name) for d in _SEARCH if (Path(d) / name).exists()), None)


class PrivateMariaDB:
    """Starts, hands out databases on, and stops one mariadbd."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.datadir = base / "data"
        self.socket = base / "mysqld.sock"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._counter = 0

    @staticmethod
    def missing() -> str:
        """Why the server cannot be started here, or '' when it can."""
        missing = [n for n in ("mariadb-install-db", "mariadbd") if _find(n) is None]
        return f"{', '.join(missing)} not installed (apt-get install mariadb-server)" \
            if missing else ""

    def start(self) -> None:
        """Initialise the datadir, start the server, create the test user."""
        self.base.mkdir(parents=True, exist_ok=True)
        as_root = ["--user=root"] if os.geteuid() == 0 else []
        subprocess.run(
            [_find("mariadb-install-db"), "--no-defaults", f"--datadir={self.datadir}",
             "--auth-root-authentication-method=normal", "--skip-test-db", *as_root],
            check=True, capture_output=True, timeout=180,
        )
        log = open(self.base / "mariadbd.log", "wb")
        self.process = subprocess.Popen(
            [_find("mariadbd"), "--no-defaults", f"--datadir={self.datadir}",
             f"--socket={self.socket}", f"--port={self.port}", "--bind-address=127.0.0.1",
             f"--pid-file={self.base / 'mariadbd.pid'}", "--skip-name-resolve",
             "--innodb-buffer-pool-size=64M", "--innodb-log-file-size=16M",
             "--innodb-flush-log-at-trx-commit=2", "--max-connections=200", *as_root],
            stdout=log, stderr=subprocess.STDOUT,
        )
        self._wait_ready()
        with self.admin() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'")
            cur.execute(f"CREATE USER '{USER}'@'localhost' IDENTIFIED BY '{PASSWORD}'")
            cur.execute(f"GRANT ALL ON *.* TO '{USER}'@'%'")
            cur.execute(f"GRANT ALL ON *.* TO '{USER}'@'localhost'")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError("mariadbd exited at start: "
                                   + (self.base / "mariadbd.log").read_text()[-2000:])
            try:
                self.admin().close()
                return
            except pymysql.err.OperationalError:
                time.sleep(0.2)
        raise RuntimeError("mariadbd did not accept connections within 90 s")

    def admin(self) -> pymysql.connections.Connection:
        """A root connection over the socket."""
        return pymysql.connect(unix_socket=str(self.socket), user="root", autocommit=True)

    def new_database(self) -> str:
        """Create a fresh, empty database and return its name."""
        self._counter += 1
        name = f"sbr_test_{os.getpid()}_{self._counter}"
        with self.admin() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
        return name

    def url(self, database: str, *, password: str = PASSWORD) -> str:
        """The SBR_DATABASE_URL for ``database`` over TCP."""
        return f"mysql://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        """Stop the server and remove its files."""
        if self.process is not None:
            terminate(self.process)
        shutil.rmtree(self.base, ignore_errors=True)
