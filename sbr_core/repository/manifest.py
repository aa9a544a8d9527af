"""A backup's manifest: a complete picture of one instance at one time.

It names every disk (by its chunk map), every configuration file and the item tree by blob
ids only, never by reference to another backup, so any backup restores on its own and
forgetting one never breaks another.
"""

from __future__ import annotations

from typing import Any

import attrs

from sbr_core.errors import RepositoryCorrupt

#: Chunk ids per map blob: 4096 x 32 bytes = 128 KiB, covering 512 MiB of disk at 128 KiB.
MAP_ENTRIES = 4096


@attrs.frozen
class DiskRecord:
    """One disk image: its size, chunk size, and the map blobs listing its chunks in order."""

    key: str
    size: int
    chunk_size: int
    maps: tuple[bytes, ...]
    identity: str = ""
    label: str = ""

    @property
    def chunk_count(self) -> int:
        return -(-self.size // self.chunk_size)

    def entries_in(self, piece: int) -> int:
        """How many chunk ids map blob ``piece`` holds (the last one may be short)."""
        return min(MAP_ENTRIES, self.chunk_count - piece * MAP_ENTRIES)

    def to_document(self) -> dict[str, Any]:
        return {"key": self.key, "size": self.size, "chunk_size": self.chunk_size,
                "maps": [m.hex() for m in self.maps], "identity": self.identity,
                "label": self.label}

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> DiskRecord:
        disk = cls(key=str(doc["key"]), size=int(doc["size"]),
                   chunk_size=int(doc["chunk_size"]),
                   maps=tuple(bytes.fromhex(m) for m in doc["maps"]),
                   identity=str(doc.get("identity", "")), label=str(doc.get("label", "")))
        if disk.chunk_size <= 0 or len(disk.maps) != -(-disk.chunk_count // MAP_ENTRIES):
            raise RepositoryCorrupt(f"disk {disk.key!r} lists {len(disk.maps)} chunk maps for "
                                    f"{disk.chunk_count} chunks")
        return disk


@attrs.frozen
class Manifest:
    """One backup. ``kind`` says what was protected (``image``, ``vm``, ``path``, …)."""

    id: str
    name: str
    kind: str
    created: str
    finished: str
    host: str
    parent: str = ""
    disks: tuple[DiskRecord, ...] = ()
    files: dict[str, bytes] = attrs.field(factory=dict)  # name → FILE blob id
    tree: tuple[bytes, ...] | None = None  # TREE blob ids, or None: no item tree
    tags: tuple[str, ...] = ()
    platform_state: dict[str, Any] = attrs.field(factory=dict)
    metadata: dict[str, Any] = attrs.field(factory=dict)
    stats: dict[str, int] = attrs.field(factory=dict)

    def disk(self, key: str) -> DiskRecord | None:
        for disk in self.disks:
            if disk.key == key:
                return disk
        return None

    def to_document(self) -> dict[str, Any]:
        return {
            "version": 1, "id": self.id, "name": self.name, "kind": self.kind,
            "created": self.created, "finished": self.finished, "host": self.host,
            "parent": self.parent, "disks": [d.to_document() for d in self.disks],
            "files": {k: v.hex() for k, v in self.files.items()},
            "tree": None if self.tree is None else [t.hex() for t in self.tree],
            "tags": list(self.tags), "platform_state": self.platform_state,
            "metadata": self.metadata, "stats": self.stats,
        }

    @classmethod
    def from_document(cls, doc: dict[str, Any], what: str) -> Manifest:
        try:
            tree = doc.get("tree")
            return cls(
                id=str(doc["id"]), name=str(doc["name"]), kind=str(doc["kind"]),
                created=str(doc["created"]), finished=str(doc["finished"]),
                host=str(doc.get("host", "")), parent=str(doc.get("parent", "")),
                disks=tuple(DiskRecord.from_document(d) for d in doc.get("disks", [])),
                files={str(k): bytes.fromhex(v) for k, v in doc.get("files", {}).items()},
                tree=None if tree is None else tuple(bytes.fromhex(t) for t in tree),
                tags=tuple(doc.get("tags", ())),
                platform_state=dict(doc.get("platform_state", {})),
                metadata=dict(doc.get("metadata", {})),
                stats={str(k): int(v) for k, v in doc.get("stats", {}).items()},
            )
        except (KeyError, TypeError, ValueError):
            raise RepositoryCorrupt(f"{what} is malformed") from None
