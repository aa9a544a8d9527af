"""Local sources: an image file, and a directory tree walked into entries with everything
a restore needs to put the files back as they were (owner, mode, times, symlinks, hard
links, extended attributes), plus the code that writes those attributes back.

``sbr repo backup-path``/``restore`` and the ``fileshare`` storage plugin share this walker
and these attribute writers. The hypervisor and storage plugins feed the repository the same
way: extents and a read callable for disks, entries with an ``open`` for trees.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from sbr_core.errors import ItemUnavailable, RepositoryCorrupt, UsageError
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


# --- directory trees -----------------------------------------------------------------------

#: Errors that mean the share itself went away (an NFS server down, a CIFS session lost): the
#: walk stops, rather than recording a tree that silently lacks everything below.
SHARE_LOST = frozenset({errno.ENOTCONN, errno.ESTALE, errno.EHOSTDOWN, errno.EHOSTUNREACH,
                        errno.EIO})
#: The file system keeps no extended attributes (or not on this kind of file).
_NO_XATTRS = {errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}

#: ``exclude(relative path, is_directory)``: true leaves the entry (and all below it) out.
Exclude = Callable[[str, bool], bool]


def walk_directory(root: Path, *, on_skip: Callable[[str, str], None] | None = None,
                   exclude: Exclude | None = None) -> Iterator[Entry]:
    """Entries below ``root`` in path order (sorted names, depth first), links not followed.

    Each entry carries owner, mode, ``mtime_ns``, extended attributes of every namespace the
    caller may read, and ``item_id`` "dev:inode" (``parent_id``: its directory's), so an
    unchanged file is recognised by size, mtime and inode. A regular file with several names
    is a ``file`` entry at its first path in this order, with ``metadata["links"]`` = its link
    count, and a ``hardlink`` entry (``link_target`` = that first path, no ``open``) at each
    later one. ``open()`` of an unreadable file raises ItemUnavailable. Special files
    (sockets, fifos, devices) and entries that cannot be examined are skipped and reported
    through ``on_skip``; a directory that cannot be listed is reported and its content left
    out. Raises UsageError when ``root`` cannot be listed or the share goes away meanwhile.
    """
    try:
        root_st = os.stat(root)
    except OSError as exc:
        raise UsageError(f"cannot read {root}: {exc.strerror}") from exc
    if not stat.S_ISDIR(root_st.st_mode):
        raise UsageError(f"{root} is not a directory")
    links: dict[tuple[int, int], list[Any]] = {}  # (dev, ino) -> [first path, links to come]

    def skip(path: str, reason: str) -> None:
        if on_skip is not None:
            on_skip(path, reason)
        else:
            log.warning("skipped %s: %s", path, reason)

    def lost(where: str, exc: OSError) -> UsageError:
        return UsageError(f"cannot read {where}: {exc.strerror or exc} (is the share still "
                          "mounted?)")

    def walk(directory: str, prefix: str, parent_id: str) -> Iterator[Entry]:
        try:
            names = sorted(os.listdir(directory))
        except OSError as exc:
            if not prefix or exc.errno in SHARE_LOST:
                raise lost(directory, exc) from exc
            skip(prefix, exc.strerror or str(exc))
            return
        for name in names:
            path = os.path.join(directory, name)
            relative = f"{prefix}/{name}" if prefix else name
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue  # deleted since the directory was listed
            except OSError as exc:
                if exc.errno in SHARE_LOST:
                    raise lost(path, exc) from exc
                skip(relative, exc.strerror or str(exc))
                continue
            mode = st.st_mode
            is_dir = stat.S_ISDIR(mode)
            if exclude is not None and exclude(relative, is_dir):
                continue
            if is_dir:
                entry = _entry(relative, st, EntryKind.DIRECTORY, parent_id, path)
                yield entry
                yield from walk(path, relative, entry.item_id)
            elif stat.S_ISREG(mode):
                if st.st_nlink > 1:
                    first = _first_link(links, st, relative)
                    if first is not None:
                        yield _entry(relative, st, EntryKind.HARDLINK, parent_id, path,
                                     item_id=f"{st.st_dev}:{st.st_ino}:{relative}",
                                     size=st.st_size, link_target=first)
                        continue
                yield _entry(relative, st, EntryKind.FILE, parent_id, path, size=st.st_size,
                             open=_opener(path),
                             metadata={"links": st.st_nlink} if st.st_nlink > 1 else {})
            elif stat.S_ISLNK(mode):
                try:
                    target = os.readlink(path)
                except OSError as exc:
                    skip(relative, exc.strerror or str(exc))
                    continue
                yield _entry(relative, st, EntryKind.SYMLINK, parent_id, path,
                             link_target=target)
            else:
                skip(relative, "special file (socket, fifo or device) is not backed up")

    yield from walk(os.fspath(root), "", f"{root_st.st_dev}:{root_st.st_ino}")


def _first_link(links: dict[tuple[int, int], list[Any]], st: os.stat_result,
                relative: str) -> str | None:
    """The first path seen of this inode, or None when this is the first one. An inode is
    forgotten once all its names were seen, so the table holds only links still to come."""
    key = (st.st_dev, st.st_ino)
    known = links.get(key)
    if known is None:
        links[key] = [relative, st.st_nlink - 1]
        return None
    known[1] -= 1
    if known[1] <= 0:
        del links[key]
    return str(known[0])


def _entry(relative: str, st: os.stat_result, kind: EntryKind, parent_id: str, path: str,
           **extra: Any) -> Entry:
    extra.setdefault("item_id", f"{st.st_dev}:{st.st_ino}")
    return Entry(path=relative, kind=kind, parent_id=parent_id, mtime_ns=st.st_mtime_ns,
                 mode=st.st_mode, uid=st.st_uid, gid=st.st_gid, xattrs=read_xattrs(path),
                 **extra)


def read_xattrs(path: str) -> dict[str, bytes]:
    """Every extended attribute of ``path`` (not followed if a symlink) that can be read:
    ``user.*`` and, as root, ``trusted.*``; ``security.*``; ACLs as ``system.posix_acl_*``."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _NO_XATTRS and exc.errno != errno.ENOENT:
            log.warning("extended attributes of %s not read: %s", path, exc.strerror)
        return {}
    values = {}
    for name in names:
        try:
            values[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno != errno.ENODATA:  # removed since listed
                log.warning("extended attribute %s of %s not read: %s", name, path,
                            exc.strerror)
    return values


def _opener(path: str) -> Callable[[], BinaryIO]:
    def open_file() -> BinaryIO:
        # Not following a symlink swapped in since the walk; not updating the access time
        # of every file a backup reads (allowed to the owner and root only).
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            try:
                fd = os.open(path, flags | os.O_NOATIME)
            except PermissionError:
                fd = os.open(path, flags)
        except OSError as exc:
            raise ItemUnavailable(exc.strerror or str(exc)) from None
        return os.fdopen(fd, "rb", buffering=0)
    return open_file


# --- writing attributes back ------------------------------------------------------------------


def can_set_owner() -> bool:
    """Whether this process may give files away (root): restores set owners only then."""
    return os.geteuid() == 0


def restore_attributes(target: int | str, entry: Entry, *, owner: bool) -> list[str]:
    """Give ``target`` (an open file descriptor, or the path of a symlink, not followed) the
    entry's owner (when ``owner``), mode, extended attributes and modification time, in that
    order (a chown clears set-id bits and file capabilities). Returns what could not be set,
    one sentence each; nothing raises."""
    problems: list[str] = []
    by_path: dict[str, Any] = {} if isinstance(target, int) else {"follow_symlinks": False}
    if owner:
        try:
            os.chown(target, entry.uid, entry.gid, **by_path)
        except OSError as exc:
            problems.append(f"owner {entry.uid}:{entry.gid} not set ({exc.strerror})")
    if entry.mode and isinstance(target, int):  # a symlink's own mode means nothing on Linux
        try:
            os.chmod(target, stat.S_IMODE(entry.mode))
        except OSError as exc:
            problems.append(f"mode {stat.S_IMODE(entry.mode):o} not set ({exc.strerror})")
    failed: dict[str, list[str]] = {}
    for name, value in sorted(entry.xattrs.items()):
        try:
            os.setxattr(target, name, value, **by_path)
        except OSError as exc:
            failed.setdefault(exc.strerror or str(exc), []).append(name)
    for reason, names in failed.items():
        problems.append(f"extended attributes not set ({reason}): {', '.join(names)}")
    if entry.mtime_ns:
        try:
            os.utime(target, ns=(entry.mtime_ns, entry.mtime_ns), **by_path)
        except OSError as exc:
            problems.append(f"modification time not set ({exc.strerror})")
    return problems


def restore_directory_attributes(path: Path | str, entry: Entry, *, owner: bool) -> list[str]:
    """:func:`restore_attributes` for a directory, through a descriptor opened without
    following symlinks (one swapped in meanwhile cannot redirect a root restore's chown)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        return [f"attributes not set ({exc.strerror})"]
    try:
        return restore_attributes(fd, entry, owner=owner)
    finally:
        os.close(fd)


def place_below(root: Path, path: str, known: set[Path]) -> Path:
    """Where the entry ``path`` goes below ``root``; refuses anything that would land outside.

    Names are checked as text (no '..', no absolute path); the parent directory is resolved
    once (``known`` holds those already checked), so a symlink already in the target cannot
    redirect the write.
    """
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts) \
            or "\0" in path:
        raise RepositoryCorrupt(f"tree entry {path!r} is not a relative path")
    parent = root.joinpath(*parts[:-1])
    if parent not in known:
        resolved = parent.resolve()
        if resolved != root and root not in resolved.parents:
            raise RepositoryCorrupt(f"tree entry {path!r} points outside the restore target")
        known.add(parent)
    return parent / parts[-1]
