"""The master index keeps its memory bounded by spilling entries to a temporary database;
spilled or not, it must answer exactly as before."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest

from sbr_core.models import Extent
from sbr_core.repository import Repository, collect_garbage, forget
from sbr_core.repository import index as index_module
from sbr_core.repository.format import BlobType
from sbr_core.repository.index import MasterIndex
from sbr_core.repository.verify import verify
from tests.unit.repository.conftest import (
    BackupImage,
    CountingImage,
    mixed_image,
    restored_bytes,
)


def _packs(seed: int) -> list[tuple[bytes, list[tuple[BlobType, bytes, int, int, int]]]]:
    """Forty packs of 25 entries; every fifth id is listed again in a later pack."""
    rng = random.Random(seed)
    ids = [rng.randbytes(32) for _ in range(800)]
    packs = []
    for number in range(40):
        pack_id = rng.randbytes(32)
        entries = [(BlobType.DATA, ids[(number * 20 + n) % len(ids)], n * 100, 90, 128)
                   for n in range(25)]
        packs.append((pack_id, entries))
    return packs


def _filled(memory_entries: int, monkeypatch: pytest.MonkeyPatch) -> MasterIndex:
    monkeypatch.setattr(index_module, "MEMORY_ENTRIES", memory_entries)
    index = MasterIndex()
    for pack_id, entries in _packs(seed=7):
        index.add(pack_id, entries)
    return index


def test_a_spilled_index_answers_exactly_like_one_in_memory(
        monkeypatch: pytest.MonkeyPatch) -> None:
    in_memory = _filled(10**9, monkeypatch)
    spilled = _filled(64, monkeypatch)
    assert in_memory.entries_on_disk == 0
    assert spilled.entries_in_memory < 64 and spilled.entries_on_disk > 0
    assert len(spilled) == len(in_memory) == 800
    # The first copy listed wins, whether the earlier one went to disk or not.
    for blob_id, location in in_memory.items():
        assert blob_id in spilled
        assert spilled.lookup(blob_id) == location
    assert dict(spilled.items()) == dict(in_memory.items())
    assert spilled.packs() == in_memory.packs()
    unknown = os.urandom(32)
    assert unknown not in spilled and spilled.lookup(unknown) is None


def test_lookups_from_several_threads_while_entries_spill(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_module, "MEMORY_ENTRIES", 32)
    index = MasterIndex()
    packs = _packs(seed=9)
    added: list[bytes] = []
    misses: list[bytes] = []
    done = threading.Event()

    def look() -> None:
        while not done.is_set():
            for blob_id in list(added):
                if index.lookup(blob_id) is None:
                    misses.append(blob_id)

    readers = [threading.Thread(target=look) for _ in range(3)]
    for reader in readers:
        reader.start()
    try:
        for pack_id, entries in packs:
            index.add(pack_id, entries)
            added.extend(entry[1] for entry in entries)
    finally:
        done.set()
        for reader in readers:
            reader.join()
    assert misses == []  # an entry once added is never out of sight, not even mid-spill
    assert index.entries_on_disk > 0


def test_backup_restore_verify_and_gc_with_the_index_spilled_to_disk(
        repo: Repository, backup_image: BackupImage, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_module, "MEMORY_ENTRIES", 16)
    image = CountingImage(mixed_image(6 * 1024 * 1024, seed=3))
    first = backup_image(image)
    assert repo.index.entries_on_disk > 0 and repo.index.entries_in_memory < 16
    original = bytes(image.data)
    image.data[65536:65536 * 3] = os.urandom(65536 * 2)
    second = backup_image(image, parent=first, changed=[Extent(65536, 65536 * 2)])
    # The two rewritten chunks and the map blob listing them; the rest is found in the index.
    assert second.stats["chunks_new"] == 3
    again = backup_image(image, name="vm2")  # a full backup of known data stores nothing
    assert again.stats["chunks"] > 16 and again.stats["chunks_new"] == 0

    with repo.reading():
        assert repo.index.entries_on_disk > 0  # the reader's index was spilled too
        assert restored_bytes(repo, first, tmp_path) == original
        assert restored_bytes(repo, second, tmp_path) == bytes(image.data)
    report = verify(repo)
    assert report.ok, report

    # The second backup's pack holds only its new blobs, which only it and the third use.
    forget(repo, [second.id, again.id])
    report = collect_garbage(repo)
    assert report.phase == "swept" and report.packs_deleted == 1
    with repo.reading():
        assert restored_bytes(repo, first, tmp_path) == original
    assert verify(repo).ok
