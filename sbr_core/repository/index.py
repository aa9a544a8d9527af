"""The master index: every blob id the repository holds, and where.

Each writer adds its own ``index/<id>`` objects; nobody rewrites another's, so concurrent
writers never conflict. Garbage collection replaces index files it has read by one new file
and deletes only those it read. A damaged index file is reported, never guessed around: its
packs stay out of reach until ``sbr repo repair-index`` rebuilds it from the pack headers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sbr_core.errors import ObjectNotFound, RepositoryCorrupt
from sbr_core.providers.destination import Destination
from sbr_core.repository.crypto import Sealer
from sbr_core.repository.format import BlobLocation, BlobType, decode_index

log = logging.getLogger(__name__)


class MasterIndex:
    """blob id → location, with packs numbered to keep entries small in memory."""

    def __init__(self) -> None:
        self._packs: list[bytes] = []
        self._pack_numbers: dict[bytes, int] = {}
        # id → (pack number, offset, stored length, raw length, type)
        self._blobs: dict[bytes, tuple[int, int, int, int, int]] = {}
        self.files: set[str] = set()
        self.damaged: dict[str, str] = {}  # index key → problem
        self.excluded_packs: set[bytes] = set()

    def __contains__(self, blob_id: object) -> bool:
        return blob_id in self._blobs

    def __len__(self) -> int:
        return len(self._blobs)

    def add(self, pack_id: bytes, entries: Iterable[tuple[BlobType, bytes, int, int, int]]
            ) -> None:
        if pack_id in self.excluded_packs:
            return
        number = self._pack_numbers.get(pack_id)
        if number is None:
            number = self._pack_numbers[pack_id] = len(self._packs)
            self._packs.append(pack_id)
        blobs = self._blobs
        for blob_type, blob_id, offset, length, raw in entries:
            if blob_id not in blobs:
                blobs[blob_id] = (number, offset, length, raw, int(blob_type))

    def lookup(self, blob_id: bytes) -> BlobLocation | None:
        found = self._blobs.get(blob_id)
        if found is None:
            return None
        number, offset, length, raw, blob_type = found
        return BlobLocation(self._packs[number], offset, length, raw, BlobType(blob_type))

    def packs(self) -> set[bytes]:
        return set(self._packs)

    def items(self) -> Iterable[tuple[bytes, BlobLocation]]:
        for blob_id in self._blobs:
            location = self.lookup(blob_id)
            assert location is not None
            yield blob_id, location

    def load(self, destination: Destination, sealer: Sealer,
             exclude_packs: Iterable[bytes] = (), *, last_resort: Iterable[bytes] = ()
             ) -> None:
        """Read every index file. Packs in ``exclude_packs`` (condemned by a gc plan) are left
        out, so that a new backup never references data that is about to be deleted; a reader
        passes them as ``last_resort`` instead: used only for blobs found nowhere else."""
        self.excluded_packs = set(exclude_packs) | set(last_resort)
        deferred: list[tuple[bytes, list[tuple[BlobType, bytes, int, int, int]]]] = []
        self._load_files(destination, sealer, deferred, set(last_resort))
        self.excluded_packs = set(exclude_packs)
        for pack_id, entries in deferred:
            self.add(pack_id, entries)

    def _load_files(self, destination: Destination, sealer: Sealer,
                    deferred: list[tuple[bytes, list[tuple[BlobType, bytes, int, int, int]]]],
                    last_resort: set[bytes]) -> None:
        keys = sorted(info.key for info in destination.list("index/"))
        for key in keys:
            try:
                stored = destination.get(key)
            except ObjectNotFound:
                continue  # replaced by a gc that finished while we listed
            try:
                for pack_id, entries in decode_index(sealer, stored, f"index {key}"):
                    if pack_id in last_resort:
                        deferred.append((pack_id, entries))
                    self.add(pack_id, entries)
            except RepositoryCorrupt as exc:
                log.warning("%s", exc)
                self.damaged[key] = str(exc)
                continue
            self.files.add(key)


RawEntry = tuple[BlobType, bytes, int, int, int]  # type, id, offset, stored length, raw length


def read_all_entries(destination: Destination, sealer: Sealer, keys: Iterable[str]
                     ) -> dict[bytes, dict[bytes, RawEntry]]:
    """Every entry of these index files, per pack, duplicates across packs included (gc,
    verify and repair must see each copy, not only the one the master index uses)."""
    packs: dict[bytes, dict[bytes, RawEntry]] = {}
    for key in keys:
        try:
            stored = destination.get(key)
        except ObjectNotFound:
            continue
        for pack_id, entries in decode_index(sealer, stored, f"index {key}"):
            known = packs.setdefault(pack_id, {})
            for entry in entries:
                known.setdefault(entry[1], entry)
    return packs
