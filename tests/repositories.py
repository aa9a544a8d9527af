"""A real repository on a local directory, for tests of the plugins that back up into one."""

from __future__ import annotations

from pathlib import Path

from sbr_core.config import structure_config
from sbr_core.providers.base import ProviderContext
from sbr_core.repository import Repository, init_repository
from sbr_plugins.filesystem.destination import FilesystemDestination


def local_repository(path: Path, passphrase: str, *, pack_size: int) -> Repository:
    """A new repository in ``path`` (made if missing), without fsync, to keep tests fast."""
    path.mkdir(parents=True, exist_ok=True)
    config = structure_config(FilesystemDestination.Config, {"path": str(path), "fsync": "false"},
                              subject="destination 'test'")
    destination = FilesystemDestination(config, context=ProviderContext(name="test"))
    return init_repository(destination, passphrase=passphrase, pack_size=pack_size)
