"""Forgetting backups and collecting the data nobody references, safely beside writers.

Garbage collection has two phases so that it never deletes a blob that a running writer
is about to reference:

1. **mark**: list the packs, find the ones with no referenced blob (and repack the live blobs
   of mostly-dead ones into new packs), write a plan ``gc/<id>`` naming those condemned
   packs, *then* list the writers' locks. Every writer takes its lock before it reads the
   plans and hides condemned packs from its index, so a writer either appears in that
   list or knows the plan.
2. **sweep**, once every writer of that list has finished (or died and gone stale): read
   the manifests again, keep any condemned pack that a backup written meanwhile still needs,
   write one new index without the others, delete the index files it replaces, then the
   packs, then the plan. A sweep interrupted at any step is simply run again.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import attrs

from sbr_core.errors import (
    DestinationError,
    ObjectExists,
    ObjectNotFound,
    RepositoryCorrupt,
    RepositoryError,
)
from sbr_core.repository import locks
from sbr_core.repository.format import (
    ZERO_ID,
    decode_blob,
    encode_index,
    pack_id_of_key,
    pack_key,
)
from sbr_core.repository.index import MasterIndex, RawEntry, read_all_entries
from sbr_core.repository.manifest import Manifest
from sbr_core.repository.packer import Packer
from sbr_core.repository.reader import disk_chunk_ids
from sbr_core.repository.repo import Repository
from sbr_core.repository.tree import iter_records, record_chunks

log = logging.getLogger(__name__)

GC_LOCK_KEY = "gclock"
#: Packs whose live bytes are below this share are rewritten, so their dead bytes go.
REPACK_BELOW = 0.5


def condemned_packs(repo: Repository) -> set[bytes]:
    """Packs that a pending gc plan will delete: writers and readers must not use them."""
    condemned: set[bytes] = set()
    for info in repo.destination.list("gc/"):
        try:
            plan = repo.get_document(info.key)
        except ObjectNotFound:
            continue
        condemned.update(bytes.fromhex(p) for p in plan.get("condemned", ()))
    return condemned


def manifest_blobs(repo: Repository, manifest: Manifest) -> Iterator[bytes]:
    """Every blob id a backup needs (maps and trees are read to find their chunks)."""
    for disk in manifest.disks:
        yield from disk.maps
        yield from (chunk for chunk in disk_chunk_ids(repo, disk) if chunk != ZERO_ID)
    yield from manifest.files.values()
    if manifest.tree is not None:
        yield from manifest.tree
        for record in iter_records(repo, manifest.tree):
            yield from record_chunks(record)


def referenced_blobs(repo: Repository, manifests: Iterable[Manifest]) -> set[bytes]:
    referenced: set[bytes] = set()
    for manifest in manifests:
        referenced.update(manifest_blobs(repo, manifest))
    return referenced


def forget(repo: Repository, backup_ids: Iterable[str]) -> list[str]:
    """Delete these backups' manifests (their data goes at the next gc); returns the ids."""
    manifests = [repo.resolve(ref) for ref in backup_ids]
    for manifest in manifests:
        repo.destination.delete(f"backups/{manifest.id}")
    return [m.id for m in manifests]


