"""Reading backups back: whole disks, byte ranges of a disk, item trees and single items.

Chunks are fetched ahead on worker threads; neighbouring blobs of one pack are read with one
ranged request, and every blob is checked against its id before a byte of it is written.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

import attrs

from sbr_core.directio import DirectWriter, write_all
from sbr_core.errors import RepositoryCorrupt, UsageError
from sbr_core.models import Disk, Entry, EntryKind, Extent
from sbr_core.operation import Operation
from sbr_core.repository.format import ZERO_ID, BlobLocation, decode_blob, zero_block
from sbr_core.repository.manifest import MAP_ENTRIES, DiskRecord, Manifest
from sbr_core.repository.pipeline import batched, ordered_map
from sbr_core.repository.repo import Repository
from sbr_core.repository.sources import (
    can_set_owner,
    place_below,
    restore_attributes,
    restore_directory_attributes,
)
from sbr_core.repository.tree import (
    DIRECTORY_KINDS,
    entry_of,
    iter_records,
    later_names,
    path_key,
    record_chunks,
)

log = logging.getLogger(__name__)

#: Adjacent blobs of a pack are fetched together up to this many bytes.
COALESCE_BYTES = 8 * 1024 * 1024
WORKERS = 3
LOOKAHEAD = 6
_DIRECTORY_VALUES = frozenset(kind.value for kind in DIRECTORY_KINDS)


def read_map(repo: Repository, disk: DiskRecord, piece: int) -> bytes:
    """Map blob ``piece`` of a disk, checked to hold the chunk ids it must."""
    data = repo.read_blob(disk.maps[piece])
    if len(data) != disk.entries_in(piece) * 32:
        raise RepositoryCorrupt(f"chunk map {disk.maps[piece].hex()[:16]} of disk "
                                f"{disk.key!r} has the wrong length")
    return data


def disk_chunk_ids(repo: Repository, disk: DiskRecord) -> Iterator[bytes]:
    """The disk's chunk ids in order, one map blob in memory at a time."""
    for piece in range(len(disk.maps)):
        data = read_map(repo, disk, piece)
        for position in range(0, len(data), 32):
            yield data[position:position + 32]


def fetch_blobs(repo: Repository, ids: list[bytes]) -> list[bytes]:
    """Plain bytes of ``ids`` (in order; ZERO_ID gives b""), reading runs of one pack at once."""
    locations: list[BlobLocation | None] = [
        None if blob_id == ZERO_ID else repo.locate(blob_id) for blob_id in ids]
    out: list[bytes] = [b""] * len(ids)
    i = 0
    while i < len(ids):
        first = locations[i]
        if first is None:
            i += 1
            continue
        j = i + 1
        end = first.offset + first.length
        while j < len(ids):
            nxt = locations[j]
            if nxt is None or nxt.pack != first.pack or nxt.offset != end \
                    or end - first.offset + nxt.length > COALESCE_BYTES:
                break
            end += nxt.length
            j += 1
        stored = memoryview(repo.get_pack_range(first.pack, first.offset, end - first.offset))
        for k in range(i, j):
            location = locations[k]
            assert location is not None
            start = location.offset - first.offset
            out[k] = decode_blob(repo.sealer, ids[k], stored[start:start + location.length],
                                 location.raw_length,
                                 f"blob {ids[k].hex()[:16]} in pack {location.pack.hex()[:16]}")
        i = j
    return out


class BlockSink(Protocol):
    """Where :func:`write_disk` puts a disk: runs of buffers written at an offset (a file,
    a block device, an NBD export of a new image)."""

    def write(self, buffers: Sequence[bytes], offset: int) -> None:
        """Write ``buffers`` back to back starting at ``offset``."""
        ...


