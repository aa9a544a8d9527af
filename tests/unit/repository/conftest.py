"""Repositories on a temporary directory, opened as a node opens them."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sbr_core.config import structure_config
from sbr_core.models import Extent
from sbr_core.providers.base import ProviderContext
from sbr_core.repository import BackupWriter, Manifest, Repository, init_repository
from sbr_plugins.filesystem.destination import FilesystemDestination

PASSPHRASE = "correct horse battery staple"
CHUNK = 64 * 1024  # small chunks keep the test images small


def make_destination(path: Path) -> FilesystemDestination:
    path.mkdir(parents=True, exist_ok=True)
    config = structure_config(FilesystemDestination.Config, {"path": str(path), "fsync": "false"},
                              subject="destination 'test'")
    return FilesystemDestination(config, context=ProviderContext(name="test"))


@pytest.fixture
def destination(tmp_path: Path) -> FilesystemDestination:
    return make_destination(tmp_path / "repo")


@pytest.fixture
def repo(destination: FilesystemDestination) -> Repository:
    return init_repository(destination, passphrase=PASSPHRASE, image_chunk_size=CHUNK,
                           pack_size=1024 * 1024)


class CountingImage:
    """An in-memory disk image that counts the bytes read from it."""

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = bytearray(data)
        self.bytes_read = 0

    @property
    def size(self) -> int:
        return len(self.data)

    def read(self, offset: int, length: int) -> bytes:
        self.bytes_read += length
        return bytes(self.data[offset:offset + length])


def mixed_image(size: int, seed: int = 1) -> bytearray:
    """Random, text-like and zero regions, 64 KiB each, in a fixed pattern."""
    rng = __import__("random").Random(seed)
    out = bytearray()
    words = [bytes(rng.choice(b"abcdefghij") for _ in range(rng.randint(2, 8)))
             for _ in range(300)]
    while len(out) < size:
        kind = len(out) // CHUNK % 4
        if kind == 0:
            out += rng.randbytes(CHUNK)
        elif kind == 1:
            block = b" ".join(rng.choice(words) for _ in range(CHUNK // 4))
            out += block[:CHUNK]
        else:
            out += bytes(CHUNK)
    return out[:size]


BackupImage = Callable[..., Manifest]


@pytest.fixture
def backup_image(repo: Repository) -> BackupImage:
    """Back up an in-memory image: full, or incremental to ``parent`` over ``changed``."""

    def run(image: CountingImage, *, name: str = "vm1", parent: Manifest | None = None,
            changed: list[Extent] | None = None, target: Repository | None = None,
            **kwargs: Any) -> Manifest:
        with BackupWriter(target or repo, name=name, kind="image", parent=parent) as writer:
            extents = changed if changed is not None else [Extent(0, image.size)]
            writer.add_disk("vda", image.size, extents, image.read, full=changed is None,
                            **kwargs)
            return writer.commit()

    return run


def restored_bytes(repo: Repository, manifest: Manifest, tmp_path: Path) -> bytes:
    from sbr_core.repository import restore_disk

    target = tmp_path / f"restore-{os.urandom(4).hex()}.img"
    restore_disk(repo, manifest.disks[0], target)
    return target.read_bytes()
