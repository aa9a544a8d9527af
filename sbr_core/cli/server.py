"""``sbr server``: upgrade the schema, then serve the web UI and REST API."""

from __future__ import annotations

import datetime as dt
import errno
import logging
import socket
from pathlib import Path

import click

from sbr_core.cli.context import database, plugin_host, runtime
from sbr_core.engine.claims import Timing
from sbr_core.engine.service import EngineLoop, standard_passes
from sbr_core.errors import UsageError

log = logging.getLogger(__name__)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535),
              help="TCP port to listen on.")
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 256),
              help="Worker threads serving requests.")
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
def server(host: str, port: int, threads: int, no_local_node: bool,
           tick_seconds: float, lease_seconds: float, retry_seconds: float) -> None:
    """Run the SBR server (web UI, REST API). Migrates the database schema on start."""
    import waitress

    from sbr_core import accounts, notify
    from sbr_web import create_app

    rt = runtime()
    rt.ensure_data_dir()
    db = database(upgrade=True)
    password_file = accounts.ensure_initial_admin(rt.initial_password_file)
    app = create_app(runtime=rt, db=db, host=plugin_host())
    listener = _bind(host, port)
    click.echo(f"SBR server on http://{host}:{port}/ (database {rt.database_url.safe()})")
    if password_file:
        click.echo(f"first start: user 'admin' was created; its password is in {password_file}")
    logging.getLogger().setLevel(logging.INFO)
    notifications = notify.install(app.extensions["sbr"]["host"],
                                   box=app.extensions["sbr"]["box"])
    timing = Timing(lease=dt.timedelta(seconds=lease_seconds),
                    retry_base=dt.timedelta(seconds=retry_seconds))
    app.extensions["sbr"]["timing"] = timing
    engine = EngineLoop(db, app.extensions["sbr"]["events"], tick_seconds=tick_seconds,
                        passes=standard_passes(db, app.extensions["sbr"]["host"]),
                        timing=timing)
    engine.start()
    if not no_local_node:
        _start_local_node(host, port, rt.data_dir / "staging")
    try:
        waitress.serve(app, sockets=[listener], threads=threads, ident="sbr")
    finally:
        engine.stop()
        notifications.close(10.0)


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


def _bind(host: str, port: int) -> socket.socket:
    """Bind before serving, so a taken port is one clear error, not a traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