def restore_disk(repo: Repository, disk: DiskRecord, target: Path, *,
                 op: Operation | None = None) -> int:
    """Write a disk image to ``target``: a new or existing regular file (made sparse: zero
    chunks are not written) or a block device (zero chunks are written as zeros). Returns
    the bytes written."""
    op = op or Operation()
    is_device = target.exists() and stat.S_ISBLK(target.stat().st_mode)
    if target.exists() and not is_device and not target.is_file():
        raise UsageError(f"{target} is neither a regular file nor a block device")
    flags = os.O_WRONLY | (0 if is_device else os.O_CREAT | os.O_TRUNC)
    fd = os.open(target, flags, 0o600)
    out: DirectWriter | None = None
    try:
        if is_device:
            device_size = os.lseek(fd, 0, os.SEEK_END)
            if device_size < disk.size:
                raise UsageError(f"{target} holds {device_size} bytes; the disk needs "
                                 f"{disk.size}")
        else:
            os.ftruncate(fd, disk.size)
        out = DirectWriter(fd, str(target))
        written = write_disk(repo, disk, out, sparse=not is_device, op=op)
        os.fsync(fd)
    finally:
        if out is not None:
            out.close()
        os.close(fd)
    return written


def write_disk(repo: Repository, disk: DiskRecord, out: BlockSink, *, sparse: bool,
               op: Operation | None = None) -> int:
    """Write every chunk of ``disk`` to ``out`` in offset order; zero chunks are skipped
    when ``sparse`` (the target reads as zeros there already). Returns the bytes written."""
    op = op or Operation()
    written = 0
    chunk_size = disk.chunk_size
    batches = batched(enumerate(disk_chunk_ids(repo, disk)), 32)

    def fetch(batch: list[tuple[int, bytes]]) -> tuple[list[tuple[int, bytes]], list[bytes]]:
        """On a worker: read, decrypt and decompress a batch's chunks."""
        return batch, fetch_blobs(repo, [blob_id for _, blob_id in batch])

    # Workers only fetch; this thread writes, in order. Writes from several threads to
    # one file queue on its inode lock, and the waiters spun on it: 14 % of a restore's
    # CPU on this 2-core machine, taken from decompression.
    for batch, datas in ordered_map(fetch, batches, workers=WORKERS, lookahead=LOOKAHEAD):
        run: list[bytes] = []  # adjacent chunks, written with one pwritev
        run_at = 0
        for (index, blob_id), data in zip(batch, datas, strict=True):
            offset = index * chunk_size
            length = min(chunk_size, disk.size - offset)
            if blob_id == ZERO_ID:
                if sparse:
                    if run:
                        out.write(run, run_at)
                    run = []
                    continue  # the target is sparse there already
                data = zero_block(length)
            elif len(data) != length:
                raise RepositoryCorrupt(f"chunk {index} of disk {disk.key!r} holds "
                                        f"{len(data)} bytes, not {length}")
            if not run:
                run_at = offset
            run.append(data)
            written += length
        if run:
            out.write(run, run_at)
        op.check()
        last_index = batch[-1][0]
        op.progress(min((last_index + 1) * chunk_size, disk.size), disk.size,
                    f"disk {disk.key}")
    return written


class DiskImageReader:
    """Random-access reads of a backed-up disk, for mounting a backup without restoring it.

    Keeps a few map blobs and chunks in memory; thread-safe through the repository's cache.
    """

    def __init__(self, repo: Repository, disk: DiskRecord) -> None:
        self.repo = repo
        self.disk = disk
        self.size = disk.size
        self._maps: OrderedDict[int, bytes] = OrderedDict()

    def _chunk_id(self, index: int) -> bytes:
        piece, slot = divmod(index, MAP_ENTRIES)
        data = self._maps.get(piece)
        if data is None:
            data = self._maps[piece] = read_map(self.repo, self.disk, piece)
            while len(self._maps) > 8:
                self._maps.popitem(last=False)
        return data[slot * 32:(slot + 1) * 32]

    def extents(self) -> Iterator[Extent]:
        """The disk as runs of data chunks and of zero chunks, in offset order."""
        chunk_size = self.disk.chunk_size
        start, zero = 0, None
        for index, blob_id in enumerate(disk_chunk_ids(self.repo, self.disk)):
            is_zero = blob_id == ZERO_ID
            if zero is None:
                zero = is_zero
            elif is_zero != zero:
                yield Extent(start, index * chunk_size - start, zero=zero)
                start, zero = index * chunk_size, is_zero
        if zero is not None and self.size > start:
            yield Extent(start, self.size - start, zero=zero)

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise UsageError("offset and length must not be negative")
        end = min(self.size, offset + length)
        parts = []
        position = offset
        chunk_size = self.disk.chunk_size
        while position < end:
            index = position // chunk_size
            chunk_start = index * chunk_size
            chunk_len = min(chunk_size, self.size - chunk_start)
            blob_id = self._chunk_id(index)
            data = (zero_block(chunk_len) if blob_id == ZERO_ID
                    else self.repo.read_blob(blob_id, cache=True))
            if len(data) != chunk_len:
                raise RepositoryCorrupt(f"chunk {index} of disk {self.disk.key!r} holds "
                                        f"{len(data)} bytes, not {chunk_len}")
            stop = min(end, chunk_start + chunk_len)
            parts.append(data[position - chunk_start:stop - chunk_start])
            position = stop
        return b"".join(parts)


