"""Rebuilding the index from the packs themselves: each pack's header lists its blobs."""

from __future__ import annotations

import os
from typing import Any

from sbr_core.errors import ObjectNotFound, RepositoryCorrupt
from sbr_core.repository.format import (
    BlobType,
    encode_index,
    pack_id_of_key,
    pack_tail_length,
    parse_pack_header,
)
from sbr_core.repository.repo import Repository

_TRAILER = 12


def read_pack_header(repo: Repository, key: str, size: int
                     ) -> list[tuple[BlobType, bytes, int, int, int]]:
    """A pack's entries from its tail, with two ranged reads."""
    what = f"pack {key.rsplit('/', 1)[-1][:16]}"
    if size < _TRAILER:
        raise RepositoryCorrupt(f"{what} is truncated")
    trailer = repo.destination.get(key, size - _TRAILER, _TRAILER)
    length = pack_tail_length(trailer, what)
    if length > size - _TRAILER:
        raise RepositoryCorrupt(f"{what} is truncated")
    header = repo.destination.get(key, size - _TRAILER - length, length)
    return parse_pack_header(repo.sealer, header, trailer, what)


def rebuild_index(repo: Repository) -> dict[str, Any]:
    """Write one index naming every readable pack, then drop the old index files."""
    old_files = [info.key for info in repo.destination.list("index/")]
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
    if packs:
        repo.destination.put(f"index/{os.urandom(16).hex()}", encode_index(repo.sealer, packs))
    for key in old_files:
        repo.destination.delete(key)
    repo.reload_index()
    return {"packs": len(packs), "blobs": sum(len(e) for e in packs.values()),
            "unreadable_packs": unreadable, "replaced_index_files": len(old_files)}
