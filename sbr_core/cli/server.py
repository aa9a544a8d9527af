"""``sbr server``: upgrade the schema, then serve the web UI and REST API."""

from __future__ import annotations

import ctypes
import datetime as dt
import errno
import logging
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from sbr_core.cli.context import database, plugin_host, runtime
from sbr_core.engine.claims import Timing
from sbr_core.engine.service import EngineLoop, standard_passes
from sbr_core.errors import UsageError

if TYPE_CHECKING:
    import peewee as pw

log = logging.getLogger(__name__)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535),
              help="TCP port to listen on.")
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 256),
              help="Threads serving requests, in each worker process.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Processes serving requests on the one port. The first also runs the "
                   "engine (schedules, leases, retention) and the local node; more of them "
                   "let the node API use more than one CPU.")
@click.option("--no-local-node", is_flag=True,
              help="Do not run a node inside the server: only `sbr node` processes work.")
@click.option("--tick", "tick_seconds", default=30.0, show_default=True,
              type=click.FloatRange(0.1, 3600),
              help="Seconds between the engine's passes (lost nodes, schedules, retention).")
@click.option("--lease", "lease_seconds", default=60.0, show_default=True,
              type=click.FloatRange(1, 3600),
              help="Seconds a node holds a task without a heartbeat before it counts as lost.")
@click.option("--retry-delay", "retry_seconds", default=30.0, show_default=True,
              type=click.FloatRange(0, 3600),
              help="Seconds before a lost task's first retry (doubling, at most 10 minutes).")
@click.option("--inventory-minutes", default=60.0, show_default=True,
              type=click.FloatRange(0, 7 * 24 * 60),
              help="Minutes between refreshes of every connection's inventory (0: only when "
                   "asked).")
def server(host: str, port: int, threads: int, workers: int, no_local_node: bool,
           tick_seconds: float, lease_seconds: float, retry_seconds: float,
           inventory_minutes: float) -> None:
    """Run the SBR server (web UI, REST API). Migrates the database schema on start."""
    from sbr_core import accounts

    rt = runtime()
    rt.ensure_data_dir()
    db = database(upgrade=True)
    password_file = accounts.ensure_initial_admin(rt.initial_password_file)
    listener = _bind(host, port)
    click.echo(f"SBR server on http://{host}:{port}/ (database {rt.database_url.safe()})")
    if password_file:
        click.echo(f"first start: user 'admin' was created; its password is in {password_file}")
    logging.getLogger().setLevel(logging.INFO)
    timing = Timing(lease=dt.timedelta(seconds=lease_seconds),
                    retry_base=dt.timedelta(seconds=retry_seconds))
    # Every process opens its own database connection: a forked worker must not share
    # this one's socket. Forking happens before any thread starts.
    db.close()
    children: list[int] = []
    if workers > 1:
        # Each process listens on a socket of its own (SO_REUSEPORT) and the kernel spreads
        # new connections over them. One shared socket would not spread the load: nodes keep
        # their connections open, and whichever process won the race to accept them would
        # serve them all.
        listener.close()
        listener = _bind(host, port, reuse_port=True)
        children = [_fork_worker(lambda: _serve(db, _bind(host, port, reuse_port=True),
                                                threads, timing), close=listener)
                    for _ in range(workers - 1)]
    try:
        _serve(db, listener, threads, timing, engine_ticks=tick_seconds,
               inventory_seconds=inventory_minutes * 60,
               local_node=None if no_local_node else (host, port))
    finally:
        for pid in children:
            _stop_worker(pid)


def _serve(db: pw.Database, listener: socket.socket, threads: int, timing: Timing, *,
           engine_ticks: float | None = None, inventory_seconds: float = 0.0,
           local_node: tuple[str, int] | None = None) -> None:
    """One serving process: the app, its notifications, and (in the first) the engine."""
    import waitress

    from sbr_core import notify
    from sbr_web import create_app

    rt = runtime()
    app = create_app(runtime=rt, db=db, host=plugin_host())
    app.extensions["sbr"]["timing"] = timing
    notifications = notify.install(app.extensions["sbr"]["host"],
                                   box=app.extensions["sbr"]["box"])
    engine = None
    if engine_ticks is not None:
        engine = EngineLoop(db, app.extensions["sbr"]["events"], tick_seconds=engine_ticks,
                            passes=standard_passes(db, app.extensions["sbr"]["host"],
                                                   box=app.extensions["sbr"]["box"],
                                                   inventory_seconds=inventory_seconds),
                            timing=timing)
        engine.start()
    if local_node is not None:
        _start_local_node(*local_node, rt.data_dir / "staging")
    try:
        waitress.serve(app, sockets=[listener], threads=threads, ident="sbr")
    finally:
        if engine is not None:
            engine.stop()
        notifications.close(10.0)


def _fork_worker(serve: Callable[[], None], *, close: socket.socket) -> int:
    """A child process that serves until it is told to stop or its parent dies; ``close``
    is the parent's listener, which the child must not hold open."""
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        close.close()
        _die_with_parent()
        serve()
    except KeyboardInterrupt:
        pass
    except BaseException:
        log.exception("server worker %d failed", os.getpid())
        code = 1
    finally:
        os._exit(code)  # never run the parent's clean-up (it is the parent's)


def _die_with_parent() -> None:
    """Ask the kernel to send SIGTERM when the parent exits, even by SIGKILL (Linux)."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        log.warning("this system cannot tie a worker's life to the server's")
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(0)


def _stop_worker(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


_PR_SET_PDEATHSIG = 1


LOCAL_NODE = "local"


def _start_local_node(host: str, port: int, staging_dir: Path) -> None:
    """The node inside the server: it talks to this server over loopback with a token made
    afresh at each start (only its hash is stored)."""
    import threading

    from sbr_core.db.schema import Node
    from sbr_core.engine import nodes
    from sbr_core.engine.agent import NodeAgent
    from sbr_core.engine.client import NodeClient

    if Node.get_or_none(Node.name == LOCAL_NODE) is None:
        _, token = nodes.add_node(LOCAL_NODE)
    else:
        token = nodes.rotate_token(LOCAL_NODE)
    wildcard = host in ("0.0.0.0", "")  # noqa: S104 - mapping the wildcard to loopback
    address = "127.0.0.1" if wildcard else ("[::1]" if host == "::" else host)
    if ":" in address and not address.startswith("["):
        address = f"[{address}]"
    agent = NodeAgent(NodeClient(f"http://{address}:{port}", token), plugin_host(),
                      staging_dir=staging_dir)
    threading.Thread(target=agent.run, name="sbr-local-node", daemon=True).start()


def _bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """Bind before serving, so a taken port is one clear error, not a traceback.

    The first bind is always without ``reuse_port``, so that it fails while another server
    listens there, even one whose workers share the port among themselves.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(f"port {port} on {host} is already in use "
                             "(another sbr server? choose one with --port)") from None
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    return sock
