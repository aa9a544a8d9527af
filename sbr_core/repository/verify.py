"""Verify: re-read every pack a set of backups needs, check every blob, name the damage.

The report says which packs are damaged or missing, which index files are unreadable, and
exactly which backups cannot be restored whole because of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from sbr_core.errors import ObjectNotFound, RepositoryCorrupt, RepositoryError
from sbr_core.repository.format import decode_blob, pack_key, parse_pack
from sbr_core.repository.gc import manifest_blobs
from sbr_core.repository.index import RawEntry, read_all_entries
from sbr_core.repository.manifest import Manifest
from sbr_core.repository.pipeline import ordered_map
from sbr_core.repository.repo import Repository


@attrs.define
class VerifyReport:
    backups_checked: int = 0
    packs_checked: int = 0
    blobs_checked: int = 0
    bytes_read: int = 0
    damaged_packs: dict[str, str] = attrs.field(factory=dict)  # pack id → problem
    damaged_index: dict[str, str] = attrs.field(factory=dict)
    damaged_backups: dict[str, list[str]] = attrs.field(factory=dict)  # backup id → problems

    @property
    def ok(self) -> bool:
        return not (self.damaged_packs or self.damaged_index or self.damaged_backups)

    def to_dict(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "ok": self.ok}


def verify(repo: Repository, backup_refs: Iterable[str] = (), *,
           progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    """Check the named backups (all when none are named) down to every byte of their data,
    holding a read lock so that no gc deletes packs meanwhile."""
    with repo.reading():
        return _verify(repo, list(backup_refs), progress)


def _verify(repo: Repository, refs: list[str],
            progress: Callable[[int, int], None] | None) -> VerifyReport:
    report = VerifyReport()
    index = repo.index  # just loaded by reading()
    report.damaged_index = dict(index.damaged)
    manifests: list[Manifest] = []
    if refs:
        manifests = [repo.resolve(ref) for ref in refs]
    else:
        for backup_id in repo.backup_ids():
            try:
                manifests.append(repo.manifest(backup_id))
            except RepositoryCorrupt as exc:
                report.damaged_backups[backup_id] = [str(exc)]
    # Pass 1: which blobs are needed, and are the maps and trees themselves sound?
    needed: set[bytes] = set()
    for manifest in manifests:
        try:
            needed.update(manifest_blobs(repo, manifest))
        except (RepositoryCorrupt, RepositoryError) as exc:
            report.damaged_backups.setdefault(manifest.id, []).append(str(exc))
    missing_blobs = {b for b in needed if b not in index}
    by_pack = {pack_id: list(by_blob.values()) for pack_id, by_blob
               in read_all_entries(repo.destination, repo.sealer, sorted(index.files)).items()}
    packs = sorted({loc.pack for b in needed if (loc := index.lookup(b)) is not None}) \
        if refs else sorted(index.packs() | set(by_pack))
    # Pass 2: every byte of those packs.
    bad_blobs: set[bytes] = set()
    total = len(packs)
    for done, (pack_id, problems, blobs, size) in enumerate(
            ordered_map(lambda p: _check_pack(repo, p, by_pack.get(p, [])), packs, workers=2,
                        lookahead=3), 1):
        report.packs_checked += 1
        report.blobs_checked += blobs
        report.bytes_read += size
        if problems:
            report.damaged_packs[pack_id.hex()] = "; ".join(sorted(problems)[:3]) + (
                f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
            bad_blobs.update(problems.values())
        if progress is not None:
            progress(done, total)
    # Pass 3: which backups need a damaged or missing blob.
    if bad_blobs or missing_blobs:
        for manifest in manifests:
            if manifest.id in report.damaged_backups:
                continue
            broken = sum(1 for b in set(manifest_blobs(repo, manifest))
                         if b in bad_blobs or b in missing_blobs)
            if broken:
                report.damaged_backups[manifest.id] = [
                    f"{broken} chunk(s) damaged or missing"]
    report.backups_checked = len(manifests)
    return report


def _check_pack(repo: Repository, pack_id: bytes, indexed: list[RawEntry]
                ) -> tuple[bytes, dict[str, bytes], int, int]:
    """(pack, {problem: a blob it affects}, blobs checked, bytes read) for one pack."""
    problems: dict[str, bytes] = {}
    try:
        data = repo.destination.get(pack_key(pack_id))
    except ObjectNotFound:
        for entry in indexed:
            problems[f"pack is missing ({entry[1].hex()[:16]})"] = entry[1]
        return pack_id, problems, 0, 0
    if hashlib.sha256(data).digest() != pack_id:
        problems["pack content does not match its id"] = b""
    try:
        parse_pack(repo.sealer, data, f"pack {pack_id.hex()[:16]}")
    except RepositoryCorrupt as exc:
        problems[str(exc)] = b""
    view = memoryview(data)
    for _type, blob_id, offset, length, raw_length in indexed:
        try:
            decode_blob(repo.sealer, blob_id, view[offset:offset + length], raw_length,
                        f"blob {blob_id.hex()[:16]}")
        except RepositoryCorrupt as exc:
            problems[str(exc)] = blob_id
    if problems and "pack content does not match its id" in problems and len(problems) == 1:
        # The damage is outside every blob this index knows (e.g. in the header).
        problems.pop("pack content does not match its id")
        problems["pack header or padding is damaged"] = b""
    return pack_id, problems, len(indexed), len(data)
