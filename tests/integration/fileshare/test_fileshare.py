"""The fileshare provider on real files: full and incremental backups into a real repository,
restores to another path, the original path, a single file; conflicts, unreadable files, hard
links and extended attributes."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from sbr_core.errors import ConfigError, ProviderError
from sbr_core.models import BackupPoint, Entry, EntryKind, ExportRequest
from sbr_core.providers.items import ItemRestoreRequest
from sbr_core.repository import BackupWriter, Repository, open_repository, restore_tree
from sbr_core.repository.reader import tree_entries
from sbr_core.repository.sources import walk_directory
from sbr_core.repository.tree import iter_records
from tests.cli_runs import as_json, sbr
from tests.integration.fileshare.conftest import (
    PASSPHRASE,
    backup,
    make_provider,
    restore,
    snapshot,
    statuses,
)
from tests.mounts import MountTmpfs

ROOT = Path(__file__).resolve().parents[3]
T = 1_600_000_000_123_456_789  # a modification time with nanoseconds


def make_share(root: Path) -> None:
    """A tree with everything a file share holds: owners, odd modes, symlinks, hard links
    across folders, extended attributes of several namespaces, non-ASCII names."""
    root.mkdir()
    for folder in ("docs", "data", "archive", "ro", "tools"):
        (root / folder).mkdir()
    (root / "docs" / "report.txt").write_text("quarterly numbers\n" * 500)
    (root / "docs" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    (root / "docs" / "empty").write_bytes(b"")
    (root / "docs" / "naïve café.txt").write_text("non-ASCII name")
    (root / "archive" / "2019.txt").write_text("old\n" * 100)
    (root / "archive" / "2020.txt").write_text("older\n" * 100)
    (root / "ro" / "inside.txt").write_text("in a read-only folder")
    (root / "data" / "original.db").write_bytes(b"database pages " * 4000)
    os.link(root / "data" / "original.db", root / "docs" / "alias.db")
    os.link(root / "data" / "original.db", root / "zlast.db")
    (root / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "link-rel").symlink_to("docs/report.txt")
    (root / "link-abs").symlink_to("/etc/hostname")
    (root / "dangling").symlink_to("nowhere")

    os.chown(root / "docs" / "report.txt", 1001, 1002)
    os.chown(root / "docs", 2001, 2002)
    os.chown(root / "data" / "original.db", 1234, 5678)
    os.chown(root / "script.sh", 1234, 5678)
    os.chown(root / "link-rel", 3001, 3002, follow_symlinks=False)
    os.chmod(root / "docs" / "report.txt", 0o640)
    os.chmod(root / "docs", 0o750)  # noqa: S103 - modes to restore
    os.chmod(root / "data", 0o1777)  # noqa: S103 - modes to restore
    os.chmod(root / "script.sh", 0o4755)  # noqa: S103 - after the chown (it clears set-id)
    os.setxattr(root / "docs" / "report.txt", "user.comment", b"checked by finance")
    os.setxattr(root / "docs" / "report.txt", "user.binary", b"\x00\xff\x10")
    os.setxattr(root / "docs" / "report.txt", "trusted.sbr", b"root-only namespace")
    os.setxattr(root / "docs", "user.project", b"alpha")
    os.setxattr(root / "data" / "original.db", "user.db", b"1")
    set_times(root)
    os.chmod(root / "ro", 0o555)  # noqa: S103 - modes to restore


def set_times(root: Path) -> None:
    """Distinct modification times everywhere, children before their folders."""
    paths = sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True)
    for number, path in enumerate(paths):
        os.utime(path, ns=(T + number, T + number * 1_000_001), follow_symlinks=False)


@pytest.fixture
def share(tmp_path: Path) -> Path:
    root = tmp_path / "share"
    make_share(root)
    return root


def file_paths(root: Path) -> list[str]:
    """Regular files, each inode once (its first name in path order)."""
    seen: set[int] = set()
    out = []
    for path in sorted(root.rglob("*"), key=lambda p: tuple(p.relative_to(root).parts)):
        st = os.lstat(path)
        if path.is_file() and not path.is_symlink() and st.st_ino not in seen:
            seen.add(st.st_ino)
            out.append(path.relative_to(root).as_posix())
    return out


def test_full_backup_restores_every_attribute_to_another_path(
        share: Path, repo: Repository, tmp_path: Path) -> None:
    provider = make_provider(share)
    run = backup(provider, repo)
    assert sorted(run.opened) == sorted(file_paths(share))  # hard links are not read again
    assert run.skipped == [] and run.export.skipped == []

    records = {r["path"]: r for r in iter_records(repo, run.manifest.tree or ())}
    assert records["docs/alias.db"]["kind"] == "hardlink"
    assert records["docs/alias.db"]["link_target"] == "data/original.db"
    assert records["docs/alias.db"]["chunks"] == records["data/original.db"]["chunks"]
    assert records["data/original.db"]["metadata"] == {"links": 3}
    assert set(records["docs/report.txt"]["xattrs"]) == {"user.comment", "user.binary",
                                                        "trusted.sbr"}
    inode = os.stat(share / "docs" / "big.bin")
    assert records["docs/big.bin"]["item_id"] == f"{inode.st_dev}:{inode.st_ino}"

    outcomes = restore(provider, repo, run.manifest, destination_path=tmp_path / "elsewhere")
    assert {o.status for o in outcomes} == {"restored"}, outcomes
    assert [o for o in outcomes if o.message and "hard link" not in o.message] == []
    assert len(outcomes) == len(records)
    assert snapshot(tmp_path / "elsewhere") == snapshot(share)


def test_sbr_repo_tree_restore_keeps_hard_links_xattrs_and_owners(
        share: Path, repo: Repository, tmp_path: Path) -> None:
    with BackupWriter(repo, name="share", kind="path") as writer:
        writer.add_tree(walk_directory(share))
        manifest = writer.commit()
    counts = restore_tree(repo, manifest, tmp_path / "out")
    assert counts["hardlinks"] == 2 and counts["warnings"] == 0
    assert snapshot(tmp_path / "out") == snapshot(share)


def test_sbr_repo_commands_keep_hard_links_and_xattrs(share: Path, tmp_path: Path,
                                                      sbr_env: dict[str, str]) -> None:
    env = {**sbr_env, "SBR_REPO_PASSWORD": PASSPHRASE}
    repo = str(tmp_path / "cli-repo")
    as_json(sbr("repo", "init", repo, "--json", env=env))
    as_json(sbr("repo", "backup-path", repo, "share", str(share), "--json", env=env))
    result = as_json(sbr("repo", "restore", repo, "share@latest", str(tmp_path / "out"),
                         "--json", env=env))
    assert result["hardlinks"] == 2
    assert snapshot(tmp_path / "out") == snapshot(share)


def test_incremental_reads_only_what_changed(share: Path, repo: Repository,
                                             tmp_path: Path) -> None:
    provider = make_provider(share)
    first = backup(provider, repo)

    report = share / "docs" / "report.txt"
    report.write_text("QUARTERLY NUMBERS\n" * 500)  # same size, new content and time
    os.utime(report, ns=(T, T + 999))
    (share / "archive").rename(share / "old-archive")  # a folder renamed
    (share / "docs" / "empty").unlink()  # a file deleted
    os.link(share / "script.sh", share / "tools" / "script-copy.sh")  # a new hard link
    (share / "docs" / "new.txt").write_text("new file")
    second = backup(provider, repo, parent=first.manifest)

    assert sorted(second.opened) == ["docs/new.txt", "docs/report.txt"]
    assert second.manifest.stats["files_unchanged"] == len(file_paths(share)) - 2
    records = {r["path"]: r for r in iter_records(repo, second.manifest.tree or ())}
    assert "docs/empty" not in records and "archive/2019.txt" not in records
    assert records["tools/script-copy.sh"]["link_target"] == "script.sh"
    assert records["tools/script-copy.sh"]["chunks"] == records["script.sh"]["chunks"]

    outcomes = restore(provider, repo, second.manifest, destination_path=tmp_path / "out")
    assert {o.status for o in outcomes} == {"restored"}
    assert snapshot(tmp_path / "out") == snapshot(share)


def test_a_file_replaced_with_the_same_size_and_time_is_read_again(
        share: Path, repo: Repository, tmp_path: Path) -> None:
    provider = make_provider(share)
    first = backup(provider, repo)
    report = share / "docs" / "report.txt"
    st = os.stat(report)
    replacement = share / "docs" / ".report.tmp"
    replacement.write_text("QUARTERLY NUMBERS\n" * 500)  # as a copy tool replaces a file
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    replacement.rename(report)
    assert os.stat(report).st_size == st.st_size and os.stat(report).st_ino != st.st_ino
    second = backup(provider, repo, parent=first.manifest)
    assert second.opened == ["docs/report.txt"]  # only the inode tells
    restore(provider, repo, second.manifest, include="docs/report.txt",
            destination_path=tmp_path / "out")
    assert (tmp_path / "out" / "docs" / "report.txt").read_text() == report.read_text()


def test_a_renamed_first_name_finds_its_content_by_inode(share: Path, repo: Repository) -> None:
    provider = make_provider(share)
    first = backup(provider, repo)
    # data/ sorts before docs/: after the rename, docs/alias.db is the inode's first name.
    (share / "data").rename(share / "zdata")
    second = backup(provider, repo, parent=first.manifest)
    assert second.opened == []
    records = {r["path"]: r for r in iter_records(repo, second.manifest.tree or ())}
    assert records["docs/alias.db"]["kind"] == "file"
    assert records["zdata/original.db"]["link_target"] == "docs/alias.db"


def test_single_file_restores_to_its_original_place(share: Path, repo: Repository) -> None:
    provider = make_provider(share)
    before = snapshot(share)["entries"]
    run = backup(provider, repo)
    (share / "docs" / "report.txt").unlink()
    (share / "docs" / "big.bin").write_bytes(b"changed since the backup")
    outcomes = restore(provider, repo, run.manifest, include="docs/report.txt")
    assert statuses(outcomes) == {"docs/report.txt": "restored"}
    after = snapshot(share)["entries"]
    assert after["docs/report.txt"] == before["docs/report.txt"]
    assert (share / "docs" / "big.bin").read_bytes() == b"changed since the backup"
    assert sorted(p.name for p in (share / "docs").iterdir()) == sorted(
        ["report.txt", "big.bin", "empty", "naïve café.txt", "alias.db"])


@pytest.mark.parametrize("conflict", ["skip", "overwrite", "rename"])
def test_conflict_modes(share: Path, repo: Repository, conflict: str) -> None:
    provider = make_provider(share)
    before = snapshot(share)["entries"]
    run = backup(provider, repo)
    report = share / "docs" / "report.txt"
    report.write_text("edited after the backup")
    edited = snapshot(share)["entries"]["docs/report.txt"]

    outcomes = restore(provider, repo, run.manifest, include="docs/report.txt",
                       conflict=conflict)
    assert len(outcomes) == 1
    outcome = outcomes[0]
    now = snapshot(share)["entries"]
    if conflict == "skip":
        assert outcome.status == "skipped" and "exists" in outcome.message
        assert now["docs/report.txt"] == edited
    elif conflict == "overwrite":
        assert outcome.status == "restored"
        assert now["docs/report.txt"] == before["docs/report.txt"]
    else:
        assert outcome.status == "restored"
        assert "restored as report (restored).txt" in outcome.message
        assert now["docs/report.txt"] == edited
        assert now["docs/report (restored).txt"] == before["docs/report.txt"]
    assert not [p for p in (share / "docs").iterdir() if p.name.startswith(".sbr-restore-")]


def test_keep_both_merges_into_a_folder_and_restores_its_files_beside_themselves(
        share: Path, repo: Repository) -> None:
    provider = make_provider(share)
    before = snapshot(share)["entries"]
    run = backup(provider, repo)
    (share / "archive" / "2019.txt").unlink()
    (share / "archive" / "2020.txt").write_text("edited after the backup")
    edited = snapshot(share)["entries"]["archive/2020.txt"]

    outcomes = restore(provider, repo, run.manifest, include="archive", conflict="rename")
    assert statuses(outcomes) == {"archive": "restored", "archive/2019.txt": "restored",
                                  "archive/2020.txt": "restored"}
    by_path = {outcome.path: outcome.message for outcome in outcomes}
    assert "merged into the existing directory" in by_path["archive"]
    now = snapshot(share)["entries"]
    assert now["archive/2019.txt"] == before["archive/2019.txt"]  # back where it was
    assert now["archive/2020.txt"] == edited
    assert now["archive/2020 (restored).txt"] == before["archive/2020.txt"]
    assert "archive (restored)" not in now


def test_a_folder_whose_name_a_file_took_is_restored_beside_it(share: Path,
                                                               repo: Repository) -> None:
    provider = make_provider(share)
    before = snapshot(share)["entries"]
    run = backup(provider, repo)
    shutil.rmtree(share / "archive")
    (share / "archive").write_text("not a folder any more")
    outcomes = restore(provider, repo, run.manifest, include="archive", conflict="rename")
    assert set(statuses(outcomes).values()) == {"restored"}
    now = snapshot(share)["entries"]
    for name in ("2019.txt", "2020.txt"):
        assert now[f"archive (restored)/{name}"] == before[f"archive/{name}"]
    assert now["archive (restored)"][2:] == before["archive"][2:]
    assert (share / "archive").read_text() == "not a folder any more"


def test_skip_restores_what_is_missing_in_an_existing_folder(share: Path,
                                                            repo: Repository) -> None:
    provider = make_provider(share)
    run = backup(provider, repo)
    (share / "archive" / "2019.txt").unlink()
    (share / "archive" / "2020.txt").write_text("kept as it is")
    outcomes = restore(provider, repo, run.manifest, include="archive", conflict="skip")
    assert statuses(outcomes) == {"archive": "skipped", "archive/2019.txt": "restored",
                                  "archive/2020.txt": "skipped"}
    assert (share / "archive" / "2019.txt").read_text() == "old\n" * 100
    assert (share / "archive" / "2020.txt").read_text() == "kept as it is"


def test_hard_link_whose_first_name_is_not_restored_becomes_a_file(
        share: Path, repo: Repository, tmp_path: Path) -> None:
    provider = make_provider(share)
    run = backup(provider, repo)
    outcomes = restore(provider, repo, run.manifest, include="docs",
                       destination_path=tmp_path / "out")
    alias = next(o for o in outcomes if o.path == "docs/alias.db")
    assert alias.status == "restored" and "its first name data/original.db" in alias.message
    restored = tmp_path / "out" / "docs" / "alias.db"
    assert restored.read_bytes() == (share / "data" / "original.db").read_bytes()
    assert os.stat(restored).st_nlink == 1
    assert os.getxattr(restored, "user.db") == b"1"
    assert (os.stat(restored).st_uid, os.stat(restored).st_gid) == (1234, 5678)
    # sbr repo restore does the same with --include.
    restore_tree(repo, run.manifest, tmp_path / "tree", include="docs")
    assert (tmp_path / "tree" / "docs" / "alias.db").read_bytes() == restored.read_bytes()


def test_failed_entry_leaves_no_half_file_and_the_rest_goes_on(share: Path,
                                                              tmp_path: Path) -> None:
    provider = make_provider(share)
    original = (share / "docs" / "report.txt").read_bytes()

    class Broken(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            if self.tell() >= 10:
                raise OSError(5, "Input/output error")
            return super().read(10)

    entries = [
        Entry(path="docs/report.txt", kind=EntryKind.FILE, size=1000, mode=0o100644,
              open=lambda: Broken(b"x" * 1000)),
        Entry(path="docs/other.txt", kind=EntryKind.FILE, size=2, mode=0o100600,
              open=lambda: io.BytesIO(b"ok")),
    ]
    request = ItemRestoreRequest(target=provider.inventory()[0], entries=entries,
                                 conflict="overwrite")
    outcomes = list(provider.restore(request))
    assert statuses(outcomes) == {"docs/report.txt": "failed", "docs/other.txt": "restored"}
    assert outcomes[0].message == "Input/output error"
    assert (share / "docs" / "report.txt").read_bytes() == original
    assert (share / "docs" / "other.txt").read_bytes() == b"ok"
    assert not [p for p in (share / "docs").iterdir() if p.name.startswith(".sbr-restore-")]


CHILD = """
import json, sys
from pathlib import Path
from sbr_core.repository import open_repository
from sbr_plugins.filesystem.destination import FilesystemDestination
from sbr_core.config import structure_config
from sbr_core.providers.base import ProviderContext
from tests.integration.fileshare.conftest import PASSPHRASE, backup, make_provider

