"""Configuration through the server's REST API: ``sbr login``/``logout``, ``destination``,
``provider``, ``inventory``, ``instances`` and ``policy``.

These commands act as a user (a token from ``sbr login``, or ``SBR_SERVER``/``SBR_TOKEN``),
never on the database directly, so the server validates, checks the role and writes the
audit log. ``--json`` prints what the API answered.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import urllib.parse
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sbr_core.cli.api_client import (
    ApiClient,
    ApiError,
    check_server_url,
    credentials_path,
    load_credentials,
    remove_credentials,
    request_json,
    save_credentials,
)
from sbr_core.cli.output import new_private_file
from sbr_core.errors import UsageError

RULE_KEYS = ("name", "tag", "location", "provider")
SCHEDULE_KINDS = ("cron", "daily", "weekly")
_RULE_SPLIT = re.compile(r",(?=\s*(?:" + "|".join(RULE_KEYS) + r")\s*=)")


# --- output -------------------------------------------------------------------------------


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def _table(columns: tuple[str, ...], rows: list[list[Any]], empty: str) -> None:
    if not rows:
        click.echo(empty)
        return
    table = Table(box=None, header_style="bold")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(escape("" if v is None else str(v)) for v in row))
    Console(soft_wrap=True).print(table)


def _settings_text(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items())


def _show_mapping(data: dict[str, Any], skip: tuple[str, ...] = ()) -> None:
    for key, value in data.items():
        if key in skip:
            continue
        if isinstance(value, dict | list):
            value = json.dumps(value)
        click.echo(f"{key}: {'' if value is None else value}")


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def key_value_pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    """``KEY=VALUE`` options as a dict (the last of a repeated key wins)."""
    result: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{option}: {item!r} is not KEY=VALUE")
        result[key.strip()] = value
    return result


# --- login and logout ---------------------------------------------------------------------


@click.command()
@click.option("--server", envvar="SBR_SERVER", help="The server's URL (or SBR_SERVER).")
@click.option("--username", help="Your SBR user name (asked if not given).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--name", "token_name", help="Name of the token (default: sbr-cli@HOST).")
def login(server: str | None, username: str | None, password_stdin: bool,
          token_name: str | None) -> None:
    """Log in to an SBR server: makes an API token and saves it for the other commands."""
    saved = load_credentials()
    server = server or saved.get("server")
    interactive = sys.stdin.isatty() and not password_stdin
    if not server:
        if not interactive:
            raise UsageError("server: give the server's URL with --server or SBR_SERVER")
        server = str(click.prompt("Server URL"))
    server = check_server_url(server)
    if not username:
        if not interactive:
            raise UsageError("username: give it with --username")
        username = str(click.prompt("User name", default=saved.get("username") or None))
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
        if not password:
            raise UsageError("password: nothing was read from standard input")
    elif not sys.stdin.isatty():
        raise UsageError("password: no terminal to ask on; pass it with --password-stdin")
    else:
        password = str(click.prompt("Password", hide_input=True))
    name = token_name or f"sbr-cli@{socket.gethostname()}"
    answer = request_json(server, "POST", "/tokens",
                          {"username": username, "password": password, "name": name})
    path = save_credentials({"server": server, "token": answer["token"],
                             "username": answer["username"], "token_id": str(answer["id"]),
                             "expires_at": answer.get("expires_at") or ""})
    expires = answer.get("expires_at") or "never"
    click.echo(f"logged in to {server} as {answer['username']} (role {answer['role']}); "
               f"the token expires {expires}; saved in {path}")


@click.command()
def logout() -> None:
    """Revoke the saved token on the server and forget it here."""
    saved = load_credentials()
    if not saved.get("token"):
        click.echo(f"not logged in (no token in {credentials_path()})")
        return
    try:
        ApiClient(saved.get("server", ""), saved["token"]).delete("/tokens/current")
    except ApiError as exc:
        if exc.status != 401:  # 401: already revoked or expired, nothing left to revoke
            remove_credentials()
            raise ApiError(f"the saved token was forgotten here, but the server could not "
                           f"revoke it: {exc}", status=exc.status) from None
    remove_credentials()
    click.echo(f"logged out of {saved.get('server')}")


# --- destinations and providers -----------------------------------------------------------


def _connection_group(noun: str, path: str, plural: str) -> click.Group:
    """The list/show/update commands destinations and providers share."""

    @click.group(name=noun)
    def group() -> None:
        pass

    @group.command("list")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    def list_command(as_json: bool) -> None:
        entries = ApiClient.from_environment().get(path)
        if as_json:
            _print_json(entries)
            return
        columns = ("NAME", "PLUGIN", "SETTINGS") if noun == "destination" else \
            ("NAME", "KIND", "PLUGIN", "INSTANCES", "SETTINGS")
        rows = []
        for e in entries:
            settings = e.get("error") or _settings_text(e["settings"])
            rows.append([e["name"], e["plugin"], settings] if noun == "destination" else
                        [e["name"], e["kind"], e["plugin"], e.get("instances", 0), settings])
        _table(columns, rows, f"no {plural}")

    list_command.help = f"List the {plural}."

    @group.command("show")
    @click.argument("name")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def show_command(name: str, as_json: bool) -> None:
        entry = ApiClient.from_environment().get(f"{path}/{_quote(name)}")
        if as_json:
            _print_json(entry)
            return
        _show_mapping(entry, skip=("settings",))
        for key, value in entry.get("settings", {}).items():
            click.echo(f"  {key} = {value}")

    show_command.help = f"Show one {noun} (secret settings only as set or not set)."

    @group.command("update")
    @click.argument("name")
    @click.option("--set", "values", multiple=True, metavar="KEY=VALUE", required=True,
                  help="A setting to change (repeatable); the others stay.")
    def update_command(name: str, values: tuple[str, ...]) -> None:
        ApiClient.from_environment().put(f"{path}/{_quote(name)}",
                                         {"settings": key_value_pairs(values, "--set")})
        click.echo(f"{noun} {name!r} updated")

    update_command.help = f"Change settings of a {noun}."

    return group


destination = _connection_group("destination", "/destinations", "destinations")
destination.help = "Manage backup destinations on the server."


@destination.command("add")
@click.argument("name")
@click.option("--plugin", required=True, help="The destination plugin (see `sbr plugins`).")
@click.option("--set", "values", multiple=True, metavar="KEY=VALUE",
              help="A setting (repeatable); `sbr plugins PLUGIN` lists them.")
def destination_add(name: str, plugin: str, values: tuple[str, ...]) -> None:
    """Add a destination; the server validates its settings and seals the secrets."""
    ApiClient.from_environment().post("/destinations", {
        "name": name, "plugin": plugin, "settings": key_value_pairs(values, "--set")})
    click.echo(f"destination {name!r} added")


@destination.command("remove")
@click.argument("name")
@click.option("--forget-repository", is_flag=True,
              help="Remove it even though its repository's passphrase goes with it: the "
                   "backups there can then no longer be read.")
def destination_remove(name: str, forget_repository: bool) -> None:
    """Remove a destination that no policy or backup uses."""
    query = "?forget_repository=true" if forget_repository else ""
    ApiClient.from_environment().delete(f"/destinations/{_quote(name)}{query}")
    click.echo(f"destination {name!r} removed")


@destination.command("recovery-key")
@click.argument("name")
@click.option("--out", "out", required=True, metavar="FILE",
              help="A new file for it (made readable by you alone), or - for the terminal.")
def destination_recovery_key(name: str, out: str) -> None:
    """Export the passphrase of the repository the server made on NAME.

    Keep the file away from the server: with it, `SBR_REPO_PASSWORD=... sbr repo ...` reads
    the backups even if the server's database or secret key is lost. Admins only; audited."""
    client = ApiClient.from_environment()
    path = f"/destinations/{_quote(name)}/recovery-key"
    if out == "-":
        click.echo(json.dumps(client.post(path, {}), indent=2))
        return
    # the file first: a refused --out must not cost an audited export
    with os.fdopen(new_private_file(out, "--out"), "w") as handle:
        try:
            handle.write(json.dumps(client.post(path, {}), indent=2) + "\n")
        except BaseException:
            os.unlink(out)
            raise
    click.echo(f"recovery key of destination {name!r} written to {out}; keep it safe, "
               "away from the server")


