"""Rebuilding the index from the packs themselves: each pack's header lists its blobs."""

from __future__ import annotations

import os
from typing import Any

from sbr_core.errors import ObjectNotFound, RepositoryCorrupt
from sbr_core.repository.format import (
    PACK_TRAILER_BYTES,
    BlobType,
    encode_index,
    pack_id_of_key,
    pack_tail_length,
    parse_pack_header,
)
from sbr_core.repository.index import RawEntry, read_all_entries
from sbr_core.repository.repo import Repository


def read_pack_header(repo: Repository, key: str, size: int
                     ) -> list[tuple[BlobType, bytes, int, int, int]]:
    """A pack's entries from its tail, with two ranged reads."""
    what = f"pack {key.rsplit('/', 1)[-1][:16]}"
    if size < PACK_TRAILER_BYTES:
        raise RepositoryCorrupt(f"{what} is truncated")
    trailer = repo.destination.get(key, size - PACK_TRAILER_BYTES, PACK_TRAILER_BYTES)
    length = pack_tail_length(trailer, what)
    if length > size - PACK_TRAILER_BYTES:
        raise RepositoryCorrupt(f"{what} is truncated")
    header = repo.destination.get(key, size - PACK_TRAILER_BYTES - length, length)
    return parse_pack_header(repo.sealer, header, trailer, what)


def rebuild_index(repo: Repository) -> dict[str, Any]:
    """Write one index naming every pack, from its header (or, if the header is damaged,
    from any readable old index file), then drop the old index files. Holds the gc lock, so
    no gc runs meanwhile."""
    from sbr_core.repository.gc import take_gc_lock

    lock = take_gc_lock(repo)
    try:
        return _rebuild(repo)
    finally:
        lock.release()


def _readable_entries(repo: Repository, keys: list[str]
                      ) -> dict[bytes, dict[bytes, RawEntry]]:
    readable: dict[bytes, dict[bytes, RawEntry]] = {}
    for key in keys:
        try:
            for pack_id, by_blob in read_all_entries(repo.destination, repo.sealer,
                                                     [key]).items():
                readable.setdefault(pack_id, {}).update(by_blob)
        except RepositoryCorrupt:
            continue  # the damaged file this repair is for
    return readable


def _rebuild(repo: Repository) -> dict[str, Any]:
    old_files = [info.key for info in repo.destination.list("index/")]
    old_entries = _readable_entries(repo, old_files)
    packs: dict[bytes, list[tuple[BlobType, bytes, int, int, int]]] = {}
    unreadable: dict[str, str] = {}
    for info in repo.destination.list("packs/"):
        pack_id = pack_id_of_key(info.key)
        if pack_id is None:
            continue
        try:
            packs[pack_id] = read_pack_header(repo, info.key, info.size)
        except (RepositoryCorrupt, ObjectNotFound) as exc:
            unreadable[pack_id.hex()] = str(exc)
            if pack_id in old_entries:  # keep what an intact index still says of it
                packs[pack_id] = list(old_entries[pack_id].values())
    if packs:
        repo.destination.put(f"index/{os.urandom(16).hex()}", encode_index(repo.sealer, packs))
    for key in old_files:
        repo.destination.delete(key)
    repo.reload_index()
    return {"packs": len(packs), "blobs": sum(len(e) for e in packs.values()),
            "unreadable_packs": unreadable, "replaced_index_files": len(old_files)}
