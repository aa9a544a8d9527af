"""``sbr node``: run a data-mover node, or (with a sub-command) manage the server's nodes.

``sbr node --server URL --token T`` registers with the server and runs the work it hands
out until stopped (SIGINT/SIGTERM let running workflows finish their current step).
``sbr node add|list|revoke|token`` act on the server's database directly, like
``sbr user``.
"""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path
from typing import Any

import click

from sbr_core import audit
from sbr_core.cli.context import database, plugin_host, runtime
from sbr_core.errors import UsageError


@click.group(invoke_without_command=True)
@click.option("--server", envvar="SBR_SERVER", help="The server's URL (or SBR_SERVER).")
@click.option("--token", envvar="SBR_NODE_TOKEN",
              help="This node's token from `sbr node add` (or SBR_NODE_TOKEN).")
@click.option("--staging-dir", type=click.Path(path_type=Path), envvar="SBR_STAGING_DIR",
              help="Scratch space for tasks that need it (default: staging/ in the data "
                   "directory).")
@click.option("--poll", "poll_seconds", type=click.FloatRange(0.1, 300), default=2.0,
              show_default=True, help="Seconds between asking for work when idle.")
@click.option("--heartbeat", "heartbeat_seconds", type=click.FloatRange(0.1, 300),
              help="Seconds between heartbeats (default: what the server says).")
@click.pass_context
def node(ctx: click.Context, server: str | None, token: str | None, staging_dir: Path | None,
         poll_seconds: float, heartbeat_seconds: float | None) -> None:
    """Run this machine as a node of SBR_SERVER, or manage nodes (see the sub-commands)."""
    if ctx.invoked_subcommand is not None:
        return
    if not server:
        raise UsageError("server: give the server's URL with --server or SBR_SERVER")
    if not token:
        raise UsageError("token: give this node's token with --token or SBR_NODE_TOKEN "
                         "(an admin makes one with `sbr node add NAME`)")
    from sbr_core.engine.agent import NodeAgent
    from sbr_core.engine.client import NodeClient

    logging.getLogger().setLevel(logging.INFO)
    staging = staging_dir or runtime().data_dir / "staging"
    agent = NodeAgent(NodeClient(server, token), plugin_host(), staging_dir=staging,
                      poll_seconds=poll_seconds, heartbeat_seconds=heartbeat_seconds)

    def _stop(signum: int, _: Any) -> None:
        click.echo(f"sbr node: {signal.Signals(signum).name}: finishing running work", err=True)
        agent.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    agent.run()


@node.command("add")
@click.argument("name")
@click.option("--concurrency", type=int, default=2, show_default=True,
              help="Tasks it runs at once.")
@click.option("--affinity", multiple=True, metavar="provider:NAME|cluster:PATH",
              help="Tie the node to a provider connection or a cluster (repeatable): their "
                   "work then goes only to the nodes tied to them.")
def add(name: str, concurrency: int, affinity: tuple[str, ...]) -> None:
    """Create node NAME and print its token (shown once)."""
    from sbr_core.engine import nodes

    database()
    created, token = nodes.add_node(name, concurrency=concurrency, affinity=affinity)
    audit.record("node.add", actor=audit.cli_actor(), target=created.name,
                 detail={"concurrency": concurrency, "affinity": list(affinity)})
    click.echo(f"node {created.name!r} created; its token (shown once, keep it safe):")
    click.echo(token)


@node.command("token")
@click.argument("name")
def new_token(name: str) -> None:
    """Give node NAME a new token (the old one stops working) and print it."""
    from sbr_core.engine import nodes

    database()
    token = nodes.rotate_token(name)
    audit.record("node.token", actor=audit.cli_actor(), target=name)
    click.echo(token)


@node.command("revoke")
@click.argument("name")
def revoke(name: str) -> None:
    """Refuse node NAME's token from now on (its running tasks go back to the queue when
    their leases run out)."""
    from sbr_core.engine import nodes

    database()
    nodes.revoke_node(name)
    audit.record("node.revoke", actor=audit.cli_actor(), target=name)
    click.echo(f"node {name!r} revoked")


@node.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def list_nodes(as_json: bool) -> None:
    """The nodes, their state and when they were last seen."""
    from sbr_core.db.schema import Node
    from sbr_core.engine import nodes

    database()
    data = [nodes.describe(n) for n in Node.select().order_by(Node.name)]
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for item in data:
        click.echo(f"{item['name']:20} {item['state']:8} {item['version']:10} "
                   f"concurrency {item['concurrency']}  last seen {item['last_seen_at']}")
