"""Fixtures for the filesystem destination: destinations built as the core builds them, and
small tmpfs mounts (a full disk, a read-only share, a real mount point) that are always
unmounted again."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sbr_core.config import structure_config
from sbr_core.providers.base import ProviderContext
from sbr_plugins.filesystem.destination import FilesystemDestination
from tests.mounts import mount_tmpfs  # noqa: F401 - the fixture, for these tests

DESTINATION_NAME = "nas1"

MakeDestination = Callable[..., FilesystemDestination]


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
def remount() -> Callable[[Path, str], None]:
    """Change the options of a test mount, e.g. ``remount(point, "ro")``."""

    def change(point: Path, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(point)], check=True,
                       capture_output=True)

    return change
