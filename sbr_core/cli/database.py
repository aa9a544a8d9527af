"""``sbr db``: schema status and upgrade."""

from __future__ import annotations

import click

from sbr_core import audit
from sbr_core.cli.context import database, runtime


@click.group()
def db() -> None:
    """Database schema: see its version and upgrade it."""


@db.command()
@click.option("--to", "target", type=int, help="Stop at this schema version.")
def upgrade(target: int | None) -> None:
    """Apply pending schema migrations (they only add; they never drop data)."""
    from sbr_core.db.migrations import current_version
    from sbr_core.db.migrations import upgrade as run_upgrade

    conn = database(upgrade=False, check=False)
    applied = run_upgrade(conn, target=target)
    for migration in applied:
        click.echo(f"applied {migration.version}: {migration.title}")
    version = current_version(conn)
    if applied:
        audit.record("db.upgrade", actor=audit.cli_actor(), target=f"schema {version}",
                     detail={"applied": [m.version for m in applied]})
    click.echo(f"database {runtime().database_url.safe()} is at schema version {version}")


@db.command()
def status() -> None:
    """Show the database URL (without password) and its schema version."""
    from sbr_core.db.migrations import LATEST, current_version

    conn = database(upgrade=False, check=False)
    version = current_version(conn)
    note = "up to date" if version == LATEST else f"run 'sbr db upgrade' (newest: {LATEST})"
    click.echo(f"database {runtime().database_url.safe()}: schema version {version}, {note}")