class BackedUpDisk:
    """A backed-up disk as a plugin reads it back (the ``DiskReader`` shape of
    :mod:`sbr_core.providers.hypervisor`), to write an image or import a VM from it.
    :meth:`write_to` is the fast way: fetches run ahead on worker threads."""

    full = True
    reason = ""
    max_parallel_reads = 1

    def __init__(self, repo: Repository, record: DiskRecord) -> None:
        self.repo = repo
        self.record = record
        self.identity = record.identity
        self.disk = Disk(key=record.key, capacity_bytes=record.size, label=record.label)
        self._reader = DiskImageReader(repo, record)

    def extents(self) -> Iterator[Extent]:
        return self._reader.extents()

    def read(self, offset: int, length: int) -> bytes:
        return self._reader.read(offset, length)

    def write_to(self, sink: BlockSink, *, sparse: bool, op: Operation | None = None) -> int:
        return write_disk(self.repo, self.record, sink, sparse=sparse, op=op)


def restore_tree(repo: Repository, manifest: Manifest, target: Path, *,
                 include: str = "", op: Operation | None = None,
                 on_entry: Callable[[str], None] | None = None,
                 on_warning: Callable[[str, str], None] | None = None) -> dict[str, int]:
    """Recreate a backed-up tree under ``target`` (only ``include`` and below when given).

    Records go to worker threads in batches: the chunks of a batch's small files are fetched
    with as few ranged reads as their packs allow, and the files are written there too.
    A file that fails to be written is removed; an interrupted restore is run again.
    Owners are set when running as root. Hard links come after the files: a link to its
    first name when that was restored too, otherwise a file of its own. Directory
    attributes are set last. What could not be set (an owner, an extended attribute the
    target file system refuses) goes to ``on_warning(path, problem)`` (default: the log).
    """
    if manifest.tree is None:
        raise UsageError(f"backup {manifest.id[:8]} has no file tree")
    op = op or Operation()
    target.mkdir(parents=True, exist_ok=True)
    warn = on_warning or (lambda path, problem: log.warning("%s: %s", path, problem))
    restorer = _TreeRestorer(repo, target.resolve(), warn)
    selected = _selector(include)
    hardlinks: list[dict[str, Any]] = []  # after every file, whatever thread wrote it
    directories: list[dict[str, Any]] = []  # their attributes last: one pass over the tree

    def records() -> Iterator[dict[str, Any]]:
        for record in iter_records(repo, manifest.tree or ()):
            if not selected(record["path"]):
                continue
            if record.get("kind") == EntryKind.HARDLINK.value:
                hardlinks.append(record)
                continue
            if record.get("kind") in _DIRECTORY_VALUES:
                directories.append(record)
            yield record

    totals = {"files": 0, "directories": 0, "links": 0, "hardlinks": 0, "bytes": 0,
              "warnings": 0}
    for counts, paths in ordered_map(restorer.restore_batch, _record_batches(records()),
                                     workers=WORKERS, lookahead=LOOKAHEAD):
        for name, value in counts.items():
            totals[name] += value
        if on_entry is not None:
            for path in paths:
                on_entry(path)
        op.check()
        op.progress(totals["bytes"], 0, paths[-1] if paths else "")
    for record in hardlinks:
        totals["bytes"] += restorer.restore_hardlink(record)
        totals["hardlinks"] += 1
        if on_entry is not None:
            on_entry(record["path"])
    for record in directories:
        entry = entry_of(record)
        restorer.warn(entry.path, restore_directory_attributes(
            restorer.place(entry.path), entry, owner=restorer.owner))
    totals["warnings"] = restorer.warnings
    return totals


