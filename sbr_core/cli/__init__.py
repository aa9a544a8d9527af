"""The ``sbr`` command line. Every SbrError becomes one line and a non-zero exit, here only."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from sbr_core import __version__
from sbr_core.errors import SbrError


class SbrGroup(click.Group):
    """Root group: turns SbrError into one clear line; adds plugin commands lazily."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SbrError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"sbr: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:  # a bug: say so in one line; --debug shows where
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"sbr: internal error: {type(exc).__name__}: {exc} "
                       "(run with --debug for the traceback)", err=True)
            sys.exit(70)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(BUILTIN_COMMANDS)
                      | set(_plugin_commands()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return (super().get_command(ctx, cmd_name) or _builtin_command(cmd_name)
                or _plugin_commands().get(cmd_name))


#: Built-in commands, imported only when used: `sbr repo` must not pay for the database and
#: web stack in memory (its peak-RSS budget is measured).
BUILTIN_COMMANDS = {
    "plugins": "sbr_core.cli.plugins:plugins",
    "db": "sbr_core.cli.database:db",
    "user": "sbr_core.cli.users:user",
    "server": "sbr_core.cli.server:server",
    "repo": "sbr_core.cli.repo:repo",
    "node": "sbr_core.cli.node:node",
    "backup": "sbr_core.cli.work:backup",
    "backups": "sbr_core.cli.work:backups",
    "delete-backup": "sbr_core.cli.work:delete_backup",
    "restore": "sbr_core.cli.work:restore",
    "import": "sbr_core.cli.work:import_vm",
    "mount": "sbr_core.cli.mount:mount_backup",
    "tasks": "sbr_core.cli.work:tasks",
    "task": "sbr_core.cli.work:task",
    "cancel": "sbr_core.cli.work:cancel",
    "login": "sbr_core.cli.admin:login",
    "logout": "sbr_core.cli.admin:logout",
    "destination": "sbr_core.cli.admin:destination",
    "provider": "sbr_core.cli.admin:provider",
    "inventory": "sbr_core.cli.admin:inventory",
    "instances": "sbr_core.cli.admin:instances",
    "policy": "sbr_core.cli.admin:policy",
}


def _builtin_command(name: str) -> click.Command | None:
    target = BUILTIN_COMMANDS.get(name)
    if target is None:
        return None
    module_name, attribute = target.split(":")
    command: click.Command = getattr(importlib.import_module(module_name), attribute)
    return command


_plugin_command_cache: tuple[object, dict[str, click.Command]] | None = None


def _plugin_commands() -> dict[str, click.Command]:
    """Commands from ``sbr_register_commands``; a name clash marks the plugin, not the CLI."""
    global _plugin_command_cache
    from sbr_core.cli.context import plugin_host

    host = plugin_host()
    if _plugin_command_cache is None or _plugin_command_cache[0] is not host:
        found: dict[str, click.Command] = {}
        for plugin_name, command in host.commands():
            name = getattr(command, "name", None)
            if not isinstance(command, click.Command) or not name:
                host.mark_unavailable(plugin_name, f"contributed {command!r}, not a click command")
            elif name in main.commands or name in BUILTIN_COMMANDS or name in found:
                host.mark_unavailable(plugin_name, f"command name {name!r} is already taken")
            else:
                found[name] = command
        _plugin_command_cache = (host, found)
    return _plugin_command_cache[1]


@click.group(cls=SbrGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sbr")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """SBR: backup and recovery for VMs, Microsoft 365, applications and storage."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from sbr_core import redaction

    redaction.install()