provider = _connection_group("provider", "/providers", "provider connections")
provider.help = ("Manage provider connections (hypervisors, storage, applications) and "
                 "notifiers (e-mail, webhook).")


@provider.command("add")
@click.argument("name")
@click.option("--plugin", required=True, help="The provider plugin (see `sbr plugins`).")
@click.option("--kind", type=click.Choice(["hypervisor", "storage", "application", "notifier"]),
              help="Only for a plugin that provides several kinds.")
@click.option("--set", "values", multiple=True, metavar="KEY=VALUE",
              help="A setting (repeatable); `sbr plugins PLUGIN` lists them.")
@click.option("--test", is_flag=True, help="Test the connection first; save only if it works.")
def provider_add(name: str, plugin: str, kind: str | None, values: tuple[str, ...],
                 test: bool) -> None:
    """Add a provider connection."""
    body: dict[str, Any] = {"name": name, "plugin": plugin,
                            "settings": key_value_pairs(values, "--set"), "test": test}
    if kind:
        body["kind"] = kind
    answer = ApiClient.from_environment().post("/providers", body)
    tested = " (connection tested)" if test else ""
    click.echo(f"{answer['kind']} provider {name!r} added{tested}; "
               f"run `sbr inventory sync {name}` to list its instances")


@provider.command("remove")
@click.argument("name")
def provider_remove(name: str) -> None:
    """Remove a provider connection and its instances (not while backups, policies or
    running work need them)."""
    answer = ApiClient.from_environment().delete(f"/providers/{_quote(name)}")
    click.echo(f"provider {name!r} removed with {answer['instances']} instance(s)")


