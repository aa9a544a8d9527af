"""Local sources for the standalone ``sbr repo`` commands: an image file and a directory.

The hypervisor and storage plugins feed the repository the same way: extents and a read
callable for disks, entries with an ``open`` for trees.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from sbr_core.errors import UsageError
from sbr_core.models import Entry, EntryKind, Extent

log = logging.getLogger(__name__)


class ImageFile:
    """A disk image file or block device, read with pread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
        mode = os.fstat(self.fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            os.close(self.fd)
            raise UsageError(f"{path} is not a regular file or a block device")
        self.is_device = stat.S_ISBLK(mode)
        self.size = os.lseek(self.fd, 0, os.SEEK_END)

    def close(self) -> None:
        os.close(self.fd)

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) < length:  # the end of a file that shrank: the rest reads as zeros
            data += bytes(length - len(data))
        return data

    def prefetch(self, extents: list[Extent]) -> None:
        """Ask the kernel to start reading scattered ranges now, so the reads overlap."""
        for extent in extents:
            try:
                os.posix_fadvise(self.fd, extent.offset, extent.length,
                                 os.POSIX_FADV_WILLNEED)
            except (OSError, AttributeError):
                return

    def allocated_extents(self) -> Iterator[Extent]:
        """The file's data ranges (holes are skipped: never read, restored as zeros)."""
        if self.is_device:
            yield Extent(0, self.size)
            return
        offset = 0
        while offset < self.size:
            try:
                start = os.lseek(self.fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole remains
                    return
                if exc.errno == errno.EINVAL:  # the file system cannot tell
                    yield Extent(offset, self.size - offset)
                    return
                raise
            end = os.lseek(self.fd, start, os.SEEK_HOLE)
            yield Extent(start, min(end, self.size) - start)
            offset = end


def read_extents_file(path: Path, size: int) -> list[Extent]:
    """Changed ranges from a text file of ``OFFSET LENGTH`` lines (bytes), in any order."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read changed-extents file {path}: {exc.strerror}") from None
    extents = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.split()
        try:
            if len(parts) != 2:
                raise ValueError
            offset, length = int(parts[0]), int(parts[1])
        except ValueError:
            raise UsageError(f"{path}:{number}: expected 'OFFSET LENGTH' in bytes, got "
                             f"{line.strip()!r}") from None
        if offset < 0 or length <= 0 or offset + length > size:
            raise UsageError(f"{path}:{number}: extent {offset}+{length} is outside the image "
                             f"({size} bytes)")
        extents.append(Extent(offset, length))
    extents.sort(key=lambda e: e.offset)
    return extents


def walk_directory(root: Path, *, on_skip: Callable[[str, str], None] | None = None
                   ) -> Iterator[Entry]:
    """Entries below ``root`` in path order (sorted names, depth first), links not followed.

    Special files (sockets, fifos, devices) are skipped and reported through ``on_skip``.
    """
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory")

    def skip(path: str, reason: str) -> None:
        if on_skip is not None:
            on_skip(path, reason)
        else:
            log.warning("skipped %s: %s", path, reason)

    def walk(directory: Path, prefix: str) -> Iterator[Entry]:
        try:
            names = sorted(os.listdir(directory))
        except OSError as exc:
            skip(prefix or ".", exc.strerror or str(exc))
            return
        for name in names:
            path = directory / name
            relative = f"{prefix}/{name}" if prefix else name
            try:
                st = os.lstat(path)
            except OSError as exc:
                skip(relative, exc.strerror or str(exc))
                continue
            if stat.S_ISDIR(st.st_mode):
                yield _entry(relative, st, EntryKind.DIRECTORY)
                yield from walk(path, relative)
            elif stat.S_ISREG(st.st_mode):
                yield _entry(relative, st, EntryKind.FILE, size=st.st_size, open=_opener(path))
            elif stat.S_ISLNK(st.st_mode):
                yield _entry(relative, st, EntryKind.SYMLINK, link_target=os.readlink(path))
            else:
                skip(relative, "special file (socket, fifo or device) is not backed up")

    yield from walk(root, "")


def _entry(path: str, st: os.stat_result, kind: EntryKind, **extra: Any) -> Entry:
    return Entry(path=path, kind=kind, mtime_ns=st.st_mtime_ns, mode=st.st_mode,
                 uid=st.st_uid, gid=st.st_gid, **extra)


def _opener(path: Path) -> Callable[[], BinaryIO]:
    def open_file() -> BinaryIO:
        return open(path, "rb", buffering=0)
    return open_file
