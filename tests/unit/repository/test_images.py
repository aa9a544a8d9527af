"""Disk images: full and incremental backups, zeros, restores, random access, forgetting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sbr_core.errors import UsageError
from sbr_core.models import Extent
from sbr_core.repository import (
    BackupWriter,
    DiskImageReader,
    Repository,
    collect_garbage,
    forget,
)
from sbr_core.repository.format import ZERO_ID
from sbr_core.repository.manifest import MAP_ENTRIES
from sbr_core.repository.reader import disk_chunk_ids
from sbr_core.repository.verify import verify
from tests.unit.repository.conftest import (
    CHUNK,
    BackupImage,
    CountingImage,
    mixed_image,
    restored_bytes,
)


def test_full_backup_restores_byte_identical_and_stores_zeros_as_nothing(
        repo: Repository, backup_image: BackupImage, tmp_path: Path) -> None:
    image = CountingImage(mixed_image(4 * 1024 * 1024 + 12345))  # not a chunk multiple
    manifest = backup_image(image)
    assert restored_bytes(repo, manifest, tmp_path) == image.data
    ids = list(disk_chunk_ids(repo, manifest.disks[0]))
    assert ids.count(ZERO_ID) == sum(
        1 for i in range(0, image.size, CHUNK) if not any(image.data[i:i + CHUNK]))
    # half the chunks are zeros: never stored; the text compresses
    assert manifest.stats["stored_new"] < image.size * 0.4
    assert verify(repo).ok


def test_sparse_extents_are_never_read(repo: Repository, tmp_path: Path) -> None:
    image = CountingImage(bytes(8 * 1024 * 1024))
    image.data[CHUNK * 3:CHUNK * 3 + 10] = b"0123456789"
    with BackupWriter(repo, name="sparse", kind="image") as writer:
        writer.add_disk("vda", image.size, [Extent(CHUNK * 3, 10)], image.read)
        manifest = writer.commit()
    assert image.bytes_read == CHUNK  # the one chunk the extent touches, read whole
    assert restored_bytes(repo, manifest, tmp_path) == image.data


def test_incremental_reads_only_changed_extents_and_is_complete_on_its_own(
        repo: Repository, backup_image: BackupImage, tmp_path: Path) -> None:
    image = CountingImage(mixed_image(6 * 1024 * 1024))
    full = backup_image(image)
    changes = [Extent(CHUNK * 5 + 100, 50), Extent(CHUNK * 40, CHUNK * 2)]
    for extent in changes:
        image.data[extent.offset:extent.end] = os.urandom(extent.length)
    image.bytes_read = 0
    incremental = backup_image(image, parent=full, changed=changes)
    assert image.bytes_read == 3 * CHUNK
    assert incremental.stats["chunks_new"] <= 3 + 1  # changed chunks and one map blob
    assert restored_bytes(repo, incremental, tmp_path) == image.data
    # Forgetting the full backup and collecting garbage leaves the incremental whole.
    forget(repo, [full.id])
    report = collect_garbage(repo)
    assert report.phase in ("swept", "nothing to do")
    assert restored_bytes(repo, incremental, tmp_path) == image.data
    assert verify(repo).ok


def test_zero_extent_in_an_incremental_zeroes_those_chunks(
        repo: Repository, backup_image: BackupImage, tmp_path: Path) -> None:
    image = CountingImage(os.urandom(1024 * 1024))
    full = backup_image(image)
    image.data[CHUNK * 2:CHUNK * 4] = bytes(CHUNK * 2)  # discarded by the guest
    image.bytes_read = 0
    incremental = backup_image(image, parent=full,
                               changed=[Extent(CHUNK * 2, CHUNK * 2, zero=True)])
    assert image.bytes_read == 0
    assert restored_bytes(repo, incremental, tmp_path) == image.data


def test_large_sparse_disk_uses_several_map_blobs_and_reuses_untouched_ones(
        repo: Repository, tmp_path: Path) -> None:
    size = CHUNK * MAP_ENTRIES * 3 + 5000  # four map blobs (the last one short)
    writes = {0: b"start", CHUNK * MAP_ENTRIES + 7: b"second map", size - 10: b"end-bytes!"}

    def read(offset: int, length: int) -> bytes:
        block = bytearray(length)
        for where, payload in writes.items():
            if offset <= where < offset + length:
                block[where - offset:where - offset + len(payload)] = payload
        return bytes(block)

    extents = [Extent(where, len(payload)) for where, payload in sorted(writes.items())]
    with BackupWriter(repo, name="big", kind="image") as writer:
        full_disk = writer.add_disk("vda", size, extents, read)
        full = writer.commit()
    assert len(full_disk.maps) == 4
    reader = DiskImageReader(repo, full.disks[0])
    for where, payload in writes.items():
        assert reader.read(where, len(payload)) == payload
    assert reader.read(size - 10, 100) == b"end-bytes!"
    assert reader.read(CHUNK * 10, 20) == bytes(20)
    writes[CHUNK * MAP_ENTRIES * 2 + 1] = b"third map"
    with BackupWriter(repo, name="big", kind="image", parent=full) as writer:
        inc_disk = writer.add_disk("vda", size, [Extent(CHUNK * MAP_ENTRIES * 2 + 1, 9)], read,
                                   full=False)
        writer.commit()
    assert inc_disk.maps[0] == full_disk.maps[0]
    assert inc_disk.maps[1] == full_disk.maps[1]
    assert inc_disk.maps[2] != full_disk.maps[2]
    assert inc_disk.maps[3] == full_disk.maps[3]


def test_random_access_reads_cross_chunk_boundaries(repo: Repository,
                                                    backup_image: BackupImage) -> None:
    image = CountingImage(mixed_image(2 * 1024 * 1024 + 77))
    manifest = backup_image(image)
    reader = DiskImageReader(repo, manifest.disks[0])
    for offset, length in [(0, 1), (CHUNK - 3, 10), (CHUNK * 2 + 5, CHUNK * 3),
                           (image.size - 50, 200), (image.size, 10)]:
        assert reader.read(offset, length) == bytes(image.data[offset:offset + length])


def test_identical_disks_of_two_instances_are_stored_once(repo: Repository,
                                                          backup_image: BackupImage) -> None:
    image = CountingImage(os.urandom(2 * 1024 * 1024))
    first = backup_image(image, name="vm1")
    second = backup_image(image, name="vm2")
    assert first.stats["stored_new"] > 2 * 1024 * 1024 * 0.9
    assert second.stats["stored_new"] < 64 * 1024  # the map blob at most


def test_incremental_without_the_parents_disk_is_refused(repo: Repository,
                                                         backup_image: BackupImage) -> None:
    image = CountingImage(os.urandom(256 * 1024))
    with pytest.raises(UsageError, match="back it up in full"), \
            BackupWriter(repo, name="vm1", kind="image") as writer:
        writer.add_disk("vda", image.size, [Extent(0, 10)], image.read, full=False)


def test_extent_outside_the_disk_is_refused_and_no_backup_is_written(
        repo: Repository) -> None:
    image = CountingImage(os.urandom(256 * 1024))
    with pytest.raises(UsageError, match="outside the disk"), \
            BackupWriter(repo, name="vm1", kind="image") as writer:
        writer.add_disk("vda", image.size, [Extent(image.size - 5, 10)], image.read)
        writer.commit()
    assert repo.backup_ids() == []
    assert list(repo.destination.list("locks/")) == []


def test_incompressible_chunks_are_stored_raw(repo: Repository,
                                              backup_image: BackupImage) -> None:
    image = CountingImage(os.urandom(1024 * 1024))
    manifest = backup_image(image)
    overhead = manifest.stats["stored_new"] - image.size
    assert 0 < overhead < 16 * 64 + 4096  # nonce+tag+codec byte per chunk, and the map


@pytest.mark.parametrize("new_size", [CHUNK * MAP_ENTRIES + 3 * CHUNK,  # 3 map blobs to 2
                                      CHUNK * MAP_ENTRIES * 3 + 5])  # 3 map blobs to 4
def test_incremental_of_a_disk_that_changed_size(repo: Repository, new_size: int,
                                                 tmp_path: Path) -> None:
    def read(offset: int, length: int) -> bytes:  # zeros, but "data" in the first 10 bytes
        block = bytearray(length)
        if offset == 0:
            block[:10] = b"0123456789"
        return bytes(block)

    old_size = CHUNK * MAP_ENTRIES * 2 + CHUNK
    with BackupWriter(repo, name="vm", kind="image") as writer:
        writer.add_disk("vda", old_size, [Extent(0, 10)], read)
        full = writer.commit()
    with BackupWriter(repo, name="vm", kind="image", parent=full) as writer:
        writer.add_disk("vda", new_size, [Extent(0, 10)], read, full=False)
        incremental = writer.commit()
    reader = DiskImageReader(repo, incremental.disks[0])
    assert reader.read(0, 12) == b"0123456789\0\0"
    assert reader.read(new_size - 7, 100) == bytes(7)
    assert verify(repo).ok
    assert len(restored_bytes(repo, incremental, tmp_path)) == new_size


def test_zero_extent_covering_part_of_a_chunk_zeroes_just_that_part(
        repo: Repository, backup_image: BackupImage, tmp_path: Path) -> None:
    image = CountingImage(os.urandom(CHUNK * 8))
    full = backup_image(image)
    zeroed = Extent(CHUNK + 100, CHUNK * 3)  # part of chunk 1, chunks 2-3, part of chunk 4
    image.data[zeroed.offset:zeroed.end] = bytes(zeroed.length)
    incremental = backup_image(image, parent=full,
                               changed=[Extent(zeroed.offset, zeroed.length, zero=True)])
    assert restored_bytes(repo, incremental, tmp_path) == image.data
    assert image.bytes_read == CHUNK * 8 + 2 * CHUNK  # the full read, then the two edges


def test_extents_out_of_order_are_refused(repo: Repository) -> None:
    image = CountingImage(os.urandom(CHUNK * 4))
    with pytest.raises(UsageError, match="offset order"), \
            BackupWriter(repo, name="vm", kind="image") as writer:
        writer.add_disk("vda", image.size, [Extent(CHUNK * 2, 10), Extent(0, 10)], image.read)


def test_grown_disk_whose_old_last_chunk_was_short(repo: Repository, backup_image: BackupImage,
                                                   tmp_path: Path) -> None:
    image = CountingImage(os.urandom(CHUNK * 3 + 1000))  # the last chunk holds 1000 bytes
    full = backup_image(image)
    # Grown by two chunks: new space reads as zeros, and only chunk 4 was written to, so no
    # extent touches the old short chunk.
    image.data += bytes(CHUNK - 1000) + os.urandom(CHUNK)
    incremental = backup_image(image, parent=full, changed=[Extent(CHUNK * 4, CHUNK)])
    assert restored_bytes(repo, incremental, tmp_path) == image.data
    assert DiskImageReader(repo, incremental.disks[0]).read(CHUNK * 3, 2000) \
        == bytes(image.data[CHUNK * 3:CHUNK * 3 + 2000])
