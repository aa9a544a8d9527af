"""The configuration API (``/api/v1``): destinations, provider connections, inventory,
instances and policies.

JSON in and out; errors are ``{"error": "..."}`` whose text names the field at fault, with
400 (bad input), 404 (no such object), 409 (clashes with what exists). Reads need the
``view`` permission, changes ``configure``; every change is written to the audit log.
Secret settings are never returned: they show as ``"(set)"`` or ``"(not set)"``.
"""

from __future__ import annotations

import re
from typing import Any

import flask_login
import peewee as pw
from flask import Blueprint, current_app, jsonify, request

from sbr_core import audit, connections, inventory, policies
from sbr_core.config import structure_config
from sbr_core.db.schema import (
    Backup,
    Instance,
    Policy,
    PolicyInstance,
    ProviderConnection,
    Workflow,
)
from sbr_core.db.schema import Destination as DestinationRow
from sbr_core.engine.orders import repository_passphrase
from sbr_core.engine.workflows import ACTIVE_STATES
from sbr_core.errors import (
    ConfigError,
    ConflictError,
    NotFoundError,
    ProviderError,
    SbrError,
    UsageError,
)
from sbr_core.plugins import PluginHost
from sbr_core.providers import Provider, ProviderContext, ProviderKind
from sbr_core.secretbox import SecretBox
from sbr_web.auth import require_permission
from sbr_web.errors import json_body

blueprint = Blueprint("admin_api", __name__, url_prefix="/api/v1")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
PROVIDER_KINDS = (ProviderKind.HYPERVISOR, ProviderKind.APPLICATION, ProviderKind.STORAGE,
                  ProviderKind.NOTIFIER)


def _engine() -> dict[str, Any]:
    engine: dict[str, Any] = current_app.extensions["sbr"]
    return engine


def _host() -> PluginHost:
    host: PluginHost = _engine()["host"]
    return host


def _box() -> SecretBox:
    box: SecretBox = _engine()["box"]
    return box


def _db() -> pw.Database:
    db: pw.Database = _engine()["db"]
    return db


def _audit(action: str, target: str, detail: dict[str, Any] | None = None) -> None:
    audit.record(action, actor=flask_login.current_user.username, target=target,
                 detail=detail, remote_addr=request.remote_addr or "")


def _iso(moment: Any) -> str | None:
    return moment.isoformat() + "Z" if moment is not None else None


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{name}: required (text)")
    return value.strip()


def _settings(body: dict[str, Any]) -> dict[str, Any]:
    value = body.get("settings", {})
    if not isinstance(value, dict):
        raise UsageError("settings: must be an object of setting names to values")
    return value


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise UsageError(f"{name}: must be true or false")
    return value


