"""Which backups a set of --keep rules lets go (per name, newest first, as restic counts)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime

import attrs

from sbr_core.repository.manifest import Manifest


@attrs.frozen
class RetentionRules:
    last: int | None = None
    daily: int | None = None
    weekly: int | None = None
    monthly: int | None = None
    yearly: int | None = None

    def any(self) -> bool:
        return any(v is not None for v in (self.last, self.daily, self.weekly, self.monthly,
                                           self.yearly))


def _when(manifest: Manifest) -> datetime:
    return datetime.fromisoformat(manifest.created.replace("Z", "+00:00"))


def select_forgettable(manifests: Iterable[Manifest], rules: RetentionRules) -> list[Manifest]:
    """The backups no rule keeps. Each name is judged on its own backups."""
    by_name: dict[str, list[Manifest]] = defaultdict(list)
    for manifest in manifests:
        by_name[manifest.name].append(manifest)
    buckets: list[tuple[int | None, Callable[[datetime], object]]] = [
        (rules.daily, lambda t: t.date()),
        (rules.weekly, lambda t: t.isocalendar()[:2]),
        (rules.monthly, lambda t: (t.year, t.month)),
        (rules.yearly, lambda t: t.year),
    ]
    forgettable: list[Manifest] = []
    for backups in by_name.values():
        backups.sort(key=lambda m: (m.created, m.id), reverse=True)
        keep: set[str] = {m.id for m in backups[: rules.last or 0]}
        for count, bucket_of in buckets:
            if not count:
                continue
            seen: list[object] = []
            for manifest in backups:  # newest first: the newest of each period is kept
                bucket = bucket_of(_when(manifest))
                if bucket not in seen:
                    seen.append(bucket)
                    if len(seen) > count:
                        break
                    keep.add(manifest.id)
        forgettable.extend(m for m in backups if m.id not in keep)
    return forgettable