config = structure_config(FilesystemDestination.Config, {"path": sys.argv[2], "fsync": "no"},
                          subject="destination 'test'")
repo = open_repository(FilesystemDestination(config, context=ProviderContext(name="test")),
                       passphrase=PASSPHRASE)
run = backup(make_provider(Path(sys.argv[1])), repo)
print(json.dumps({"backup": run.manifest.id, "skipped": run.skipped,
                  "walk": run.export.skipped}))
"""


def test_unreadable_entries_are_skipped_and_the_backup_goes_on(
        tmp_path: Path, repo: Repository) -> None:
    """A node without the capability to bypass file permissions (root without
    CAP_DAC_OVERRIDE, as on a share that squashes root) meets a file and a folder it may
    not read."""
    share = tmp_path / "share"
    (share / "locked").mkdir(parents=True)
    (share / "locked" / "inside.txt").write_text("hidden")
    (share / "readable.txt").write_text("fine")
    (share / "secret.txt").write_text("private")
    for path in (share / "locked", share / "secret.txt"):
        os.chown(path, 4321, 4321)
        os.chmod(path, 0o700 if path.is_dir() else 0o600)
    os.link(share / "secret.txt", share / "zz-secret-link.txt")
    result = subprocess.run(
        ["setpriv", "--bounding-set=-all", "--inh-caps=-all", sys.executable, "-c", CHILD,
         str(share), str(tmp_path / "repo")],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["skipped"] == [
        ["secret.txt", "Permission denied"],
        ["zz-secret-link.txt", "its first name 'secret.txt' is not in the backup"]]
    assert report["walk"] == [["locked", "Permission denied"]]
    repo = open_repository(repo.destination, passphrase=PASSPHRASE)  # sees the new index
    manifest = repo.manifest(report["backup"])
    paths = [r["path"] for r in iter_records(repo, manifest.tree or ())]
    assert paths == ["locked", "readable.txt"]
    assert manifest.stats["skipped"] == 2


def test_inventory_of_subdirectories_and_excludes(tmp_path: Path, repo: Repository) -> None:
    root = tmp_path / "homes"
    for name in ("alice", "bob", ".snapshot"):
        (root / name).mkdir(parents=True)
    (root / "not-a-folder.txt").write_text("x")
    (root / "link-to-alice").symlink_to("alice")
    alice = root / "alice"
    (alice / "cache").mkdir()
    (alice / "cache" / "blob").write_text("x")
    (alice / "scratch").mkdir()
    (alice / "work" / "scratch").mkdir(parents=True)
    (alice / "work" / "a.tmp").write_text("x")
    (alice / "work" / "keep.txt").write_text("x")
    (alice / "work" / "cache").write_text("a file: 'cache/' excludes folders only")
    (alice / "cache.txt").write_text("a file named like the excluded folder")
    provider = make_provider(root, instances="subdirectories",
                             exclude=".snapshot\n*.tmp, cache/\n/scratch")
    instances = provider.inventory()
    assert [(i.name, i.external_id) for i in instances] == [
        ("alice", str(alice)), ("bob", str(root / "bob"))]
    run = backup(provider, repo, instances[0])
    paths = [r["path"] for r in iter_records(repo, run.manifest.tree or ())]
    assert paths == ["cache.txt", "work", "work/cache", "work/keep.txt", "work/scratch"]

    foreign = attrs.evolve(instances[0], external_id="/etc")
    with pytest.raises(ProviderError, match="not one of this connection's"), \
            provider.export(ExportRequest(instance=foreign)):
        pass


def test_bad_settings_are_refused_by_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="path"):
        make_provider(Path("relative/path"))
    with pytest.raises(ConfigError, match="instances"):
        make_provider(tmp_path, instances="everything")
    with pytest.raises(ConfigError, match="exclude"):
        make_provider(tmp_path, exclude="/")


def test_unmounted_share_is_refused(tmp_path: Path, mount_tmpfs: MountTmpfs,
                                    repo: Repository) -> None:
    plain = tmp_path / "not-mounted"
    plain.mkdir()
    provider = make_provider(plain, require_mount="yes")
    with pytest.raises(ProviderError, match="not a mount point"):
        provider.inventory()
    with pytest.raises(ProviderError, match="does not exist"):
        make_provider(tmp_path / "missing").test_connection()
    point = mount_tmpfs(size="4m")
    (point / "file.txt").write_text("on the share")
    mounted = make_provider(point, require_mount="yes")
    mounted.test_connection()
    run = backup(mounted, repo)
    assert [r["path"] for r in iter_records(repo, run.manifest.tree or ())] == ["file.txt"]


def test_remount_is_noticed_through_platform_state(share: Path) -> None:
    provider = make_provider(share)
    instance = provider.inventory()[0]
    previous = BackupPoint(backup_id="b1", instance=instance,
                           platform_state={"device": os.stat(share).st_dev + 1})
    with provider.export(ExportRequest(instance=instance, previous=previous)) as export:
        assert export.full
        assert "remounted" in export.reason
        list(export.entries())
        assert export.platform_state["device"] == os.stat(share).st_dev


def test_without_root_the_owner_is_left_and_said(share: Path, repo: Repository,
                                                 tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import sbr_plugins.fileshare.restore as restore_module

    provider = make_provider(share)
    run = backup(provider, repo)
    monkeypatch.setattr(restore_module, "can_set_owner", lambda: False)
    outcomes = restore(provider, repo, run.manifest, include="docs/report.txt",
                       destination_path=tmp_path / "out")
    assert outcomes[0].status == "restored"
    assert "owner 1001:1002 not restored (not running as root)" in outcomes[0].message
    assert os.stat(tmp_path / "out" / "docs" / "report.txt").st_uid == os.geteuid()


def test_restore_entries_come_from_the_tree_with_their_content(share: Path,
                                                               repo: Repository) -> None:
    run = backup(make_provider(share), repo)
    entries = {e.path: e for e in tree_entries(repo, run.manifest, "docs")}
    assert entries["docs/alias.db"].kind == EntryKind.HARDLINK
    alias = entries["docs/alias.db"].open
    assert alias is not None
    with alias() as stream:
        assert stream.read() == (share / "data" / "original.db").read_bytes()
    assert entries["docs"].open is None
