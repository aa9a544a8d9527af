"""Objects as files under one directory; every write is temp file + fsync + rename + dir fsync."""

from __future__ import annotations

import errno
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NoReturn

import attrs

from sbr_core.directio import DirectWriter, write_all
from sbr_core.errors import (
    DestinationError,
    DestinationFull,
    DestinationReadOnly,
    DestinationUnavailable,
    ObjectExists,
    ObjectNotFound,
)
from sbr_core.providers.destination import (
    Destination,
    ObjectInfo,
    check_key,
    check_prefix,
    is_valid_key,
)
from sbr_core.settings import setting

TEMP_PREFIX = ".sbr-tmp-"


@attrs.frozen
class FilesystemConfig:
    """Settings of a file-system destination."""

    path: Path = setting(
        label="Path",
        help="Directory that holds the backups: a local disk, or where an NFS/CIFS share is "
        "mounted. It must exist.",
    )
    require_mount: bool = setting(
        label="Must be a mount point",
        help="Refuse to write unless the path is a mount point, so that backups never fill the "
        "local disk when the share is not mounted.",
        default=False,
    )
    fsync: bool = setting(
        label="Flush to disk",
        help="fsync every object and its directory before a write counts as done. Turn off only "
        "for scratch repositories.",
        default=True,
    )
    direct_io: bool = setting(
        label="Write packs directly",
        help="Write pack files with O_DIRECT, past the page cache: backups then neither evict "
        "what the node has cached nor queue gigabytes for the final flush. Turn off if the "
        "share is slower that way.",
        default=True,
    )


