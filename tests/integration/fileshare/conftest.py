"""Fixtures for the file-share provider: providers built from settings as an admin types them,
a real repository on a local directory, and the glue the backup and restore workflows use
(export -> BackupWriter.add_tree; tree_entries -> restore)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import attrs
import pytest

from sbr_core.config import structure_config
from sbr_core.models import Entry, ExportRequest, Instance
from sbr_core.providers.base import ProviderContext
from sbr_core.providers.items import ItemRestoreRequest, RestoreOutcome
from sbr_core.repository import BackupWriter, Manifest, Repository
from sbr_core.repository.reader import tree_entries
from sbr_plugins.fileshare.provider import FileShareExport, FileShareProvider
from tests.mounts import mount_tmpfs  # noqa: F401 - the fixture, for these tests
from tests.repositories import local_repository

CONNECTION = "nas1"
PASSPHRASE = "fileshare test passphrase"


def make_repository(path: Path) -> Repository:
    return local_repository(path, PASSPHRASE, pack_size=1024 * 1024)


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return make_repository(tmp_path / "repo")


def make_provider(path: Path, **settings: Any) -> FileShareProvider:
    """A provider from settings typed as text, named 'nas1'."""
    values = {"path": str(path), **{k: str(v) for k, v in settings.items()}}
    config = structure_config(FileShareProvider.Config, values,
                              subject=f"storage {CONNECTION!r}")
    return FileShareProvider(config, context=ProviderContext(name=CONNECTION))


class Opens:
    """Counts which entries the repository opened (read) during a backup."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def wrap(self, entries: Iterator[Entry]) -> Iterator[Entry]:
        for entry in entries:
            if entry.open is not None:
                entry = attrs.evolve(entry, open=self._counting(entry))
            yield entry

    def _counting(self, entry: Entry) -> Any:
        inner = entry.open
        assert inner is not None

        def open_counted() -> BinaryIO:
            self.paths.append(entry.path)
            return inner()

        return open_counted


@attrs.define
class BackupRun:
    manifest: Manifest
    export: FileShareExport
    opened: list[str]
    skipped: list[tuple[str, str]]


def backup(provider: FileShareProvider, repo: Repository, instance: Instance | None = None,
           parent: Manifest | None = None) -> BackupRun:
    """One backup of an instance as the backup workflow runs it."""
    instance = instance or provider.inventory()[0]
    opens = Opens()
    skipped: list[tuple[str, str]] = []
    with provider.export(ExportRequest(instance=instance)) as export, \
            BackupWriter(repo, name=instance.external_id, kind="share",
                         parent=parent) as writer:
        writer.add_tree(opens.wrap(export.entries()), complete=export.full,
                        removed=export.removed(),
                        on_skip=lambda entry, why: skipped.append((entry.path, why)))
        manifest = writer.commit(platform_state=dict(export.platform_state))
    return BackupRun(manifest, export, opens.paths, skipped)


def restore(provider: FileShareProvider, repo: Repository, manifest: Manifest, *,
            include: str = "", destination_path: str | Path = "", conflict: str = "rename",
            target: Instance | None = None) -> list[RestoreOutcome]:
    """Restore a backup (or the part ``include`` names) with the provider."""
    request = ItemRestoreRequest(target=target or provider.inventory()[0],
                                 entries=tree_entries(repo, manifest, include),
                                 destination_path=str(destination_path), conflict=conflict)
    return list(provider.restore(request))


def snapshot(root: Path) -> dict[str, Any]:
    """Everything a restore must bring back below ``root``: per path its kind, content (or
    link target), mode, owner, modification time and extended attributes; and which paths
    are names of one inode."""
    entries: dict[str, tuple[Any, ...]] = {}
    inodes: dict[int, list[str]] = {}

    def visit(directory: Path, prefix: str) -> None:
        for name in sorted(os.listdir(directory)):
            path = directory / name
            rel = f"{prefix}{name}"
            st = os.lstat(path)
            xattrs = {n: os.getxattr(path, n, follow_symlinks=False)
                      for n in os.listxattr(path, follow_symlinks=False)}
            if stat.S_ISLNK(st.st_mode):
                kind, data = "symlink", os.readlink(path).encode()
            elif stat.S_ISDIR(st.st_mode):
                kind, data = "dir", b""
            else:
                kind, data = "file", path.read_bytes()
                inodes.setdefault(st.st_ino, []).append(rel)
            entries[rel] = (kind, data, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns,
                            xattrs)
            if kind == "dir":
                visit(path, f"{rel}/")

    visit(root, "")
    links = sorted(sorted(paths) for paths in inodes.values() if len(paths) > 1)
    return {"entries": entries, "hard links": links}


def statuses(outcomes: list[RestoreOutcome]) -> dict[str, str]:
    return {o.path: o.status for o in outcomes}
