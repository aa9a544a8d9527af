"""``sbr plugins``: every installed plugin with its kinds and status, or one plugin's settings."""

from __future__ import annotations

import json
from typing import Any

import attrs
import click
from rich.console import Console
from rich.table import Table

from sbr_core.cli.context import plugin_host
from sbr_core.plugins import PluginRecord
from sbr_core.providers import ProviderKind
from sbr_core.settings import settings_of


@click.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins(name: str | None, as_json: bool) -> None:
    """List installed plugins, or show one plugin's providers and their settings."""
    host = plugin_host()
    if name is None:
        records = host.records()
        if as_json:
            click.echo(json.dumps([r.to_json() for r in records], indent=2))
        else:
            _print_table(records)
        return
    record = host.record(name)
    details = record.to_json()
    details["settings"] = {
        f"{p.kind}/{p.name}": [
            attrs.asdict(s)
            for s in settings_of(host.providers(ProviderKind(p.kind))[p.name].Config)
        ]
        for p in record.providers
    }
    if as_json:
        click.echo(json.dumps(details, indent=2, default=str))
        return
    _print_table([record])
    for provider, fields in details["settings"].items():
        click.echo(f"\n{provider} settings:")
        for field in fields:
            click.echo(_describe(field))


def _describe(field: dict[str, Any]) -> str:
    flags = [f for f, on in (("required", field["required"]), ("secret", field["secret"])) if on]
    kind = ", ".join([field["type_name"], *flags])
    default = "" if field["default"] is None else f" [default: {field['default']}]"
    return f"  {field['name']} ({kind}){default}: {field['label']}. {field['help']}".rstrip()


def _print_table(records: list[PluginRecord]) -> None:
    if not records:
        click.echo("no plugins installed")
        return
    table = Table(box=None, header_style="bold")
    for column in ("NAME", "VERSION", "KINDS", "STATUS", "PROVIDES"):
        table.add_column(column)
    for rec in records:
        status = rec.status if not rec.reason else f"{rec.status}: {rec.reason}"
        provides = ", ".join(f"{p.kind}/{p.name}" for p in rec.providers)
        table.add_row(rec.name, rec.version, ", ".join(rec.kinds), status, provides)
    Console(soft_wrap=True).print(table)
