"""Fixtures for the filesystem destination: destinations built as the core builds them, and
small tmpfs mounts (a full disk, a read-only share, a real mount point) that are always
unmounted again."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sbr_core.config import structure_config
from sbr_core.providers.base import ProviderContext
from sbr_plugins.filesystem.destination import FilesystemDestination
from tests.services import require_root, service_unavailable

#: The source name of every test mount, so that `findmnt -S sbr-test` finds leftovers.
MOUNT_SOURCE = "sbr-test"
DESTINATION_NAME = "nas1"

MakeDestination = Callable[..., FilesystemDestination]
MountTmpfs = Callable[..., Path]


@pytest.fixture
def make_destination() -> MakeDestination:
    """Build a destination from settings as an admin types them (strings), named 'nas1'."""

    def make(path: Path, **settings: Any) -> FilesystemDestination:
        values = {"path": str(path), **settings}
        config = structure_config(FilesystemDestination.Config, values,
                                  subject=f"destination {DESTINATION_NAME!r}")
        return FilesystemDestination(config, context=ProviderContext(name=DESTINATION_NAME))

    return make


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An empty directory on the local disk for a destination to use."""
    path = tmp_path / "backups"
    path.mkdir()
    return path


@pytest.fixture
def destination(root: Path, make_destination: MakeDestination) -> FilesystemDestination:
    """A destination on a plain local directory, with default settings."""
    return make_destination(root)


@pytest.fixture
def mount_tmpfs(tmp_path: Path) -> Iterator[MountTmpfs]:
    """Mount small tmpfs file systems below tmp_path; every one is unmounted at teardown."""
    require_root()
    for tool in ("mount", "umount"):
        if shutil.which(tool) is None:
            service_unavailable(f"{tool!r} is not installed")
    mounted: list[Path] = []

    def mount(size: str = "1m", name: str = "mnt") -> Path:
        point = tmp_path / name
        point.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", MOUNT_SOURCE, str(point)],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            service_unavailable(f"cannot mount a tmpfs on {point}: {result.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    leftovers = [point for point in reversed(mounted) if not _unmount(point)]
    if leftovers:
        pytest.fail(f"could not unmount {leftovers}", pytrace=False)


def _unmount(point: Path) -> bool:
    """Unmount (lazily if it is busy, e.g. a killed writer's file); True once it is gone."""
    if not os.path.ismount(point):
        return True
    if subprocess.run(["umount", str(point)], capture_output=True, check=False).returncode:
        subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)
    return not os.path.ismount(point)


@pytest.fixture
def remount() -> Callable[[Path, str], None]:
    """Change the options of a test mount, e.g. ``remount(point, "ro")``."""

    def change(point: Path, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(point)], check=True,
                       capture_output=True)

    return change