class FilesystemDestination(Destination):
    """Stores each object as a file named by its key below the configured path."""

    name = "filesystem"
    label = "File system"
    description = "A local directory, or an NFS/CIFS share mounted on the node."
    Config = FilesystemConfig

    config: FilesystemConfig

    # --- paths and errors -----------------------------------------------------------------

    def _root(self) -> Path:
        root = self.config.path
        if not root.exists():
            raise DestinationUnavailable(
                f"destination {self.context.name!r}: {root} does not exist (is the share mounted?)"
            )
        if not root.is_dir():
            raise DestinationUnavailable(f"destination {self.context.name!r}: {root} is not a "
                                         "directory")
        if self.config.require_mount and not os.path.ismount(root):
            raise DestinationUnavailable(
                f"destination {self.context.name!r}: {root} is not a mount point (the share is "
                "not mounted, and 'Must be a mount point' is set)"
            )
        return root

    def _path(self, key: str) -> Path:
        return self._root() / check_key(key)

    def _raise(self, exc: OSError, doing: str) -> NoReturn:
        where = f"destination {self.context.name!r}: {doing}"
        code = exc.errno
        if code in (errno.ENOSPC, errno.EDQUOT):
            raise DestinationFull(f"{where}: no space left on {self.config.path}") from exc
        if code == errno.EROFS:
            raise DestinationReadOnly(f"{where}: {self.config.path} is read-only") from exc
        if code in (errno.EACCES, errno.EPERM):
            raise DestinationReadOnly(f"{where}: permission denied ({exc.filename})") from exc
        if code in (errno.ENOTCONN, errno.ESTALE, errno.EHOSTDOWN, errno.EIO):
            raise DestinationUnavailable(f"{where}: {exc.strerror}") from exc
        raise DestinationError(f"{where}: {exc.strerror or exc}") from exc

    # --- the object interface -------------------------------------------------------------

    def put(self, key: str, data: bytes | BinaryIO, *, if_absent: bool = False) -> None:
        """Write to a temp file beside the target, flush it, then rename it into place; with
        ``if_absent``, hard-link it into place instead, which fails if the key exists."""
        target = self._path(key)
        temp = target.parent / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        try:
            created = self._make_parents(target.parent)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
            try:
                self._write_all(fd, data, str(temp), direct=self.config.direct_io)
                if self.config.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if if_absent:
                self._link_new(temp, target, key)
            else:
                os.replace(temp, target)
            if self.config.fsync:
                for directory in [target.parent, *created]:
                    _fsync_dir(directory)
        except _SourceError as failed:
            _unlink_quietly(temp)
            raise failed.error from None
        except OSError as exc:
            _unlink_quietly(temp)
            self._raise(exc, f"cannot store {key!r}")
        except BaseException:
            _unlink_quietly(temp)
            raise

    def _link_new(self, temp: Path, target: Path, key: str) -> None:
        try:
            os.link(temp, target)
        except FileExistsError:
            raise ObjectExists(f"destination {self.context.name!r}: object {key!r} already "
                               "exists") from None
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise DestinationError(
                    f"destination {self.context.name!r}: {self.config.path} cannot create "
                    "files atomically (no hard links); use a share that supports them"
                ) from exc
            raise
        finally:
            _unlink_quietly(temp)

    def _make_parents(self, directory: Path) -> list[Path]:
        """Create missing directories; return the parents whose entries changed (to fsync)."""
        missing = []
        probe = directory
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:
                pass  # another writer made it
        return [p.parent for p in missing]

    @staticmethod
    def _write_all(fd: int, data: bytes | BinaryIO, path: str, *, direct: bool) -> None:
        """Write an object: bytes as they are (small: documents, indexes), a stream (a pack)
        through the direct-I/O writer when ``direct``."""
        if isinstance(data, (bytes, bytearray, memoryview)):
            write_all(fd, [data], 0)
            return
        readinto = getattr(data, "readinto", None)
        pending = memoryview(b"")  # what a read() gave beyond the space asked for

        def fill(view: memoryview) -> int:
            nonlocal pending
            if not pending:
                try:
                    if readinto is not None:
                        return int(readinto(view) or 0)
                    pending = memoryview(data.read(len(view)))
                except OSError as exc:
                    raise _SourceError(exc) from exc
            take = min(len(view), len(pending))
            view[:take] = pending[:take]
            pending = pending[take:]
            return take

        writer = DirectWriter(fd, path, direct=direct)
        try:
            writer.copy_from(fill)
        finally:
            writer.close()

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """Read all of an object, or a range of it."""
        path = self._path(key)
        try:
            with open(path, "rb") as handle:
                if offset:
                    handle.seek(offset)
                return handle.read() if length is None else handle.read(length)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"destination {self.context.name!r}: no object {key!r}") from None
        except OSError as exc:
            self._raise(exc, f"cannot read {key!r}")

    def open(self, key: str) -> BinaryIO:
        """The object's file, opened for reading (streams large packs in bounded memory)."""
        path = self._path(key)
        try:
            if not path.is_file():
                raise FileNotFoundError(path)
            return open(path, "rb")  # the caller closes it
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(f"destination {self.context.name!r}: no object {key!r}") from None
        except OSError as exc:
            self._raise(exc, f"cannot read {key!r}")

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Walk the directory below the prefix; temp files of unfinished writes are skipped."""
        root = self._root()
        check_prefix(prefix)
        start = root / prefix.rsplit("/", 1)[0] if "/" in prefix else root
        try:
            yield from self._walk(root, start, prefix)
        except OSError as exc:
            self._raise(exc, f"cannot list {prefix or '(all)'!r}")

    def _walk(self, root: Path, directory: Path, prefix: str) -> Iterator[ObjectInfo]:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            # Temp files of unfinished writes start with '.'; names that cannot be keys
            # (lost+found on a disk's root, an admin's notes~) are not objects, and descending
            # into lost+found would fail with EACCES for a node that does not run as root.
            if not is_valid_key(entry.name):
                continue
            key = Path(entry.path).relative_to(root).as_posix()
            if entry.is_dir(follow_symlinks=False):
                if key.startswith(prefix) or prefix.startswith(key + "/"):
                    yield from self._walk(root, Path(entry.path), prefix)
            elif entry.is_file(follow_symlinks=False) and key.startswith(prefix):
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # deleted by another node since scandir: not an object any more
                yield ObjectInfo(key, st.st_size, st.st_mtime)

    def remove_abandoned(self, older_than: float) -> int:
        """Delete temp files of writes killed midway, once older than ``older_than`` s."""
        root = self._root()
        cutoff = time.time() - older_than
        removed = 0
        for directory, _dirs, files in os.walk(root):
            for name in files:
                if not name.startswith(TEMP_PREFIX):
                    continue
                path = os.path.join(directory, name)
                try:
                    if os.lstat(path).st_mtime < cutoff:
                        os.unlink(path)
                        removed += 1
                except FileNotFoundError:
                    continue  # finished or removed meanwhile
                except OSError as exc:
                    self._raise(exc, f"cannot remove the abandoned temp file {path}")
        return removed

    def delete(self, key: str) -> None:
        """Unlink the object's file; a missing one is fine."""
        path = self._path(key)
        try:
            path.unlink()
            if self.config.fsync:
                _fsync_dir(path.parent)
        except (FileNotFoundError, NotADirectoryError):
            return  # no such object (NotADirectory: a parent part of the key is an object)
        except OSError as exc:
            self._raise(exc, f"cannot delete {key!r}")

    def stat(self, key: str) -> ObjectInfo:
        """Size and mtime of one object."""
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(f"destination {self.context.name!r}: no object {key!r}") from None
        except OSError as exc:
            self._raise(exc, f"cannot stat {key!r}")
        if not os.path.isfile(path):
            raise ObjectNotFound(f"destination {self.context.name!r}: no object {key!r}")
        return ObjectInfo(key, st.st_size, st.st_mtime)

    def test_connection(self) -> None:
        """Write, read back and delete a probe object; report free space problems."""
        self.probe()


class _SourceError(Exception):
    """The caller's stream failed to read: its OSError is not the destination's to translate
    (an EIO of the disk being backed up must not read as "destination unavailable")."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error)
        self.error = error



def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
