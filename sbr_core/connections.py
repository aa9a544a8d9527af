"""Configured providers and destinations: validated settings in, secrets sealed at rest.

What an admin types (web form, ``--set key=value``) is validated into the plugin's ``Config``;
plain settings are stored as JSON, secret ones sealed with the server key in a separate column.
Secrets never come back out through :func:`describe`; they are opened only to build the
provider that talks to the platform.
"""

from __future__ import annotations

import re
from typing import Any

import peewee as pw

from sbr_core.config import public_view, split_secrets, structure_config
from sbr_core.db.schema import Destination as DestinationRow
from sbr_core.db.schema import ProviderConnection, utcnow
from sbr_core.errors import NotFoundError, UsageError
from sbr_core.plugins import PluginHost
from sbr_core.providers import Provider, ProviderContext, ProviderKind
from sbr_core.secretbox import SecretBox
from sbr_core.settings import secret_field_names

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
Row = ProviderConnection | DestinationRow


def _table(kind: ProviderKind) -> type[Row]:
    return DestinationRow if kind is ProviderKind.DESTINATION else ProviderConnection


def _subject(kind: ProviderKind, name: str) -> str:
    return f"{kind.value} {name!r}"


def save(kind: ProviderKind, name: str, plugin: str, values: dict[str, Any], *,
         host: PluginHost, box: SecretBox, replace: bool = False) -> Row:
    """Validate ``values`` for ``plugin`` and store them under ``name``.

    With ``replace``, an existing entry is updated; a secret left out (or empty) keeps its
    stored value, as write-only form fields expect. Nothing is written if validation fails.
    """
    if not _NAME.match(name):
        raise UsageError(f"name {name!r} is invalid: use letters, digits and ._- "
                         "(up to 100 characters)")
    cls = host.provider_class(kind, plugin)
    table = _table(kind)
    existing = table.get_or_none(table.name == name)
    if existing is not None and not replace:
        raise UsageError(f"{_subject(kind, name)} already exists")
    if existing is not None and existing.plugin != plugin:
        raise UsageError(f"{_subject(kind, name)} uses plugin {existing.plugin!r}, "
                         f"not {plugin!r}; remove it and add it again")
    merged = dict(values)
    if existing is not None:
        kept = box.open(existing.secrets)
        for field_name in secret_field_names(cls.Config):
            if not merged.get(field_name) and field_name in kept:
                merged[field_name] = kept[field_name]
    config = structure_config(cls.Config, merged, subject=_subject(kind, name))
    plain, secrets = split_secrets(config)
    fields: dict[str, Any] = {"plugin": plugin, "settings": plain,
                              "secrets": box.seal(secrets) if secrets else "",
                              "updated_at": utcnow()}
    if kind is not ProviderKind.DESTINATION:
        fields["kind"] = kind.value
    if existing is None:
        try:
            return table.create(name=name, **fields)
        except pw.IntegrityError:
            raise UsageError(f"{_subject(kind, name)} already exists") from None
    table.update(**fields).where(table.id == existing.id).execute()
    return table.get_by_id(existing.id)


def get(kind: ProviderKind, name: str) -> Row:
    """The stored entry; NotFoundError names what is missing."""
    table = _table(kind)
    row = table.get_or_none(table.name == name)
    if row is None or getattr(row, "kind", kind.value) != kind.value:
        raise NotFoundError(f"no {kind.value} named {name!r}")
    return row


def open_provider(kind: ProviderKind, name: str, *, host: PluginHost, box: SecretBox,
                  context: ProviderContext | None = None) -> Provider:
    """Build the provider for a stored entry, secrets opened."""
    return provider_of(kind, get(kind, name), host=host, box=box, context=context)


def provider_of(kind: ProviderKind, row: Row, *, host: PluginHost, box: SecretBox,
                context: ProviderContext | None = None) -> Provider:
    """Build the provider for a row already read, secrets opened."""
    cls, config = _stored_config(kind, row, host=host, box=box)
    return cls(config, context=context or ProviderContext(name=row.name))


def describe(kind: ProviderKind, name: str, *, host: PluginHost, box: SecretBox
             ) -> dict[str, Any]:
    """What may be shown of a stored entry: settings, with secrets only as set/not set."""
    row = get(kind, name)
    _, config = _stored_config(kind, row, host=host, box=box)
    return {"name": row.name, "kind": kind.value, "plugin": row.plugin,
            "settings": public_view(config)}


def _stored_config(kind: ProviderKind, row: Row, *, host: PluginHost, box: SecretBox
                   ) -> tuple[type[Provider], Any]:
    """The provider class of a stored entry and its Config, secrets opened."""
    cls = host.provider_class(kind, row.plugin)
    values = {**row.settings, **box.open(row.secrets)}
    return cls, structure_config(cls.Config, values, subject=_subject(kind, row.name))