@attrs.define
class GcReport:
    """What one gc run did."""

    phase: str = "nothing to do"
    waiting_for: list[str] = attrs.field(factory=list)
    packs_deleted: int = 0
    bytes_deleted: int = 0
    packs_condemned: int = 0
    packs_repacked: int = 0
    packs_kept: int = 0
    stale_locks_removed: int = 0
    abandoned_removed: int = 0
    packs_skipped_damaged: list[str] = attrs.field(factory=list)

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def collect_garbage(repo: Repository, *, wait: float = 0.0,
                    progress: Callable[[str], None] | None = None) -> GcReport:
    """Run gc: finish a pending plan whose writers are done, else make a new plan and, if no
    writer is running, sweep it at once. ``wait`` seconds are spent waiting for writers."""
    say = progress or (lambda message: None)
    report = GcReport()
    gc_lock = take_gc_lock(repo)
    try:
        # Temp files and unfinished uploads of killed writers: old enough that no live
        # writer (whose lock would be fresh) can still be finishing them.
        report.abandoned_removed = repo.destination.remove_abandoned(locks.STALE_SECONDS)
        deadline = time.monotonic() + wait
        plans = _plans(repo)
        for key, plan in list(plans):
            if plan.get("writers") is None:  # a gc died while marking: the plan is unusable
                repo.destination.delete(key)
                plans.remove((key, plan))
        if not plans:
            say("marking unreferenced data")
            plan_key = _mark(repo, report)
            if plan_key is None:
                return report
            plans = _plans(repo)
        for key, plan in plans:
            while True:
                busy = _busy_writers(repo, plan, report)
                if not busy:
                    say("sweeping")
                    _sweep(repo, key, plan, report)
                    break
                if time.monotonic() >= deadline:
                    report.phase = "marked; waiting for writers"
                    report.waiting_for = busy
                    return report
                time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        return report
    finally:
        gc_lock.release()


def take_gc_lock(repo: Repository) -> locks.Lock:
    for _attempt in range(3):
        try:
            return locks.Lock(repo, "gc", key=GC_LOCK_KEY)
        except ObjectExists:
            try:
                mtime = repo.destination.stat(GC_LOCK_KEY).mtime
            except ObjectNotFound:
                continue
            holder = locks.read_lock(repo, GC_LOCK_KEY, mtime)
            if holder is None:
                continue
            if holder.stale():
                log.warning("removing the stale gc lock of %s pid %s", holder.host, holder.pid)
                repo.destination.delete(GC_LOCK_KEY)
                continue
            raise RepositoryError(f"another gc is running (host {holder.host}, pid "
                                  f"{holder.pid}); try again when it has finished") from None
    raise RepositoryError("could not take the gc lock; try again")


def _plans(repo: Repository) -> list[tuple[str, dict[str, Any]]]:
    plans = []
    for info in sorted(repo.destination.list("gc/"), key=lambda i: i.key):
        try:
            plans.append((info.key, repo.get_document(info.key)))
        except ObjectNotFound:
            continue
    return plans


def _busy_writers(repo: Repository, plan: dict[str, Any], report: GcReport) -> list[str]:
    """Lock ids of the plan's writers still at work; stale ones are removed."""
    present = {lock.id: lock for lock in locks.list_locks(repo)}
    busy = []
    for lock_id in plan.get("writers", ()):
        lock = present.get(lock_id)
        if lock is None:
            continue
        if lock.stale():
            log.warning("writer lock %s (%s pid %s) is stale; removing it", lock_id, lock.host,
                        lock.pid)
            repo.destination.delete(f"locks/{lock_id}")
            report.stale_locks_removed += 1
            continue
        busy.append(f"{lock.kind} on {lock.host} pid {lock.pid}")
    return busy


def _check_index(index: MasterIndex) -> None:
    if index.damaged:
        names = ", ".join(sorted(index.damaged))
        raise RepositoryCorrupt(f"gc refuses to run while index files are damaged ({names}): "
                                "run `sbr repo repair-index` first")


