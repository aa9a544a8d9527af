"""Small tmpfs mounts for tests of full, read-only and real mount points (root only); every
mount is unmounted at teardown, lazily if a killed writer still holds a file there."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.services import require_root, service_unavailable

#: The source name of every test mount, so that `findmnt -S sbr-test` finds leftovers.
MOUNT_SOURCE = "sbr-test"

MountTmpfs = Callable[..., Path]


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