@provider.command("test")
@click.argument("name")
def provider_test(name: str) -> None:
    """Test a provider connection."""
    ApiClient.from_environment().post(f"/providers/{_quote(name)}/test")
    click.echo(f"provider {name!r}: the connection works")


# --- inventory and instances --------------------------------------------------------------


@click.group()
def inventory() -> None:
    """The inventory of provider connections."""


@inventory.command("sync")
@click.argument("provider_name", metavar="PROVIDER")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def inventory_sync(provider_name: str, as_json: bool) -> None:
    """Ask PROVIDER's platform for its instances now and store them."""
    answer = ApiClient.from_environment().post(f"/providers/{_quote(provider_name)}/inventory")
    if as_json:
        _print_json(answer)
        return
    click.echo(f"{provider_name}: {answer['present']} instance(s); {answer['added']} added, "
               f"{answer['updated']} updated, {answer['vanished']} vanished")


@click.command()
@click.option("--provider", "provider_name", help="Only this provider connection's.")
@click.option("--name", help="Only those whose name contains this.")
@click.option("--all", "show_all", is_flag=True, help="Also those no longer present.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def instances(provider_name: str | None, name: str | None, show_all: bool,
              as_json: bool) -> None:
    """List the instances the inventory knows."""
    rows = ApiClient.from_environment().get(
        "/instances", provider=provider_name, name=name, present=None if show_all else True)
    if as_json:
        _print_json(rows)
        return
    _table(("ID", "NAME", "KIND", "PROVIDER", "LOCATION", "STATE", "LAST BACKUP", "POLICIES"),
           [[r["id"], r["name"] + ("" if r["present"] else " (gone)"), r["kind"],
             r["provider"], r["location"], r["state"], r["last_backup_at"] or "never",
             ", ".join(r["policies"])] for r in rows], "no instances")


