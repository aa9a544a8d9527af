"""``sbr user``: add users, change passwords, list users."""

from __future__ import annotations

import sys

import click

from sbr_core import accounts, audit
from sbr_core.cli.context import database
from sbr_core.db.schema import Role, User
from sbr_core.errors import UsageError


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\n")
        if not password:
            raise UsageError("password: nothing was read from standard input")
        return password
    if not sys.stdin.isatty():
        raise UsageError("password: no terminal to ask on; pass it with --password-stdin")
    value: str = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    return value


@click.group()
def user() -> None:
    """Manage the users of the web UI and REST API."""


@user.command("add")
@click.argument("username")
@click.option("--role", default="admin", show_default=True,
              help="admin, operator, auditor or viewer.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def add(username: str, role: str, password_stdin: bool) -> None:
    """Create a user."""
    database()
    password = _read_password(password_stdin)
    accounts.add_user(username, password, role=role)
    audit.record("user.add", actor=audit.cli_actor(), target=username, detail={"role": role})
    click.echo(f"user {username!r} added with role {role!r}")


@user.command("passwd")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def passwd(username: str, password_stdin: bool) -> None:
    """Set a user's password."""
    database()
    accounts.get_user(username)  # name a missing user before asking for a password
    revoked = accounts.set_password(username, _read_password(password_stdin))
    audit.record("user.passwd", actor=audit.cli_actor(), target=username,
                 detail={"tokens_revoked": revoked})
    click.echo(f"password of {username!r} changed; {revoked} API token(s) revoked and web "
               "sessions ended")


@user.command("list")
def list_users() -> None:
    """List users with their roles."""
    database()
    rows = User.select(User, Role).join(Role).order_by(User.username)
    for row in rows:
        state = "" if row.active else " (disabled)"
        click.echo(f"{row.username}\t{row.role.name}{state}")
