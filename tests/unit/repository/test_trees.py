"""Item trees: files and items with metadata, unchanged files, deltas, skips, single items."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sbr_core.errors import ItemUnavailable, UsageError
from sbr_core.models import Entry, EntryKind
from sbr_core.repository import BackupWriter, Manifest, Repository, open_item, restore_tree
from sbr_core.repository.sources import walk_directory
from sbr_core.repository.tree import entry_of, iter_records


def make_tree(root: Path) -> None:
    (root / "docs" / "deep" / "er").mkdir(parents=True)
    (root / "docs" / "a.txt").write_text("alpha\n" * 1000)
    (root / "docs" / "deep" / "er" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 11))
    (root / "docs.txt").write_text("sorts after the docs directory's children")
    (root / "empty").write_bytes(b"")
    (root / "link").symlink_to("docs/a.txt")
    os.chmod(root / "docs" / "a.txt", 0o640)
    os.utime(root / "docs" / "a.txt", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))


def backup_dir(repo: Repository, root: Path, parent: Manifest | None = None) -> Manifest:
    with BackupWriter(repo, name="share", kind="path", parent=parent) as writer:
        writer.add_tree(walk_directory(root))
        return writer.commit()


def snapshot(root: Path) -> dict[str, tuple[str, bytes, int, int]]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path).encode(), 0, 0)
        elif path.is_file():
            st = path.stat()
            out[rel] = ("file", path.read_bytes(), st.st_mode, st.st_mtime_ns)
        else:
            out[rel] = ("dir", b"", path.stat().st_mode, 0)
    return out


def test_tree_restores_contents_modes_times_and_links(repo: Repository,
                                                      tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    manifest = backup_dir(repo, tmp_path / "src")
    counts = restore_tree(repo, manifest, tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(tmp_path / "src")
    assert counts["files"] == 4 and counts["links"] == 1 and counts["directories"] == 3


def test_second_backup_does_not_read_unchanged_files(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    first = backup_dir(repo, src)
    (src / "docs.txt").write_text("changed, and longer than before")
    second = backup_dir(repo, src, parent=first)
    assert second.stats["files_unchanged"] == 3
    assert second.stats["bytes_read"] == len("changed, and longer than before")
    restore_tree(repo, second, tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(src)


def test_large_file_insertion_changes_few_chunks(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    payload = os.urandom(8 * 1024 * 1024)
    (src / "f").write_bytes(payload)
    first = backup_dir(repo, src)
    (src / "f").write_bytes(payload[:4_000_000] + b"inserted" + payload[4_000_000:])
    second = backup_dir(repo, src, parent=first)
    assert second.stats["bytes_new"] < 4 * 1024 * 1024 + 64 * 1024  # content-defined cuts


def test_single_item_reads_back_by_path(repo: Repository, tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    manifest = backup_dir(repo, tmp_path / "src")
    record, stream = open_item(repo, manifest, "docs/deep/er/big.bin")
    assert stream.read() == (tmp_path / "src/docs/deep/er/big.bin").read_bytes()
    assert record["size"] == 3 * 1024 * 1024 + 11
    with pytest.raises(UsageError, match="not in backup"):
        open_item(repo, manifest, "nope")


def test_restore_of_one_directory_only(repo: Repository, tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    manifest = backup_dir(repo, tmp_path / "src")
    restore_tree(repo, manifest, tmp_path / "out", include="docs/deep")
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*")) \
        == ["docs", "docs/deep", "docs/deep/er", "docs/deep/er/big.bin"]


def item(path: str, item_id: str, body: bytes, version: str = "1") -> Entry:
    return Entry(path=path, kind=EntryKind.ITEM, item_id=item_id, size=len(body),
                 metadata={"version": version, "subject": path},
                 open=lambda: io.BytesIO(body))


def test_delta_export_merges_changes_and_removals_with_the_parent(repo: Repository) -> None:
    with BackupWriter(repo, name="mailbox", kind="mailbox") as writer:
        writer.add_tree([item("inbox/1", "id1", b"one"), item("inbox/2", "id2", b"two"),
                         item("inbox/3", "id3", b"three")])
        first = writer.commit()
    with BackupWriter(repo, name="mailbox", kind="mailbox", parent=first) as writer:
        writer.add_tree([item("archive/2", "id2", b"two, moved", "2"),
                         item("inbox/4", "id4", b"four")], complete=False, removed=["id1"])
        second = writer.commit()
    assert second.tree is not None
    records = list(iter_records(repo, second.tree))
    assert [(r["path"], r["item_id"]) for r in records] == [
        ("archive/2", "id2"), ("inbox/3", "id3"), ("inbox/4", "id4")]
    assert open_item(repo, second, "inbox/3")[1].read() == b"three"
    assert open_item(repo, second, "archive/2")[1].read() == b"two, moved"
    assert entry_of(records[0]).metadata == {"version": "2", "subject": "archive/2"}


def test_unsorted_entries_are_refused(repo: Repository) -> None:
    with pytest.raises(UsageError, match="sorted by path"), \
            BackupWriter(repo, name="m", kind="mailbox") as writer:
        writer.add_tree([item("b", "1", b"x"), item("a", "2", b"y")])
    assert repo.backup_ids() == []


def test_unreadable_item_is_skipped_and_reported(repo: Repository) -> None:
    def gone() -> io.BytesIO:
        raise ItemUnavailable("item was deleted while we read it")

    skipped: list[tuple[str, str]] = []
    broken = Entry(path="inbox/2", kind=EntryKind.ITEM, item_id="2", size=3, open=gone)

    def entries() -> Iterator[Entry]:
        yield item("inbox/1", "1", b"one")
        yield broken
        yield item("inbox/3", "3", b"three")

    with BackupWriter(repo, name="m", kind="mailbox") as writer:
        writer.add_tree(entries(), on_skip=lambda e, why: skipped.append((e.path, why)))
        manifest = writer.commit()
    assert skipped == [("inbox/2", "item was deleted while we read it")]
    assert manifest.stats["skipped"] == 1
    assert manifest.tree is not None
    assert [r["path"] for r in iter_records(repo, manifest.tree)] == ["inbox/1", "inbox/3"]


@pytest.mark.parametrize("entries", [
    [Entry(path="a", kind=EntryKind.SYMLINK, link_target="/tmp"), item("a/evil", "1", b"x")],
    [item("../escape", "1", b"x")],
], ids=["below-a-symlink", "dot-dot"])
def test_restore_never_writes_outside_the_target(repo: Repository, tmp_path: Path,
                                                 entries: list[Entry]) -> None:
    from sbr_core.errors import RepositoryCorrupt

    with BackupWriter(repo, name="m", kind="path") as writer:
        writer.add_tree(entries)
        manifest = writer.commit()
    with pytest.raises(RepositoryCorrupt, match=r"below a symlink|not a relative path"):
        restore_tree(repo, manifest, tmp_path / "out")
    assert not (tmp_path / "escape").exists()
