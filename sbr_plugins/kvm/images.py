"""Writing restored disks as image files: raw (sparse) or qcow2, through ``qemu-nbd``.

A restored disk comes as a :class:`~sbr_core.providers.hypervisor.DiskReader`. One that
also has ``write_to(sink, sparse=, op=)`` (the repository's restore reader) is asked to
write itself, with its fetches running ahead on worker threads; any other is read extent
by extent. Either way zero ranges are never written, so the image stays sparse.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sbr_core.directio import write_all
from sbr_core.errors import ProviderError
from sbr_core.operation import Operation
from sbr_plugins.kvm.qemunbd import QemuNbd

FORMATS = ("qcow2", "raw")
_PIECE = 4 << 20
_MAX_WRITE = 32 << 20


class NbdImageWriter:
    """``qemu-nbd`` serving a new image writable on a unix socket, and a libnbd handle on it;
    :meth:`write` takes runs of buffers as the repository's restore hands them out."""

    def __init__(self, path: Path, fmt: str, socket: Path) -> None:
        import nbd

        self._nbd = nbd
        self.path = path
        self.server = QemuNbd(path, socket, fmt=fmt, export="disk", label=str(path),
                              options=("--persistent", "--cache=writeback",
                                       "--discard=unmap"))
        self.server.start()
        self.handle = nbd.NBD()
        self.handle.set_export_name("disk")
        self.handle.connect_unix(str(socket))

    def write(self, buffers: Sequence[bytes], offset: int) -> None:
        data = buffers[0] if len(buffers) == 1 else b"".join(buffers)
        view = memoryview(data)
        try:
            for start in range(0, len(view), _MAX_WRITE):
                self.handle.pwrite(view[start:start + _MAX_WRITE], offset + start)
        except self._nbd.Error as exc:
            raise ProviderError(f"{self.path}: write at {offset} failed: {exc}") from exc

    def close(self) -> None:
        """Flush everything to the image and stop qemu-nbd."""
        try:
            self.handle.flush()
            self.handle.shutdown()
        except self._nbd.Error as exc:
            raise ProviderError(f"{self.path}: flushing the image failed: {exc}") from exc
        finally:
            del self.handle
            error = self.server.stop()
        if error:
            raise ProviderError(f"{self.path}: qemu-nbd failed: {error}")


class _FileSink:
    """A sparse raw image being filled: runs of buffers written at their offset."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, buffers: Sequence[bytes], offset: int) -> None:
        write_all(self.fd, buffers, offset)


def write_image(reader: Any, path: Path, fmt: str, *, scratch: Path,
                op: Operation | None = None) -> int:
    """Create ``path`` (it must not exist) as a ``fmt`` image of the reader's disk and fill
    it; a failure leaves no file behind. Returns the bytes written."""
    op = op or Operation()
    if fmt not in FORMATS:
        raise ProviderError(f"image format {fmt!r}: must be one of {', '.join(FORMATS)}")
    size = int(reader.disk.capacity_bytes)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise ProviderError(f"{path} already exists; SBR does not overwrite images") from exc
    except OSError as exc:
        raise ProviderError(f"cannot create {path}: {exc.strerror}") from exc
    try:
        if fmt == "raw":
            os.ftruncate(fd, size)
            written = _fill(reader, _FileSink(fd), op)
            os.fsync(fd)
            return written
        os.close(fd)
        fd = -1
        made = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                               "compat=1.1", str(path), str(size)],
                              capture_output=True, text=True, timeout=120)
        if made.returncode != 0:
            raise ProviderError(f"cannot create {path}: {made.stderr.strip()}")
        writer = NbdImageWriter(path, fmt, scratch / f"{secrets.token_hex(4)}.sock")
        try:
            written = _fill(reader, writer, op)
        finally:
            writer.close()
        with open(path, "rb") as image:
            os.fsync(image.fileno())
        return written
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    finally:
        if fd >= 0:
            os.close(fd)


def _fill(reader: Any, sink: Any, op: Operation) -> int:
    write_to = getattr(reader, "write_to", None)
    if write_to is not None:
        return int(write_to(sink, sparse=True, op=op))
    written = 0
    size = int(reader.disk.capacity_bytes)
    for extent in reader.extents():
        if extent.zero:
            continue
        for start in range(extent.offset, extent.end, _PIECE):
            length = min(_PIECE, extent.end - start)
            sink.write([reader.read(start, length)], start)
            written += length
            op.check()
            op.progress(start + length, size, f"disk {reader.disk.key}")
    return written