def _mark(repo: Repository, report: GcReport) -> str | None:
    stored_packs = {pid for info in repo.destination.list("packs/")
                    if (pid := pack_id_of_key(info.key)) is not None}
    index = repo.reload_index()
    _check_index(index)
    referenced = referenced_blobs(repo, repo.manifests())
    all_entries = read_all_entries(repo.destination, repo.sealer, sorted(index.files))
    condemned: set[bytes] = set()
    to_repack: list[tuple[bytes, list[RawEntry]]] = []
    for pack_id, by_blob in all_entries.items():
        if pack_id not in stored_packs:
            continue  # listed but gone: the sweep's new index leaves it out
        live = [e for e in by_blob.values() if e[1] in referenced]
        if not live:
            condemned.add(pack_id)
            continue
        live_bytes = sum(e[3] for e in live)
        total = sum(e[3] for e in by_blob.values())
        if live_bytes < total * REPACK_BELOW:
            to_repack.append((pack_id, live))
    # Packs no index names: left by killed writers (or being written: the sweep rechecks).
    condemned.update(stored_packs - set(all_entries))
    if to_repack:
        packer = Packer(repo)
        try:
            for pack_id, live in to_repack:
                try:  # copy only what is sound; a damaged pack stays for verify to report
                    blobs = [(entry, repo.get_pack_range(pack_id, entry[2], entry[3]))
                             for entry in live]
                    for (_t, blob_id, _o, _n, raw_length), stored in blobs:
                        decode_blob(repo.sealer, blob_id, stored, raw_length,
                                    f"blob {blob_id.hex()[:16]} in pack {pack_id.hex()[:16]}")
                except RepositoryCorrupt as exc:
                    log.warning("not repacking pack %s: %s (run `sbr repo verify`)",
                                pack_id.hex(), exc)
                    report.packs_skipped_damaged.append(pack_id.hex())
                    continue
                for (blob_type, blob_id, _o, _n, raw_length), stored in blobs:
                    packer.pending.discard(blob_id)
                    packer.add(blob_type, blob_id, stored, raw_length)
                condemned.add(pack_id)
                report.packs_repacked += 1
            packer.close()
        except BaseException:
            packer.abort()
            raise
    if not condemned:
        return None
    key = f"gc/{int(time.time())}-{os.urandom(8).hex()}"
    repo.put_document(key, {"created": time.time(),
                            "condemned": sorted(p.hex() for p in condemned), "writers": None})
    # Only now list the writers: any writer not listed here has read the plan.
    writers = [lock.id for lock in locks.list_locks(repo)]
    repo.put_document(key, {"created": time.time(),
                            "condemned": sorted(p.hex() for p in condemned),
                            "writers": writers})
    report.packs_condemned = len(condemned)
    report.phase = "marked"
    return key


def _sweep(repo: Repository, plan_key: str, plan: dict[str, Any], report: GcReport) -> None:
    condemned = {bytes.fromhex(p) for p in plan.get("condemned", ())}
    full = repo.reload_index()
    _check_index(full)
    survivors = MasterIndex()
    survivors.load(repo.destination, repo.sealer, exclude_packs=condemned)
    _check_index(survivors)
    referenced = referenced_blobs(repo, repo.manifests())
    needed = {full.lookup(b).pack for b in referenced  # type: ignore[union-attr]
              if b not in survivors and b in full}
    doomed = condemned - needed
    report.packs_kept += len(condemned & needed)
    # 1. one index with every entry (every copy) outside the doomed packs and the packs
    # that are gone,
    old_index_files = sorted(full.files)
    stored_packs = {pid for info in repo.destination.list("packs/")
                    if (pid := pack_id_of_key(info.key)) is not None}
    entries = {pack_id: list(by_blob.values()) for pack_id, by_blob
               in read_all_entries(repo.destination, repo.sealer, old_index_files).items()
               if pack_id not in doomed and pack_id in stored_packs}
    if entries:
        repo.destination.put(f"index/{os.urandom(16).hex()}",
                             encode_index(repo.sealer, entries))
    # 2. then drop the index files it replaces (never one written after we read),
    for key in old_index_files:
        repo.destination.delete(key)
    # 3. then the packs, then the plan.
    for pack_id in sorted(doomed):
        try:
            size = repo.destination.stat(pack_key(pack_id)).size
        except ObjectNotFound:
            continue
        try:
            repo.destination.delete(pack_key(pack_id))
        except DestinationError as exc:
            log.warning("could not delete pack %s: %s", pack_id.hex(), exc)
            continue
        report.packs_deleted += 1
        report.bytes_deleted += size
    repo.destination.delete(plan_key)
    repo.reload_index()
    report.phase = "swept"
