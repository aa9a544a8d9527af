"""Reading a disk export over NBD with libnbd: its size, its allocated or changed extents,
and its bytes.

The same reader serves a running domain's backup export (libvirt's NBD server, whose dirty
bitmap context is ``qemu:dirty-bitmap:backup-<disk>``) and a shut-off domain's disk served
by ``qemu-nbd --bitmap`` (context ``qemu:dirty-bitmap:<bitmap>``).
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sbr_core.errors import ProviderError
from sbr_core.models import Extent

BASE_ALLOCATION = "base:allocation"
STATE_ZERO = 2  # base:allocation: reads as zeros (unallocated or written as zeros)
STATE_DIRTY = 1  # qemu:dirty-bitmap:*: changed since the bitmap's checkpoint
#: Bytes one block-status request asks about; the server may answer for fewer.
STATUS_WINDOW = 1 << 30
#: QEMU serves reads of up to 32 MiB.
MAX_READ = 32 << 20
#: How long a connection beyond the first may take to open before the reader makes do.
EXTRA_CONNECT_SECONDS = 2.0


class NbdDisk:
    """One NBD export opened read-only, with the dirty bitmap context when ``bitmap`` is set.

    ``where`` is ``("unix", path)`` or ``("tcp", host, port)``; ``label`` names the disk in
    errors. Thread-safe. ``connections`` handles are opened, so that many reads can be in
    flight at once (:attr:`max_parallel_reads`): a backup export is a frozen point in time
    and read-only, so several connections see the same bytes, and the server's work on one
    read overlaps the node's hashing and compression of the last.
    """

    def __init__(self, where: tuple[Any, ...], export: str, *, bitmap: str = "",
                 label: str = "", connections: int = 1) -> None:
        try:
            import nbd
        except ImportError as exc:
            raise ProviderError("libnbd's Python binding (Debian/Ubuntu: python3-libnbd) "
                                "is not installed on this node") from exc
        self._nbd = nbd
        self.where = where
        self.export = export
        self.label = label or export
        self.bitmap = bitmap
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._handles: list[Any] = []
        try:
            first = self._connect(with_contexts=True)
            self.size = first.get_size()
            if bitmap and not first.can_meta_context(bitmap):
                raise ProviderError(f"disk {self.label}: the export has no {bitmap!r} "
                                    "context, so its changes cannot be read")
        except nbd.Error as exc:
            self.close()
            raise ProviderError(f"disk {self.label}: cannot open its NBD export at "
                                f"{':'.join(map(str, where[1:]))}: {exc}") from exc
        except BaseException:
            self.close()
            raise
        for _ in range(connections - 1):
            try:
                self._connect(with_contexts=False, within=EXTRA_CONNECT_SECONDS)
            except (nbd.Error, TimeoutError):
                break  # a server that takes fewer connections is read with those it took
        self.max_parallel_reads = len(self._handles)

    def _connect(self, *, with_contexts: bool, within: float | None = None) -> Any:
        """A new connection, added to the pool; ``within`` seconds at most, if given: a
        server past its connection limit (``qemu-nbd --shared``) does not refuse the next
        one, it leaves it waiting."""
        handle = self._nbd.NBD()
        handle.set_export_name(self.export)
        # libnbd zeroes every read buffer first unless told not to; a failed read raises
        # and its buffer is never used, so that pass over each byte is wasted.
        handle.set_pread_initialize(False)
        if with_contexts:
            handle.add_meta_context(BASE_ALLOCATION)
            if self.bitmap:
                handle.add_meta_context(self.bitmap)
        unix = self.where[0] == "unix"
        if within is None:
            if unix:
                handle.connect_unix(str(self.where[1]))
            else:
                handle.connect_tcp(str(self.where[1]), str(self.where[2]))
        else:
            if unix:
                handle.aio_connect_unix(str(self.where[1]))
            else:
                handle.aio_connect_tcp(str(self.where[1]), str(self.where[2]))
            deadline = time.monotonic() + within
            while handle.aio_is_connecting():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no NBD handshake within {within} s")
                handle.poll(max(1, int(left * 1000)))
            if not handle.aio_is_ready():
                raise TimeoutError("the NBD handshake did not finish")
        self._handles.append(handle)
        self._idle.put(handle)
        return handle

    def close(self) -> None:
        handles, self._handles = self._handles, []
        for handle in handles:
            try:
                handle.shutdown()
            except self._nbd.Error:
                pass  # the server went first (a job ended), or it never connected
        # libnbd 1.14's binding has no close(): dropping the handles closes them.
        self._idle = queue.SimpleQueue()

    def __enter__(self) -> NbdDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _first(self) -> Any:
        """The connection with the metadata contexts; ProviderError once closed."""
        if not self._handles:
            raise ProviderError(f"disk {self.label}: its NBD export is closed")
        return self._handles[0]

    @contextmanager
    def _handle(self) -> Iterator[Any]:
        """An idle connection, for one request at a time."""
        self._first()
        handle = self._idle.get()
        try:
            yield handle
        finally:
            self._idle.put(handle)

    # --- reads ------------------------------------------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``, in requests of at most 32 MiB."""
        parts = []
        try:
            with self._handle() as handle:
                while length > 0:
                    count = min(length, MAX_READ)
                    parts.append(handle.pread(count, offset))
                    offset += count
                    length -= count
        except self._nbd.Error as exc:
            raise ProviderError(f"disk {self.label}: read at {offset} failed: {exc}") from exc
        return bytes(parts[0]) if len(parts) == 1 else b"".join(parts)

    # --- extents ------------------------------------------------------------------------------

    def extents(self) -> Iterator[Extent]:
        """The ranges to back up, in order: data and zero extents of the whole disk, or,
        with a bitmap, only the changed ones (a changed range that now reads as zeros is a
        zero extent, so the restore zeroes it)."""
        position = 0
        pending: Extent | None = None
        while position < self.size:
            allocation, dirty = self._status(position)
            end = min(allocation[-1][1], dirty[-1][1]) if dirty else allocation[-1][1]
            for extent in _combine(allocation, dirty, end, changes_only=bool(self.bitmap)):
                if pending is not None and pending.end == extent.offset \
                        and pending.zero == extent.zero:
                    pending = Extent(pending.offset, pending.length + extent.length,
                                     zero=extent.zero)
                    continue
                if pending is not None:
                    yield pending
                pending = extent
            position = end
        if pending is not None:
            yield pending

    def _status(self, offset: int
                ) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        """(start, end, flags) runs of each context, from ``offset`` on, as far as the
        server answered in one request."""
        runs: dict[str, list[tuple[int, int, int]]] = {BASE_ALLOCATION: [], self.bitmap: []}

        def collect(context: str, start: int, entries: list[int], error: Any) -> int:
            out = runs.get(context)
            if out is None:
                return 0
            at = start
            for i in range(0, len(entries) - 1, 2):
                length, flags = entries[i], entries[i + 1]
                out.append((at, at + length, flags))
                at += length
            return 0

        count = min(STATUS_WINDOW, self.size - offset)
        handle = self._first()
        try:
            # libnbd serialises the calls on one handle, so a read may share it meanwhile.
            handle.block_status(count, offset, collect)
        except self._nbd.Error as exc:
            raise ProviderError(f"disk {self.label}: reading its extents at {offset} failed: "
                                f"{exc}") from exc
        allocation = _clip(runs[BASE_ALLOCATION], self.size)
        dirty = _clip(runs[self.bitmap], self.size) if self.bitmap else []
        if not allocation or (self.bitmap and not dirty):
            raise ProviderError(f"disk {self.label}: the NBD server sent no extents at "
                                f"{offset}")
        return allocation, dirty


def _clip(runs: list[tuple[int, int, int]], size: int) -> list[tuple[int, int, int]]:
    return [(start, min(end, size), flags) for start, end, flags in runs if start < size]


def _combine(allocation: list[tuple[int, int, int]], dirty: list[tuple[int, int, int]],
             end: int, *, changes_only: bool) -> Iterator[Extent]:
    """Extents up to ``end``: every allocation run, or where a dirty run overlaps it."""
    if not changes_only:
        for start, stop, flags in allocation:
            stop = min(stop, end)
            if start < stop:
                yield Extent(start, stop - start, zero=bool(flags & STATE_ZERO))
        return
    i = j = 0
    while i < len(allocation) and j < len(dirty):
        a_start, a_stop, a_flags = allocation[i]
        d_start, d_stop, d_flags = dirty[j]
        start, stop = max(a_start, d_start), min(a_stop, d_stop, end)
        if start < stop and d_flags & STATE_DIRTY:
            yield Extent(start, stop - start, zero=bool(a_flags & STATE_ZERO))
        if start >= end:
            return
        if a_stop <= d_stop:
            i += 1
        else:
            j += 1
