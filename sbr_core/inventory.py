"""The inventory in the catalog: what a provider connection sees, stored as ``Instance`` rows.

A sync asks the provider for its instances and upserts them by (connection, external id),
so an instance keeps its id, and with it its backups and policies, across renames. One the
platform no longer lists is marked ``present = False``, never deleted: its backups stay
restorable, and it comes back as the same row if it reappears. Every sync re-evaluates the
policies' membership rules, in the same transaction.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

import attrs
import peewee as pw

from sbr_core.db.schema import Instance as InstanceRow
from sbr_core.db.schema import ProviderConnection, utcnow
from sbr_core.engine.scheduler import refresh_membership
from sbr_core.models import Instance

log = logging.getLogger(__name__)


@attrs.frozen
class SyncResult:
    """What a sync changed: rows added, rows whose details changed (or that came back),
    rows that were the same, and rows no longer listed."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    vanished: int = 0

    def to_dict(self) -> dict[str, int]:
        return attrs.asdict(self)


def row_values(instance: Instance) -> dict[str, Any]:
    """The columns an inventory item fills (disks, NICs and sizes go into ``attributes``)."""
    attributes = dict(instance.attributes)
    if instance.cpus:
        attributes.setdefault("cpus", instance.cpus)
    if instance.memory_bytes:
        attributes.setdefault("memory_bytes", instance.memory_bytes)
    if instance.disks:
        attributes.setdefault("disks", [attrs.asdict(d) for d in instance.disks])
    if instance.nics:
        attributes.setdefault("nics", [attrs.asdict(n) for n in instance.nics])
    return {"name": instance.name[:255], "kind": instance.kind[:32],
            "state": instance.state.value, "location": instance.location[:255],
            "tags": list(instance.tags), "attributes": attributes}


def sync(db: pw.Database, connection: ProviderConnection,
         instances: Iterable[Instance]) -> SyncResult:
    """Store what ``connection`` lists now, in one transaction (see the module doc)."""
    listed: dict[str, Instance] = {}
    for item in instances:  # an id listed twice: the last one wins
        listed[str(item.external_id)[:255]] = item
    now = utcnow()
    added = updated = vanished = 0
    seen: list[int] = []
    with db.atomic():
        existing = {row.external_id: row for row in
                    InstanceRow.select().where(InstanceRow.connection == connection.id)}
        for external_id, item in listed.items():
            values = row_values(item)
            row = existing.get(external_id)
            if row is None:
                InstanceRow.create(connection=connection, external_id=external_id,
                                   present=True, first_seen_at=now, last_seen_at=now,
                                   **values)
                added += 1
                continue
            if row.present and all(getattr(row, key) == value
                                   for key, value in values.items()):
                seen.append(row.id)  # only last_seen_at changes: one UPDATE for them all
                continue
            InstanceRow.update(present=True, last_seen_at=now, **values) \
                .where(InstanceRow.id == row.id).execute()
            updated += 1
        unchanged = len(seen)
        for chunk in range(0, len(seen), 500):
            InstanceRow.update(last_seen_at=now).where(
                InstanceRow.id.in_(seen[chunk:chunk + 500])).execute()
        gone = [row.id for external_id, row in existing.items()
                if external_id not in listed and row.present]
        if gone:
            vanished = (InstanceRow.update(present=False)
                        .where(InstanceRow.id.in_(gone)).execute())
        # Policies' rules are re-evaluated on every inventory refresh (issue 4).
        refresh_membership(db)
    return SyncResult(added=added, updated=updated, unchanged=unchanged, vanished=vanished)


#: Provider kinds that list instances.
LISTING_KINDS = ("hypervisor", "storage", "application")


def refresh(db: pw.Database, connection: ProviderConnection, *, host: Any, box: Any
            ) -> SyncResult:
    """Ask ``connection``'s platform for its instances now and store them."""
    from sbr_core import connections
    from sbr_core.errors import UsageError
    from sbr_core.providers import ProviderKind

    kind = ProviderKind(connection.kind)
    with connections.provider_of(kind, connection, host=host, box=box) as provider:
        listing = getattr(provider, "inventory", None)
        if listing is None:
            raise UsageError(f"provider {connection.name!r} ({connection.plugin}) has no "
                             "inventory")
        found = list(listing())
    return sync(db, connection, found)


class Refresher:
    """Refreshes every connection's inventory every ``interval`` seconds, on a thread of its
    own, so a slow or unreachable platform never holds up the engine's tick. A failure is
    logged with the connection's name and retried at the next interval."""

    def __init__(self, db: pw.Database, *, host: Any, box: Any, interval: float) -> None:
        self.db = db
        self.host = host
        self.box = box
        self.interval = interval
        # The first round comes one interval after start: a restarted server does not call
        # every platform at once, and inventories taken on demand stand until then.
        self._started = time.monotonic()
        self._last: dict[int, float] = {}
        self._thread: threading.Thread | None = None

    def __call__(self) -> None:
        """The engine's pass: start a refresh round if one is due and none is running."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._round, name="sbr-inventory",
                                        daemon=True)
        self._thread.start()

    def _round(self) -> None:
        self.db.connect(reuse_if_open=True)
        try:
            now = time.monotonic()
            due = [row for row in ProviderConnection.select()
                   .where(ProviderConnection.kind.in_(LISTING_KINDS))
                   if now - self._last.get(row.id, self._started) >= self.interval]
            for row in due:
                self._last[row.id] = time.monotonic()
                try:
                    result = refresh(self.db, row, host=self.host, box=self.box)
                except Exception as exc:  # one platform down must not stop the others
                    log.warning("inventory of %r failed: %s", row.name, exc)
                    continue
                if result.added or result.updated or result.vanished:
                    log.info("inventory of %r: %s", row.name, result.to_dict())
        finally:
            if not self.db.is_closed():
                self.db.close()
