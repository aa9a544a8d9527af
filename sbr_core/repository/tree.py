"""Item trees: entries as JSON lines sorted by path, cut into TREE blobs at stable places.

A record is one entry's metadata plus the ids of its content chunks (content-defined, so an
insertion in a large file changes few chunks). Records are cut into blobs where a record's
hash says so (or at 1 MiB), so an unchanged stretch of a tree yields the same blobs and is
stored once. Reading streams the blobs, so a tree of millions of items needs little memory.

Hard links: a ``file`` entry whose ``metadata["links"]`` is above 1 is the first name of an
inode; each later name comes after it as a ``hardlink`` entry naming it in ``link_target``.
The ``hardlink`` record repeats the first name's chunks (read once, stored once), so that it
restores on its own when its first name is not restored with it.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections import OrderedDict
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
CONTENT_KINDS = (EntryKind.FILE, EntryKind.ITEM)
DIRECTORY_KINDS = (EntryKind.DIRECTORY, EntryKind.FOLDER)
#: Parent records passed over unmatched (deleted, or renamed away) kept by item id, so that a
#: renamed entry is recognised; at most this many, the oldest dropped first.
MOVED_MAX = 50_000


def later_names(entry: Entry) -> int:
    """How many ``hardlink`` entries name this file as their first name (0: none)."""
    links = entry.metadata.get("links", 0) if entry.kind == EntryKind.FILE else 0
    return links - 1 if isinstance(links, int) and links > 1 else 0


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
    if entry.kind in CONTENT_KINDS or entry.kind == EntryKind.HARDLINK:
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
    return (old.get("kind") == entry.kind.value and entry.kind in CONTENT_KINDS
            and int(old.get("size", -1)) == entry.size
            and int(old.get("mtime_ns", -1)) == entry.mtime_ns
            and old.get("item_id", "") == entry.item_id
            and old.get("metadata", {}).get("version") == entry.metadata.get("version")
            and "chunks" in old)


class _HardLinks:
    """Chunks of the first names of multiply linked files, until their later names came."""

    def __init__(self) -> None:
        self.first: dict[str, list[Any]] = {}  # path -> [chunks, names still to come]

    def note(self, entry: Entry, chunks: list[bytes]) -> None:
        count = later_names(entry)
        if count:
            self.first[entry.path] = [chunks, count]

    def chunks_of(self, entry: Entry) -> list[bytes] | None:
        """The content of a hardlink entry's first name; None if that was not recorded."""
        held = self.first.get(entry.link_target)
        if held is None:
            return None
        held[1] -= 1
        if held[1] <= 0:  # names outside the tree keep theirs to the end: few
            del self.first[entry.link_target]
        chunks: list[bytes] = held[0]
        return chunks


class _Moved:
    """Parent records that no entry matched by path, by item id: where a renamed file or a
    file of a renamed folder finds its content when its new path sorts after the old one."""

    def __init__(self) -> None:
        self.records: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def add(self, record: dict[str, Any]) -> None:
        item_id = record.get("item_id")
        if item_id and "chunks" in record and record.get("kind") != EntryKind.HARDLINK.value:
            self.records[item_id] = record
            if len(self.records) > MOVED_MAX:
                self.records.popitem(last=False)

    def take(self, entry: Entry) -> dict[str, Any] | None:
        record = self.records.get(entry.item_id) if entry.item_id else None
        if record is not None and _unchanged(entry, record):
            del self.records[entry.item_id]
            return record
        return None


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
        links = _HardLinks()
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
                    self._skip(entry, reason)
                else:
                    _, entry, reused = item
                    chunks = reused if reused is not None else pending_ids
                    pending_ids = []
                    if entry.kind == EntryKind.HARDLINK:
                        first = links.chunks_of(entry)
                        if first is None and not chunks:
                            self._skip(entry, f"its first name {entry.link_target!r} is not "
                                       "in the backup")
                            continue
                        chunks = chunks if first is None else first
                    links.note(entry, chunks)
                    cutter.add(record_of(entry, chunks))
                    self.writer.stats["entries"] += 1
                    self.writer.stats["logical_bytes"] += entry.size
            self.writer.op.check()
            self.writer.check_lock()
            self.writer.op.progress(self.writer.stats["bytes_read"], 0, "items")
        cutter.cut()
        return tuple(cutter.blobs)

    def _skip(self, entry: Entry, reason: str) -> None:
        self.writer.stats["skipped"] += 1
        if self.on_skip is not None:
            self.on_skip(entry, reason)

    def _merge_complete(self, entries: Iterable[Entry]
                        ) -> Iterator[tuple[Entry, list[bytes] | None]]:
        """(entry, chunks to reuse or None) in path order, matched with the parent's tree:
        by path, or by item id among the parent's records passed over (a rename)."""
        parent = iter_records(self.repo, self.parent_tree) if self.parent_tree else iter(())
        old = next(parent, None)
        moved = _Moved()
        previous: tuple[str, ...] | None = None
        for entry in entries:
            key = path_key(entry.path)
            if previous is not None and key <= previous:
                raise UsageError(f"entries must come sorted by path without repeats: "
                                 f"{entry.path!r} came after {'/'.join(previous)!r}")
            previous = key
            while old is not None and path_key(old["path"]) < key:
                moved.add(old)
                old = next(parent, None)
            same = None
            if old is not None and path_key(old["path"]) == key:
                same, old = old, next(parent, None)
            if same is not None and _unchanged(entry, same):
                self.writer.stats["files_unchanged"] += 1
                yield entry, record_chunks(same)
                continue
            if same is not None and same.get("item_id") != entry.item_id:
                moved.add(same)  # another file took this path; the old one may be elsewhere
            found = moved.take(entry) if entry.kind in CONTENT_KINDS else None
            if found is not None:
                self.writer.stats["files_unchanged"] += 1
                yield entry, record_chunks(found)
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
            if entry.kind in CONTENT_KINDS and reused is None and entry.open is not None:
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