def _selector(include: str) -> Callable[[str], bool]:
    want = path_key(include.strip("/")) if include.strip("/") else ()

    def selected(path: str) -> bool:
        return path_key(path)[:len(want)] == want

    return selected


def tree_entries(repo: Repository, manifest: Manifest, include: str = "") -> Iterator[Entry]:
    """The entries of a backup's tree (``include`` and below, when given), in path order,
    each with content (files, items, hard links) given an ``open()`` that streams it from the
    repository: what a storage or application provider's ``restore()`` takes."""
    if manifest.tree is None:
        raise UsageError(f"backup {manifest.id[:8]} has no file tree")
    selected = _selector(include)
    for record in iter_records(repo, manifest.tree):
        if not selected(record["path"]):
            continue
        entry = entry_of(record)
        if "chunks" in record:
            chunks = record_chunks(record)

            def open_content(chunks: list[bytes] = chunks) -> BinaryIO:
                return cast(BinaryIO, _ChunkStream(repo, chunks))

            entry = attrs.evolve(entry, open=open_content)
        yield entry


#: A restore batch holds up to this many records, or this many bytes of small files.
_BATCH_RECORDS = 256
_BATCH_BYTES = 4 * 1024 * 1024
_SMALL_FILE_CHUNKS = 4


def _record_batches(records: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    size = 0
    link: tuple[str, ...] | None = None
    for record in records:
        key = path_key(record["path"])
        if link is not None and key[:len(link)] == link and len(key) > len(link):
            # Children follow their parent in path order: none may sit below a symlink.
            raise RepositoryCorrupt(f"tree entry {record['path']!r} is below a symlink")
        link = key if record.get("kind") == EntryKind.SYMLINK.value else link
        batch.append(record)
        size += int(record.get("size", 0)) if len(record.get("chunks", ())) \
            <= _SMALL_FILE_CHUNKS else 0
        if len(batch) >= _BATCH_RECORDS or size >= _BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class _TreeRestorer:
    """Writes batches of records below ``root``; safe to run on several threads."""

    def __init__(self, repo: Repository, root: Path,
                 on_warning: Callable[[str, str], None]) -> None:
        self.repo = repo
        self.root = root
        self.owner = can_set_owner()
        self.on_warning = on_warning
        self.warnings = 0
        self._warn_lock = threading.Lock()
        self._safe: set[Path] = {root}  # directories already resolved inside root
        self._first_names: set[str] = set()  # restored files that hard links name

    def place(self, path: str) -> Path:
        """Where an entry goes; refuses anything that would land outside the target."""
        return place_below(self.root, path, self._safe)

    def warn(self, path: str, problems: list[str]) -> None:
        for problem in problems:
            with self._warn_lock:
                self.warnings += 1
                self.on_warning(path, problem)

    def restore_batch(self, batch: list[dict[str, Any]]) -> tuple[dict[str, int], list[str]]:
        counts = {"files": 0, "directories": 0, "links": 0, "bytes": 0}
        small = [c for r in batch if len(r.get("chunks", ())) <= _SMALL_FILE_CHUNKS
                 for c in record_chunks(r)]
        fetched = iter(fetch_blobs(self.repo, small)) if small else iter(())
        made: set[Path] = set()
        for record in batch:
            entry = entry_of(record)
            destination = self.place(entry.path)
            if destination.parent not in made:
                destination.parent.mkdir(parents=True, exist_ok=True)
                made.add(destination.parent)
            if entry.kind in DIRECTORY_KINDS:
                destination.mkdir(exist_ok=True)
                made.add(destination)
                counts["directories"] += 1
            elif entry.kind == EntryKind.SYMLINK:
                if destination.is_symlink() or destination.exists():
                    destination.unlink()
                os.symlink(entry.link_target, destination)
                self.warn(entry.path, restore_attributes(str(destination), entry,
                                                         owner=self.owner))
                counts["links"] += 1
            else:
                chunks = record_chunks(record)
                datas: Iterator[bytes] = (
                    (next(fetched) for _ in chunks) if len(chunks) <= _SMALL_FILE_CHUNKS
                    else self._fetch(chunks))
                counts["bytes"] += self._write_file(destination, entry, datas)
                counts["files"] += 1
                if later_names(entry):
                    self._first_names.add(entry.path)
        return counts, [r["path"] for r in batch]

    def _fetch(self, chunks: list[bytes]) -> Iterator[bytes]:
        return (d for part in batched(chunks, 8) for d in fetch_blobs(self.repo, part))

    def restore_hardlink(self, record: dict[str, Any]) -> int:
        """A later name of a file: a hard link to its first name when this restore wrote
        that, else a file of its own with the content the record repeats. Returns the bytes
        written."""
        entry = entry_of(record)
        destination = self.place(entry.path)
        destination.parent.mkdir(parents=True, exist_ok=True)
        if entry.link_target in self._first_names:
            source = self.place(entry.link_target)
            if os.path.lexists(destination):
                if os.path.samestat(os.lstat(destination), os.lstat(source)):
                    return 0
                destination.unlink()
            os.link(source, destination, follow_symlinks=False)
            return 0
        # Records written before hard links kept their content have none: an empty file.
        return self._write_file(destination, entry, self._fetch(record_chunks(record)))

    def _write_file(self, destination: Path, entry: Entry, datas: Iterator[bytes]) -> int:
        """Write one file in place (a temp name and a rename per file doubled the directory
        work and made restores of many small files twice as slow on ext4); a file whose
        write fails is removed, and running the restore again rewrites it."""
        written = 0
        try:
            existing = os.lstat(destination)
        except FileNotFoundError:
            pass
        else:
            # A symlink is replaced, not followed; a file with other names (a hard link of an
            # earlier restore) is replaced, not rewritten under all of them.
            if stat.S_ISLNK(existing.st_mode) or existing.st_nlink > 1:
                destination.unlink()
        fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for data in datas:
                write_all(fd, [data], written)
                written += len(data)
            problems = restore_attributes(fd, entry, owner=self.owner)
        except BaseException:
            os.close(fd)
            destination.unlink(missing_ok=True)
            raise
        os.close(fd)
        self.warn(entry.path, problems)
        return written


def open_item(repo: Repository, manifest: Manifest, path: str
              ) -> tuple[dict[str, Any], _ChunkStream]:
    """One file or item of a backup, by path: its record and a stream of its content."""
    if manifest.tree is None:
        raise UsageError(f"backup {manifest.id[:8]} has no file tree")
    key = path_key(path.strip("/"))
    for record in iter_records(repo, manifest.tree):
        if path_key(record["path"]) == key:
            return record, _ChunkStream(repo, record_chunks(record))
    raise UsageError(f"{path!r} is not in backup {manifest.id[:8]}")


class _ChunkStream:
    """A read-only binary stream over a list of chunk ids."""

    def __init__(self, repo: Repository, chunks: list[bytes]) -> None:
        self._chunks = iter(chunks)
        self._repo = repo
        self._buffer = b""

    def read(self, size: int = -1) -> bytes:
        parts = [self._buffer]
        have = len(self._buffer)
        while size < 0 or have < size:
            blob_id = next(self._chunks, None)
            if blob_id is None:
                break
            data = self._repo.read_blob(blob_id)
            parts.append(data)
            have += len(data)
        joined = b"".join(parts)
        if size < 0:
            self._buffer = b""
            return joined
        self._buffer = joined[size:]
        return joined[:size]

    def close(self) -> None:
        self._chunks = iter(())

    def __enter__(self) -> _ChunkStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
