"""Item trees: entries as JSON lines sorted by path, cut into TREE blobs at stable places.

A record is one entry's metadata plus the ids of its content chunks (content-defined, so an
insertion in a large file changes few chunks). Records are cut into blobs where a record's
hash says so (or at 1 MiB), so an unchanged stretch of a tree yields the same blobs and is
stored once. Reading streams the blobs, so a tree of millions of items needs little memory.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

import pyfastcdc

from sbr_core.errors import ItemUnavailable, RepositoryCorrupt, UsageError
from sbr_core.models import Entry, EntryKind
from sbr_core.repository.format import BlobType
from sbr_core.repository.pipeline import ordered_map

if TYPE_CHECKING:
    from sbr_core.repository.repo import Repository
    from sbr_core.repository.writer import BackupWriter

TREE_BLOB_MIN = 64 * 1024
TREE_BLOB_MAX = 1024 * 1024
_CUT_MASK = 0x3F  # about one cut per 64 records past the minimum
BATCH_BYTES = 2 * 1024 * 1024  # content handed to a worker at once
CDC_BLOCK = 8 * 1024 * 1024  # content read and cut at once
_CONTENT_KINDS = (EntryKind.FILE, EntryKind.ITEM)


def path_key(path: str) -> tuple[str, ...]:
    """Sort key: by components, so that 'a/b' comes before 'a.txt' as a walk yields them."""
    return tuple(path.split("/"))


def record_of(entry: Entry, chunks: list[bytes]) -> dict[str, Any]:
    record: dict[str, Any] = {"path": entry.path, "kind": entry.kind.value}
    for name in ("item_id", "parent_id", "link_target"):
        value = getattr(entry, name)
        if value:
            record[name] = value
    for name in ("size", "mtime_ns", "mode", "uid", "gid"):
        record[name] = getattr(entry, name)
    if entry.xattrs:
        record["xattrs"] = {k: base64.b64encode(v).decode() for k, v in entry.xattrs.items()}
    if entry.metadata:
        record["metadata"] = dict(entry.metadata)
    if entry.kind in _CONTENT_KINDS:
        record["chunks"] = [c.hex() for c in chunks]
    return record


def entry_of(record: dict[str, Any]) -> Entry:
    """The entry a record describes (without content: see :func:`record_chunks`)."""
    try:
        return Entry(
            path=record["path"], kind=EntryKind(record["kind"]),
            item_id=record.get("item_id", ""), parent_id=record.get("parent_id", ""),
            size=int(record.get("size", 0)), mtime_ns=int(record.get("mtime_ns", 0)),
            mode=int(record.get("mode", 0)), uid=int(record.get("uid", 0)),
            gid=int(record.get("gid", 0)), link_target=record.get("link_target", ""),
            xattrs={k: base64.b64decode(v) for k, v in record.get("xattrs", {}).items()},
            metadata=record.get("metadata", {}))
    except (KeyError, TypeError, ValueError):
        raise RepositoryCorrupt(f"tree record {record.get('path')!r} is malformed") from None


def record_chunks(record: dict[str, Any]) -> list[bytes]:
    return [bytes.fromhex(c) for c in record.get("chunks", ())]


def iter_records(repo: Repository, tree: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """Every record of a tree, in path order."""
    for blob_id in tree:
        data = repo.read_blob(blob_id)
        for line in data.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                raise RepositoryCorrupt(f"tree blob {blob_id.hex()[:16]} is malformed") from None
            yield record


def _unchanged(entry: Entry, old: dict[str, Any]) -> bool:
    """Whether an entry's content can be taken from the parent's record unread."""
    return (old.get("kind") == entry.kind.value and entry.kind in _CONTENT_KINDS
            and int(old.get("size", -1)) == entry.size
            and int(old.get("mtime_ns", -1)) == entry.mtime_ns
            and old.get("item_id", "") == entry.item_id
            and old.get("metadata", {}).get("version") == entry.metadata.get("version")
            and "chunks" in old)


class _Cutter:
    """Accumulates record lines into TREE blobs."""

    def __init__(self, writer: BackupWriter) -> None:
        self.writer = writer
        self.buffer: list[bytes] = []
        self.size = 0
        self.blobs: list[bytes] = []

    def add(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), sort_keys=True).encode() + b"\n"
        self.buffer.append(line)
        self.size += len(line)
        if self.size >= TREE_BLOB_MAX or (
                self.size >= TREE_BLOB_MIN and zlib.crc32(line) & _CUT_MASK == 0):
            self.cut()

    def cut(self) -> None:
        if self.buffer:
            self.blobs.append(self.writer.store_blob(BlobType.TREE, b"".join(self.buffer)))
            self.buffer, self.size = [], 0


class TreeWriter:
    """Turns entries into chunks and records, merging with the parent's tree."""

    def __init__(self, writer: BackupWriter, *, parent_tree: tuple[bytes, ...] | None,
                 on_skip: Callable[[Entry, str], None] | None) -> None:
        self.writer = writer
        self.repo = writer.repo
        self.parent_tree = parent_tree
        self.on_skip = on_skip
        cdc = self.repo.config.cdc
        self.cdc_min = int(cdc["min"])
        self.chunker = pyfastcdc.FastCDC(avg_size=int(cdc["avg"]), min_size=int(cdc["min"]),
                                         max_size=int(cdc["max"]))
        stats = writer.stats
        for name in ("entries", "files_unchanged", "skipped"):
            stats.setdefault(name, 0)

    # The work stream: ("chunk", data) items, each file's followed by ("record", entry, n).

    def write(self, entries: Iterable[Entry], *, complete: bool, removed: Iterable[str]
              ) -> tuple[bytes, ...]:
        ordered = (self._merge_complete(entries) if complete
                   else self._merge_delta(entries, set(removed)))
        cutter = _Cutter(self.writer)
        pending_ids: list[bytes] = []
        work = ordered_map(self._encode_batch, self._batches(ordered), workers=3, lookahead=4)
        for batch in work:
            for item in batch:
                if item[0] == "chunk":
                    _, blob_id, stored, length = item
                    self.writer._store(BlobType.DATA, blob_id, stored, length)
                    self.writer.stats["bytes_read"] += length
                    pending_ids.append(blob_id)
                elif item[0] == "skip":
                    _, entry, reason = item
                    pending_ids = []
                    self.writer.stats["skipped"] += 1
                    if self.on_skip is not None:
                        self.on_skip(entry, reason)
                else:
                    _, entry, reused = item
                    chunks = reused if reused is not None else pending_ids
                    cutter.add(record_of(entry, chunks))
                    self.writer.stats["entries"] += 1
                    self.writer.stats["logical_bytes"] += entry.size
                    pending_ids = []
            self.writer.op.check()
            self.writer.check_lock()
            self.writer.op.progress(self.writer.stats["bytes_read"], 0, "items")
        cutter.cut()
        return tuple(cutter.blobs)

    def _merge_complete(self, entries: Iterable[Entry]
                        ) -> Iterator[tuple[Entry, list[bytes] | None]]:
        """(entry, chunks to reuse or None) in path order, matched with the parent's tree."""
        parent = iter_records(self.repo, self.parent_tree) if self.parent_tree else iter(())
        old = next(parent, None)
        previous: tuple[str, ...] | None = None
        for entry in entries:
            key = path_key(entry.path)
            if previous is not None and key <= previous:
                raise UsageError(f"entries must come sorted by path without repeats: "
                                 f"{entry.path!r} came after {'/'.join(previous)!r}")
            previous = key
            while old is not None and path_key(old["path"]) < key:
                old = next(parent, None)
            if old is not None and path_key(old["path"]) == key and _unchanged(entry, old):
                self.writer.stats["files_unchanged"] += 1
                yield entry, record_chunks(old)
            else:
                yield entry, None

    def _merge_delta(self, entries: Iterable[Entry], removed: set[str]
                     ) -> Iterator[tuple[Entry, list[bytes] | None]]:
        """The parent's records minus removed and changed ids, plus the changed entries."""
        changed = sorted(entries, key=lambda e: path_key(e.path))
        gone = removed | {e.item_id for e in changed if e.item_id}
        changed_paths = {e.path for e in changed}
        parent = iter_records(self.repo, self.parent_tree) if self.parent_tree else iter(())
        position = 0
        for old in parent:
            if old.get("item_id") in gone or old["path"] in changed_paths:
                continue
            key = path_key(old["path"])
            while position < len(changed) and path_key(changed[position].path) < key:
                yield changed[position], None
                position += 1
            yield entry_of(old), record_chunks(old)
        for entry in changed[position:]:
            yield entry, None

    def _batches(self, ordered: Iterator[tuple[Entry, list[bytes] | None]]
                 ) -> Iterator[list[tuple[Any, ...]]]:
        batch: list[tuple[Any, ...]] = []
        size = 0
        for entry, reused in ordered:
            if entry.kind in _CONTENT_KINDS and reused is None and entry.open is not None:
                try:
                    for chunk in self._chunks(entry):
                        batch.append(("chunk", chunk))
                        size += len(chunk)
                        if size >= BATCH_BYTES:
                            yield batch
                            batch, size = [], 0
                except (ItemUnavailable, OSError) as exc:
                    # Chunks already queued stay (harmless); the entry is left out.
                    reason = getattr(exc, "strerror", None) or str(exc)
                    batch.append(("skip", entry, reason))
                    continue
                batch.append(("record", entry, None))
            else:
                batch.append(("record", entry, reused or []))
            if len(batch) >= 256:
                yield batch
                batch, size = [], 0
        if batch:
            yield batch

    def _chunks(self, entry: Entry) -> Iterator[bytes]:
        """Content-defined chunks of an entry's content, read in blocks of at most
        ``CDC_BLOCK``. The last chunk of a block is not a real cut: it is carried into the next
        block, so the cuts are the same as over the whole stream."""
        assert entry.open is not None
        stream: BinaryIO = entry.open()
        try:
            # Sized reads: a small file never costs a block-sized buffer.
            want = entry.size + 1 if 0 <= entry.size < CDC_BLOCK else CDC_BLOCK
            carried = b""
            while True:
                data = stream.read(want)
                want = CDC_BLOCK
                at_end = not data
                buffer = carried + data if carried else data
                if not buffer:
                    return
                if at_end or len(buffer) < self.cdc_min:
                    if at_end:
                        yield from self._cut(buffer, keep_last=True)
                        return
                    carried = buffer
                    continue
                carried = yield from self._cut(buffer, keep_last=False)
        finally:
            stream.close()

    def _cut(self, buffer: bytes, *, keep_last: bool) -> Generator[bytes, None, bytes]:
        """Yield the chunks of ``buffer``; return the unfinished tail unless ``keep_last``."""
        if len(buffer) <= self.cdc_min:
            if keep_last:
                yield buffer
            return buffer if not keep_last else b""
        view = memoryview(buffer)
        chunks = list(self.chunker.cut_buf(view))
        tail = b""
        if not keep_last:
            last = chunks.pop()
            tail = bytes(view[last.offset:])
        for chunk in chunks:
            yield bytes(view[chunk.offset:chunk.offset + chunk.length])
        return tail

    def _encode_batch(self, batch: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        for item in batch:
            if item[0] == "chunk":
                data = item[1]
                blob_id, stored = self.writer._encode(data)
                out.append(("chunk", blob_id, stored, len(data)))
            else:
                out.append(item)
        return out
