"""Forget, garbage collection beside a running writer, repacking, and retention rules."""

from __future__ import annotations

import os
from pathlib import Path

from sbr_core.models import Extent
from sbr_core.repository import BackupWriter, Manifest, Repository, collect_garbage, forget
from sbr_core.repository.retention import RetentionRules, select_forgettable
from sbr_core.repository.verify import verify as run_verify
from tests.unit.repository.conftest import BackupImage, CountingImage, restored_bytes


def stored_bytes(repo: Repository) -> int:
    return sum(info.size for info in repo.destination.list("packs/"))


def test_gc_frees_everything_a_forgotten_backup_alone_used(
        repo: Repository, backup_image: BackupImage, tmp_path: Path) -> None:
    keep = CountingImage(os.urandom(1024 * 1024))
    drop = CountingImage(os.urandom(3 * 1024 * 1024))
    kept = backup_image(keep, name="keep")
    dropped = backup_image(drop, name="drop")
    before = stored_bytes(repo)
    forget(repo, [dropped.id[:8]])
    report = collect_garbage(repo)
    assert report.phase == "swept" and report.packs_deleted >= 1
    assert stored_bytes(repo) < before - 2.5 * 1024 * 1024
    assert restored_bytes(repo, kept, tmp_path) == keep.data
    assert run_verify(repo).ok


def test_mostly_dead_packs_are_repacked(repo: Repository, backup_image: BackupImage,
                                        tmp_path: Path) -> None:
    # One backup whose chunks share packs: forgetting most of its data leaves packs that
    # are mostly dead; gc rewrites the live part.
    image = CountingImage(os.urandom(2 * 1024 * 1024))
    first = backup_image(image, name="a")
    image.data[: 1536 * 1024] = os.urandom(1536 * 1024)
    second = backup_image(image, parent=first, changed=[Extent(0, 1536 * 1024)], name="a")
    forget(repo, [first.id])
    before = stored_bytes(repo)
    report = collect_garbage(repo)
    assert report.packs_repacked >= 1 or report.packs_deleted >= 1
    assert stored_bytes(repo) <= before - 1024 * 1024
    assert restored_bytes(repo, second, tmp_path) == image.data


def test_gc_waits_for_a_writer_that_started_before_it_and_keeps_what_it_used(
        repo: Repository, backup_image: BackupImage, tmp_path: Path) -> None:
    shared = os.urandom(1024 * 1024)
    old = backup_image(CountingImage(shared), name="old")
    forget(repo, [old.id])
    # A writer starts before the gc and will reuse the forgotten backup's chunks.
    with BackupWriter(repo, name="new", kind="image") as writer:
        report = collect_garbage(repo)
        assert report.phase == "marked; waiting for writers"
        assert report.waiting_for
        image = CountingImage(shared)
        writer.add_disk("vda", image.size, [Extent(0, image.size)], image.read)
        new = writer.commit()
    report = collect_garbage(repo)
    assert report.phase == "swept"
    assert report.packs_kept >= 1  # the condemned pack the new backup needs stays
    assert restored_bytes(repo, new, tmp_path) == shared
    assert run_verify(repo).ok


def test_writer_that_starts_after_a_plan_does_not_use_condemned_data(
        repo: Repository, backup_image: BackupImage, tmp_path: Path) -> None:
    shared = os.urandom(1024 * 1024)
    old = backup_image(CountingImage(shared), name="old")
    forget(repo, [old.id])
    with BackupWriter(repo, name="blocker", kind="image"):
        assert collect_garbage(repo).phase == "marked; waiting for writers"
    # The blocker is gone; a new writer sees the plan and stores the data again.
    new = backup_image(CountingImage(shared), name="new")
    assert new.stats["stored_new"] >= len(shared)
    assert collect_garbage(repo).phase == "swept"
    assert restored_bytes(repo, new, tmp_path) == shared
    assert run_verify(repo).ok


def manifest(backup_id: str, created: str, name: str = "vm") -> Manifest:
    return Manifest(id=backup_id, name=name, kind="image", created=created, finished=created,
                    host="h")


def test_retention_keeps_the_newest_of_each_period_per_name() -> None:
    backups = [manifest(f"d{day:02d}{hour}", f"2026-11-{day:02d}T{hour:02d}:00:00.000000Z")
               for day in range(1, 11) for hour in (1, 13)]
    backups.append(manifest("other", "2026-10-01T00:00:00.000000Z", name="other-vm"))
    forgotten = {m.id for m in select_forgettable(backups, RetentionRules(last=2, daily=4))}
    kept = {m.id for m in backups} - forgotten
    assert kept == {"d1013", "d101", "d0913", "d0813", "d0713", "other"}
    assert not select_forgettable(backups, RetentionRules(monthly=2)) == backups


def test_repeated_repack_and_gc_never_loses_a_live_chunk(tmp_path: Path) -> None:
    # Repacking copies live chunks, so two index entries name them for a while; the sweep
    # must keep the surviving copy whichever entry the master index happened to use.
    from sbr_core.repository import init_repository
    from tests.unit.repository.conftest import CHUNK, PASSPHRASE, make_destination

    for attempt in range(6):
        repo = init_repository(make_destination(tmp_path / f"r{attempt}"),
                               passphrase=PASSPHRASE, image_chunk_size=CHUNK,
                               pack_size=1024 * 1024)
        image = CountingImage(os.urandom(3 * 1024 * 1024))
        backups = []
        parent = None
        for round_ in range(3):
            start = round_ * 1024 * 1024
            image.data[start:start + 700 * 1024] = os.urandom(700 * 1024)
            with BackupWriter(repo, name="a", kind="image", parent=parent) as writer:
                writer.add_disk("vda", image.size, [Extent(start, 700 * 1024)] if parent
                                else [Extent(0, image.size)], image.read, full=parent is None)
                parent = writer.commit()
            backups.append((parent, bytes(image.data)))
        forget(repo, [backups[0][0].id, backups[1][0].id])
        collect_garbage(repo)
        collect_garbage(repo)
        assert run_verify(repo).ok
        assert restored_bytes(repo, backups[2][0], tmp_path) == backups[2][1]