# --- policies -----------------------------------------------------------------------------


def parse_rule(text: str) -> dict[str, str]:
    """``name=^web,tag=prod`` as a rule; a comma inside a value (``{1,3}``) stays."""
    rule: dict[str, str] = {}
    for part in _RULE_SPLIT.split(text):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--rule: {text!r} is not KEY=VALUE[,KEY=VALUE…] "
                             f"(keys: {', '.join(RULE_KEYS)})")
        rule[key.strip()] = value
    return rule


def parse_schedule_option(text: str, window: int | None, timezone: str | None
                          ) -> dict[str, Any]:
    """``cron:0 2 * * *``, ``daily:02:30``, ``weekly:sat,sun 02:30`` (a bare cron
    expression is cron) as the API's schedule object."""
    kind, sep, expression = text.partition(":")
    if not sep or kind.strip() not in SCHEDULE_KINDS:
        kind, expression = "cron", text
    schedule: dict[str, Any] = {"kind": kind.strip(), "expression": expression.strip()}
    if window is not None:
        schedule["window_minutes"] = window
    if timezone:
        schedule["timezone"] = timezone
    return schedule


def _instance_ref(text: str) -> int | str:
    return int(text) if text.isascii() and text.isdigit() else text


_KEEP = {"keep_last": "last", "keep_days": "within_days", "keep_daily": "daily",
         "keep_weekly": "weekly", "keep_monthly": "monthly", "keep_yearly": "yearly"}


@click.group()
def policy() -> None:
    """Manage backup and snapshot policies on the server."""


@policy.command("add")
@click.argument("name")
@click.option("--kind", type=click.Choice(["backup", "snapshot"]), default="backup",
              show_default=True)
@click.option("--destination", help="Where backups go (backup policies).")
@click.option("--instance", "instance_refs", multiple=True, metavar="ID|NAME",
              help="An instance to protect (repeatable).")
@click.option("--rule", "rules", multiple=True, metavar="KEY=VALUE[,…]",
              help="Instances matching all of name=REGEX, tag=T, location=PATH, provider=P "
                   "(repeatable: any rule matches).")
@click.option("--schedule", "schedules", multiple=True,
              metavar="'cron:0 2 * * *'|'daily:02:30'|'weekly:sat,sun 02:30'",
              help="When it runs (repeatable).")
@click.option("--window", type=int, help="Minutes a late run may still start (0: any time).")
@click.option("--timezone", help="IANA timezone of the schedules (default UTC).")
@click.option("--keep-last", type=int, help="Keep the N newest backups.")
@click.option("--keep-days", type=int, help="Keep every backup of the last N days.")
@click.option("--keep-daily", type=int, help="Keep the newest backup of N days.")
@click.option("--keep-weekly", type=int, help="Keep the newest backup of N weeks.")
@click.option("--keep-monthly", type=int, help="Keep the newest backup of N months.")
@click.option("--keep-yearly", type=int, help="Keep the newest backup of N years.")
@click.option("--keep-snapshots", type=int, help="Snapshots to keep (snapshot policies).")
@click.option("--no-quiesce", is_flag=True,
              help="Do not freeze the guest's file systems (default: freeze when its agent "
                   "answers).")
@click.option("--snapshot-kind", type=click.Choice(["internal", "external"]),
              help="Snapshot policies: internal (default) or external (disk-only overlays).")
@click.option("--memory", is_flag=True,
              help="Snapshot policies: include the running guest's memory.")
