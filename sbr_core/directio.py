"""Large writes that bypass the page cache (O_DIRECT) where the file system allows it.

Restored disks and repository packs are written once and not read back soon. Through the
page cache they evict what the node had cached, and the final fsync flushes them all; with
O_DIRECT the data goes from our buffer to the device. On this project's test machine a
2 GiB sequential write took 1.1-1.3 s direct against 5.2-5.7 s buffered (`dd bs=4M
oflag=direct` against `conv=fsync`): copying into page-cache pages the VM had not touched
yet cost more than the disk. ``qemu-img convert -t none`` makes the same choice.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from collections.abc import Callable, Sequence

ALIGN = 4096  # O_DIRECT offsets, lengths and buffer addresses: the page size covers every
#               logical block size in use (512 and 4096)
STAGE = 4 * 2**20  # the staging buffer of each writing thread
_IOV_MAX = 1024  # Linux's limit of buffers per pwritev

Buffer = bytes | bytearray | memoryview
_local = threading.local()


class DirectWriter:
    """Writes runs of buffers at their offsets in an open file or block device.

    ``fd`` is the caller's ordinary descriptor (it truncates, fsyncs and closes it). A
    second, O_DIRECT descriptor carries the aligned part of each run, copied through a
    page-aligned staging buffer; an unaligned start or tail (a disk whose size is not a
    multiple of 4 KiB, the end of a pack) goes through ``fd``. File systems that refuse
    O_DIRECT get every write through ``fd``.
    """

    def __init__(self, fd: int, path: str, *, direct: bool = True) -> None:
        self.fd = fd
        self.direct_fd: int | None = None
        if direct and hasattr(os, "O_DIRECT"):
            try:
                self.direct_fd = os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                    raise

    def write(self, buffers: Sequence[Buffer], offset: int) -> None:
        """Write ``buffers`` back to back starting at ``offset``."""
        total = sum(len(b) for b in buffers)
        aligned = total - total % ALIGN
        if self.direct_fd is None or offset % ALIGN or not aligned:
            write_all(self.fd, buffers, offset)
            return
        stage = memoryview(_staging_buffer())
        staged, position, rest = 0, offset, []
        try:
            for data in buffers:
                view = memoryview(data).cast("B")
                while view and position + staged < offset + aligned:
                    take = min(len(view), len(stage) - staged,
                               offset + aligned - position - staged)
                    stage[staged:staged + take] = view[:take]
                    staged, view = staged + take, view[take:]
                    if staged == len(stage) or position + staged == offset + aligned:
                        write_all(self.direct_fd, [stage[:staged]], position)
                        position, staged = position + staged, 0
                if view:
                    rest.append(view)
        finally:
            stage.release()
        write_all(self.fd, rest, offset + aligned)

    def copy_from(self, readinto: Callable[[memoryview], int]) -> int:
        """Write what ``readinto`` fills in, from the start of the file, until it gives 0;
        returns the bytes written. The data is read straight into the staging buffer."""
        stage = memoryview(_staging_buffer())
        position = 0
        try:
            while True:
                filled = 0
                while filled < len(stage):
                    got = readinto(stage[filled:])
                    if not got:
                        break
                    filled += got
                aligned = filled - filled % ALIGN  # position stays aligned until the end
                if aligned and self.direct_fd is not None:
                    write_all(self.direct_fd, [stage[:aligned]], position)
                else:
                    aligned = 0
                write_all(self.fd, [stage[aligned:filled]], position + aligned)
                position += filled
                if filled < len(stage):
                    return position
        finally:
            stage.release()

    def close(self) -> None:
        if self.direct_fd is not None:
            os.close(self.direct_fd)
            self.direct_fd = None


def _staging_buffer() -> mmap.mmap:
    """This thread's page-aligned buffer, made once: reusing it spares the page faults of
    fresh memory on every write (anonymous maps start on a page boundary)."""
    buffer: mmap.mmap | None = getattr(_local, "buffer", None)
    if buffer is None:
        buffer = _local.buffer = mmap.mmap(-1, STAGE)
    return buffer


def write_all(fd: int, buffers: Sequence[Buffer], offset: int) -> None:
    """Write ``buffers`` back to back at ``offset``, whatever short writes happen."""
    views = [memoryview(b) for b in buffers if len(b)]
    while views:
        done = os.pwritev(fd, views[:_IOV_MAX], offset)
        if done <= 0:
            raise OSError(errno.EIO, "the device accepted no bytes")
        offset += done
        while views and done >= len(views[0]):
            done -= len(views.pop(0))
        if done:
            views[0] = views[0][done:]
