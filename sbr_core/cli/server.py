"""``sbr server``: upgrade the schema, then serve the web UI and REST API."""

from __future__ import annotations

import errno
import logging
import socket

import click

from sbr_core.cli.context import database, plugin_host, runtime
from sbr_core.errors import UsageError

log = logging.getLogger(__name__)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535),
              help="TCP port to listen on.")
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 256),
              help="Worker threads serving requests.")
def server(host: str, port: int, threads: int) -> None:
    """Run the SBR server (web UI, REST API). Migrates the database schema on start."""
    import waitress

    from sbr_core import accounts
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
    waitress.serve(app, sockets=[listener], threads=threads, ident="sbr")


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