@click.option("--priority", type=int, help="0-100, higher runs first (default 50).")
@click.option("--disabled", is_flag=True, help="Create it switched off.")
@click.option("--json", "as_json", is_flag=True, help="Print the stored policy as JSON.")
def policy_add(name: str, kind: str, destination: str | None, instance_refs: tuple[str, ...],
               rules: tuple[str, ...], schedules: tuple[str, ...], window: int | None,
               timezone: str | None, keep_snapshots: int | None, no_quiesce: bool,
               snapshot_kind: str | None, memory: bool, priority: int | None,
               disabled: bool, as_json: bool, **keep: int | None) -> None:
    """Add a policy; the server checks every field and names the ones that are wrong."""
    body: dict[str, Any] = {
        "name": name, "kind": kind,
        "instances": [_instance_ref(ref) for ref in instance_refs],
        "rules": [parse_rule(rule) for rule in rules],
        "schedules": [parse_schedule_option(s, window, timezone) for s in schedules],
        "enabled": not disabled}
    if (window is not None or timezone) and not schedules:
        raise UsageError("--window/--timezone: give a --schedule for them to apply to")
    if destination:
        body["destination"] = destination
    retention = {_KEEP[option]: value for option, value in keep.items() if value is not None}
    if keep_snapshots is not None:
        retention["keep_snapshots"] = keep_snapshots
    if retention or kind == "snapshot":
        body["retention"] = retention
    options: dict[str, Any] = {}
    if no_quiesce:
        options["quiesce"] = False
    if snapshot_kind:
        options["kind"] = snapshot_kind
    if memory:
        options["memory"] = True
    if options:
        body["options"] = options
    if priority is not None:
        body["priority"] = priority
    stored = ApiClient.from_environment().post("/policies", body)
    if as_json:
        _print_json(stored)
        return
    members = stored["members"]
    click.echo(f"{kind} policy {name!r} added: {len(members['explicit'])} instance(s) "
               f"named, {len(members['rules'])} matched by rules, "
               f"{len(stored['schedules'])} schedule(s)")


@policy.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def policy_list(as_json: bool) -> None:
    """List the policies."""
    rows = ApiClient.from_environment().get("/policies")
    if as_json:
        _print_json(rows)
        return
    _table(("NAME", "KIND", "DESTINATION", "MEMBERS", "SCHEDULES", "RETENTION", "PRIORITY",
            "ENABLED"),
           [[p["name"], p["kind"], p["destination"] or "",
             len(p["members"]["explicit"]) + len(p["members"]["rules"]),
             "; ".join(_schedule_text(s) for s in p["schedules"]),
             _settings_text(p["retention"]), p["priority"], "yes" if p["enabled"] else "no"]
            for p in rows], "no policies")


def _schedule_text(schedule: dict[str, Any]) -> str:
    if schedule.get("error"):  # a stored schedule the server cannot read: say so, as it is
        return f"{schedule['kind']} {schedule.get('expression', '')} ({schedule['error']})"
    if schedule["kind"] == "cron":
        text = f"cron {schedule['expression']}"
    elif schedule["kind"] == "daily":
        text = f"daily {schedule['at']}"
    else:
        text = f"weekly {','.join(schedule['weekdays'])} {schedule['at']}"
    if schedule.get("timezone", "UTC") != "UTC":
        text += f" {schedule['timezone']}"
    if schedule.get("window_minutes"):
        text += f" (window {schedule['window_minutes']} min)"
    return text


@policy.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def policy_show(name: str, as_json: bool) -> None:
    """Show one policy with its members and next runs."""
    stored = ApiClient.from_environment().get(f"/policies/{_quote(name)}")
    if as_json:
        _print_json(stored)
        return
    _show_mapping(stored, skip=("schedules", "members", "instances"))
    for schedule in stored["schedules"]:
        click.echo(f"schedule: {_schedule_text(schedule)}; next run "
                   f"{schedule.get('next_run_at') or 'not yet planned'}")
    for source, members in stored["members"].items():
        for member in members:
            how = "named" if source == "explicit" else "by rule"
            click.echo(f"member: {member['name']} (id {member['id']}, "
                       f"{member['provider']}, {how})")


@policy.command("remove")
@click.argument("name")
def policy_remove(name: str) -> None:
    """Remove a policy; its backups stay in the catalog."""
    ApiClient.from_environment().delete(f"/policies/{_quote(name)}")
    click.echo(f"policy {name!r} removed")