def _check_fields(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise UsageError(f"{unknown[0]}: unknown field (expected: {', '.join(allowed)})")


# --- destinations and provider connections ------------------------------------------------


def _plugin_class(kind: ProviderKind, plugin: str) -> type[Provider]:
    try:
        return _host().provider_class(kind, plugin)
    except NotFoundError as exc:
        raise UsageError(f"plugin: {exc}") from None


def _provider_kind(plugin: str, kind: object) -> ProviderKind:
    """The kind of provider connection ``plugin`` makes (``kind`` decides when it makes
    several)."""
    if kind is not None:
        choices = {k.value: k for k in PROVIDER_KINDS}
        if not isinstance(kind, str) or kind not in choices:
            raise UsageError(f"kind: must be one of {', '.join(choices)} (got {kind!r})")
        _plugin_class(choices[str(kind)], plugin)
        return choices[str(kind)]
    found = [k for k in PROVIDER_KINDS if plugin in _host().providers(k)]
    if not found:
        known = sorted({name for k in PROVIDER_KINDS for name in _host().providers(k)})
        raise UsageError(f"plugin: no provider plugin named {plugin!r} "
                         f"(available: {', '.join(known) or 'none'})")
    if len(found) > 1:
        raise UsageError(f"kind: plugin {plugin!r} provides {', '.join(k.value for k in found)};"
                         " say which")
    return found[0]


def _validated(kind: ProviderKind, name: str, plugin: str, values: dict[str, Any]) -> Any:
    """The plugin's Config for ``values``; errors name ``settings.FIELD``."""
    cls = _plugin_class(kind, plugin)
    try:
        return structure_config(cls.Config, values, subject=f"{kind.value} {name!r}")
    except ConfigError as exc:
        raise ConfigError(exc.subject, {f"settings.{field}": message
                                        for field, message in exc.problems.items()}) from None


def _save(kind: ProviderKind, name: str, plugin: str, values: dict[str, Any], *,
          replace: bool) -> None:
    try:
        connections.save(kind, name, plugin, values, host=_host(), box=_box(),
                         replace=replace)
    except ConfigError as exc:
        raise ConfigError(exc.subject, {f"settings.{field}": message
                                        for field, message in exc.problems.items()}) from None


def _describe(kind: ProviderKind, row: Any) -> dict[str, Any]:
    try:
        shown = connections.describe(kind, row.name, host=_host(), box=_box())
    except SbrError as exc:  # plugin gone or settings unreadable: still list the entry
        shown = {"name": row.name, "kind": kind.value, "plugin": row.plugin, "settings": {},
                 "error": str(exc)}
    if kind is not ProviderKind.DESTINATION:
        shown["kind"] = row.kind
    shown.update(created_at=_iso(row.created_at), updated_at=_iso(row.updated_at))
    return shown


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise UsageError(f"name: {name!r} is invalid: use letters, digits and ._- "
                         "(up to 100 characters)")


@blueprint.route("/destinations")
@require_permission("view")
def list_destinations() -> Any:
    """Every destination: ``[{name, kind, plugin, settings, created_at, updated_at}]``."""
    return jsonify([_describe(ProviderKind.DESTINATION, row)
                    for row in DestinationRow.select().order_by(DestinationRow.name)])


@blueprint.route("/destinations", methods=["POST"])
@require_permission("configure")
def add_destination() -> Any:
    """``{name, plugin, settings}``: validated by the plugin, secrets sealed."""
    body = json_body()
    _check_fields(body, ("name", "plugin", "settings"))
    name, plugin = _text(body, "name"), _text(body, "plugin")
    _check_name(name)
    _plugin_class(ProviderKind.DESTINATION, plugin)
    if DestinationRow.get_or_none(DestinationRow.name == name) is not None:
        raise ConflictError(f"name: destination {name!r} already exists")
    _save(ProviderKind.DESTINATION, name, plugin, _settings(body), replace=False)
    shown = _describe(ProviderKind.DESTINATION, connections.get(ProviderKind.DESTINATION, name))
    _audit("destination.add", name, {"plugin": plugin, "settings": shown["settings"]})
    return jsonify(shown), 201


@blueprint.route("/destinations/<name>")
@require_permission("view")
def show_destination(name: str) -> Any:
    """One destination; also which policies use it and how many backups it holds."""
    row = connections.get(ProviderKind.DESTINATION, name)
    shown = _describe(ProviderKind.DESTINATION, row)
    shown["policies"] = [p.name for p in Policy.select(Policy.name)
                         .where(Policy.destination == row.id).order_by(Policy.name)]
    shown["backups"] = Backup.select().where(Backup.destination == row.id).count()
    return jsonify(shown)


@blueprint.route("/destinations/<name>", methods=["PUT"])
@require_permission("configure")
def update_destination(name: str) -> Any:
    """``{settings}``: the settings given replace the stored ones, the others stay; a
    secret left out or empty keeps its stored value."""
    return _update(ProviderKind.DESTINATION, name)


def _update(kind: ProviderKind, name: str) -> Any:
    body = json_body()
    _check_fields(body, ("name", "plugin", "kind", "settings"))
    row = connections.get(kind, name)
    for field in ("name", "plugin", "kind"):
        if field in body and body[field] != getattr(row, field, kind.value):
            raise UsageError(f"{field}: cannot be changed (remove {kind.value} {name!r} and "
                             "add it again)")
    _save(kind, name, row.plugin, {**row.settings, **_settings(body)}, replace=True)
    shown = _describe(kind, connections.get(kind, name))
    label = "destination" if kind is ProviderKind.DESTINATION else "provider"
    _audit(f"{label}.update", name, {"plugin": row.plugin,
                                     "changed": sorted(_settings(body))})
    return jsonify(shown)


@blueprint.route("/destinations/<name>/recovery-key", methods=["POST"])
@require_permission("configure")
def destination_recovery_key(name: str) -> Any:
    """The passphrase of the repository the server made on this destination, for safe
    keeping away from the server: with it, ``sbr repo`` reads the backups even when the
    server's database or secret key is lost. Only this server knows it otherwise. Audited;
    409 while no repository was made there yet."""
    row = DestinationRow.get_by_id(connections.get(ProviderKind.DESTINATION, name).id)
    if not row.repository_secret:
        raise ConflictError(f"destination {name!r} holds no repository made by this server "
                            "yet (one is made by its first backup)")
    passphrase = repository_passphrase(row, _engine()["box"])
    _audit("destination.recovery_key", name, {"plugin": row.plugin})
    shown = _describe(ProviderKind.DESTINATION, connections.get(ProviderKind.DESTINATION, name))
    return jsonify(destination=name, plugin=row.plugin, settings=shown["settings"],
                   passphrase=passphrase,
                   use=f"SBR_REPO_PASSWORD=<passphrase> sbr repo list <{row.plugin} location>")


@blueprint.route("/destinations/<name>", methods=["DELETE"])
@require_permission("configure")
def remove_destination(name: str) -> Any:
    """Remove a destination that no policy, backup or running workflow uses (else 409).
    The repository on it is left as it is, but its passphrase goes with the destination,
    so ``?forget_repository=true`` must confirm that once a repository was made there."""
    row = DestinationRow.get_by_id(connections.get(ProviderKind.DESTINATION, name).id)
    users = [p.name for p in Policy.select(Policy.name).where(Policy.destination == row.id)
             .order_by(Policy.name)]
    if users:
        raise ConflictError(f"destination {name!r} is used by policies: {', '.join(users)}; "
                            "change or remove them first")
    backups = Backup.select().where(Backup.destination == row.id).count()
    if backups:
        raise ConflictError(f"destination {name!r} holds {backups} backup(s) in the catalog; "
                            "they must expire or be deleted first")
    busy = [w.id for w in Workflow.select(Workflow.id, Workflow.params)
            .where(Workflow.state.in_(ACTIVE_STATES))
            if (w.params or {}).get("destination_id") == row.id]
    if busy:
        raise ConflictError(f"destination {name!r} is used by running workflows "
                            f"{', '.join(map(str, busy))}; wait or cancel them")
    forget = request.args.get("forget_repository", "").lower() in ("1", "true", "yes")
    if row.repository_secret and not forget:
        raise ConflictError(f"destination {name!r} holds a repository whose passphrase only "
                            "this server keeps: once removed, the backups there cannot be "
                            "read; add forget_repository=true to remove it anyway")
    row.delete_instance()
    _audit("destination.remove", name, {"plugin": row.plugin,
                                        "repository_forgotten": bool(row.repository_secret)})
    return jsonify(removed=name)


@blueprint.route("/providers")
@require_permission("view")
def list_providers() -> Any:
    """Every provider connection, with how many instances it has."""
    per_connection: Any = (Instance.select(Instance.connection, pw.fn.COUNT(Instance.id))
                           .where(Instance.present == True)  # noqa: E712
                           .group_by(Instance.connection).tuples())
    counts: dict[int, int] = dict(per_connection)
    result = []
    for row in ProviderConnection.select().order_by(ProviderConnection.name):
        shown = _describe(ProviderKind(row.kind), row)
        shown["instances"] = counts.get(row.id, 0)
        result.append(shown)
    return jsonify(result)


def _connection(name: str) -> ProviderConnection:
    row: ProviderConnection | None = ProviderConnection.get_or_none(
        ProviderConnection.name == name)
    if row is None:
        raise NotFoundError(f"provider: no provider connection named {name!r}")
    return row


@blueprint.route("/providers", methods=["POST"])
@require_permission("configure")
def add_provider() -> Any:
    """``{name, plugin, settings, kind?, test?}``; with ``test: true`` the connection is
    tested first and nothing is saved if the test fails."""
    body = json_body()
    _check_fields(body, ("name", "plugin", "kind", "settings", "test"))
    name, plugin = _text(body, "name"), _text(body, "plugin")
    _check_name(name)
    kind = _provider_kind(plugin, body.get("kind"))
    test = _flag(body, "test")
    if ProviderConnection.get_or_none(ProviderConnection.name == name) is not None:
        raise ConflictError(f"name: provider {name!r} already exists")
    values = _settings(body)
    config = _validated(kind, name, plugin, values)
    if test:
        _test(_plugin_class(kind, plugin), config, name)
    _save(kind, name, plugin, values, replace=False)
    shown = _describe(kind, _connection(name))
    _audit("provider.add", name, {"plugin": plugin, "kind": kind.value, "tested": test,
                                  "settings": shown["settings"]})
    return jsonify({**shown, "tested": test}), 201


def _test(cls: type[Provider], config: Any, name: str) -> None:
    if not cls.can_test_connection():
        raise UsageError(f"test: plugin {cls.name!r} cannot test its connections")
    try:
        with cls(config, context=ProviderContext(name=name)) as provider:
            provider.test_connection()
    except ProviderError as exc:
        raise UsageError(f"test: the connection test failed: {exc}") from None


@blueprint.route("/providers/<name>")
@require_permission("view")
def show_provider(name: str) -> Any:
    """One provider connection and the number of its (present) instances."""
    row = _connection(name)
    shown = _describe(ProviderKind(row.kind), row)
    shown["instances"] = Instance.select().where((Instance.connection == row.id)
                                                 & (Instance.present == True)).count()  # noqa: E712
    return jsonify(shown)


@blueprint.route("/providers/<name>", methods=["PUT"])
@require_permission("configure")
def update_provider(name: str) -> Any:
    """``{settings}``, as for destinations."""
    return _update(ProviderKind(_connection(name).kind), name)


@blueprint.route("/providers/<name>/test", methods=["POST"])
@require_permission("configure")
def test_provider(name: str) -> Any:
    """Test a stored connection: ``{ok: true}`` or 400 saying why not."""
    row = _connection(name)
    kind = ProviderKind(row.kind)
    config = _validated(kind, name, row.plugin, {**row.settings, **_box().open(row.secrets)})
    _test(_plugin_class(kind, row.plugin), config, name)
    return jsonify(ok=True)


@blueprint.route("/providers/<name>", methods=["DELETE"])
@require_permission("configure")
def remove_provider(name: str) -> Any:
    """Remove a connection and its instances, unless their backups, policies or running
    workflows still need them (409)."""
    row = _connection(name)
    ids = [i.id for i in Instance.select(Instance.id).where(Instance.connection == row.id)]
    backups = Backup.select().where(Backup.instance.in_(ids)).count() if ids else 0
    if backups:
        raise ConflictError(f"provider {name!r}: its instances have {backups} backup(s) in the "
                            "catalog; they must expire or be deleted first")
    named = sorted({p.name for p in Policy.select(Policy.name).join(PolicyInstance)
                    .where(PolicyInstance.instance.in_(ids)
                           & (PolicyInstance.source == policies.EXPLICIT))}) if ids else []
    if named:
        raise ConflictError(f"provider {name!r}: its instances are members of policies: "
                            f"{', '.join(named)}; take them out first")
    busy = Workflow.select().where(Workflow.instance.in_(ids)
                                   & Workflow.state.in_(ACTIVE_STATES)).count() if ids else 0
    if busy:
        raise ConflictError(f"provider {name!r}: {busy} workflow(s) of its instances are "
                            "pending or running; wait or cancel them")
    with _db().atomic():
        if ids:
            PolicyInstance.delete().where(PolicyInstance.instance.in_(ids)).execute()
            Instance.delete().where(Instance.id.in_(ids)).execute()
        row.delete_instance()
    _audit("provider.remove", name, {"plugin": row.plugin, "instances": len(ids)})
    return jsonify(removed=name, instances=len(ids))


@blueprint.route("/providers/<name>/inventory", methods=["POST"])
@require_permission("configure")
def sync_inventory(name: str) -> Any:
    """Ask the platform for its instances now and store them:
    ``{provider, added, updated, unchanged, vanished, present}``."""
    row = _connection(name)
    result = inventory.refresh(_db(), row, host=_host(), box=_box())
    present = Instance.select().where((Instance.connection == row.id)
                                      & (Instance.present == True)).count()  # noqa: E712
    _audit("inventory.sync", name, result.to_dict())
    return jsonify(provider=name, present=present, **result.to_dict())


# --- instances ----------------------------------------------------------------------------


def _instances_json(rows: list[Instance]) -> list[dict[str, Any]]:
    ids = [row.id for row in rows]
    if not ids:
        return []
    newest: Any = (Backup.select(Backup.instance, pw.fn.MAX(Backup.finished_at))
                   .where(Backup.instance.in_(ids) & (Backup.state == "complete"))
                   .group_by(Backup.instance).tuples())
    last: dict[int, Any] = dict(newest)
    member_of: dict[int, list[str]] = {}
    memberships: Any = (PolicyInstance.select(PolicyInstance.instance, Policy.name)
                        .join(Policy).where(PolicyInstance.instance.in_(ids))
                        .order_by(Policy.name).tuples())
    for instance_id, policy_name in memberships:
        member_of.setdefault(instance_id, []).append(policy_name)
    return [{"id": row.id, "name": row.name, "kind": row.kind,
             "provider": row.connection.name, "external_id": row.external_id,
             "location": row.location, "tags": list(row.tags or []), "state": row.state,
             "present": row.present, "last_backup_at": _iso(last.get(row.id)),
             "policies": member_of.get(row.id, [])} for row in rows]


@blueprint.route("/instances")
@require_permission("view")
def list_instances() -> Any:
    """Instances; ``?provider=NAME``, ``?name=`` (part of the name), ``?present=true|false``."""
    query = (Instance.select(Instance, ProviderConnection).join(ProviderConnection)
             .order_by(ProviderConnection.name, Instance.name, Instance.id))
    provider = request.args.get("provider")
    if provider:
        _connection(provider)
        query = query.where(ProviderConnection.name == provider)
    name = request.args.get("name")
    if name:
        query = query.where(Instance.name.contains(name))
    present = request.args.get("present")
    if present is not None:
        flags = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
        if present.lower() not in flags:
            raise UsageError(f"present: must be true or false (got {present!r})")
        query = query.where(Instance.present == flags[present.lower()])
    return jsonify(_instances_json(list(query)))


@blueprint.route("/instances/<int:instance_id>")
@require_permission("view")
def show_instance(instance_id: int) -> Any:
    """One instance with its attributes and when it was first and last seen."""
    row = Instance.get_or_none(Instance.id == instance_id)
    if row is None:
        raise NotFoundError(f"instance: no instance with id {instance_id}")
    shown = _instances_json([row])[0]
    shown.update(attributes=dict(row.attributes or {}), first_seen_at=_iso(row.first_seen_at),
                 last_seen_at=_iso(row.last_seen_at),
                 backups=Backup.select().where(Backup.instance == row.id).count())
    return jsonify(shown)


# --- policies -----------------------------------------------------------------------------


@blueprint.route("/policies")
@require_permission("view")
def list_policies() -> Any:
    """Every policy, as :func:`sbr_core.policies.describe_policy` shows it."""
    return jsonify([policies.describe_policy(p)
                    for p in Policy.select().order_by(Policy.name)])


@blueprint.route("/policies", methods=["POST"])
@require_permission("configure")
def add_policy() -> Any:
    """A policy document (see :mod:`sbr_core.policies`); 201 with the stored policy."""
    body = json_body()
    spec = policies.parse_policy(body, subject="invalid policy")
    if Policy.get_or_none(Policy.name == spec.name) is not None:
        raise ConflictError(f"name: a policy named {spec.name!r} already exists")
    policy = policies.save_policy(_db(), spec)
    _audit("policy.add", policy.name, policies.policy_document(policy))
    return jsonify(policies.describe_policy(policy)), 201


@blueprint.route("/policies/<name>")
@require_permission("view")
def show_policy(name: str) -> Any:
    """One policy."""
    return jsonify(policies.describe_policy(policies.get_policy(name)))


@blueprint.route("/policies/<name>", methods=["PUT"])
@require_permission("configure")
def update_policy(name: str) -> Any:
    """Fields given replace the stored ones (``instances``, ``rules``, ``schedules``
    as whole lists); fields left out stay."""
    policy = policies.get_policy(name)
    body = json_body()
    document = {**policies.policy_document(policy), **body}
    spec = policies.parse_policy(document, subject=f"policy {name!r}")
    policy = policies.save_policy(_db(), spec, existing=policy)
    _audit("policy.update", name, {"changed": sorted(body)})
    return jsonify(policies.describe_policy(policy))


@blueprint.route("/policies/<name>", methods=["DELETE"])
@require_permission("configure")
def remove_policy(name: str) -> Any:
    """Remove a policy (409 while its workflows run); its backups stay in the catalog."""
    policy = policies.get_policy(name)
    result = policies.delete_policy(_db(), policy)
    _audit("policy.remove", name, result)
    return jsonify(removed=name, **result)
