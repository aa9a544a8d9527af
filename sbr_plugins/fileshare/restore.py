"""Restoring entries to a directory: atomically per file, with owners, modes, times, links and
extended attributes, one outcome per entry.

Files and symlinks are made under a temporary name beside their destination, given their
attributes there, and renamed into place, so a failed or cancelled restore never leaves a
half-written file under a real name. Hard links wait for the files (they link to their
first name when this restore wrote it, otherwise they become files of their own); directory
attributes wait for everything, since creating an entry changes its directory's time.
"""

from __future__ import annotations

import itertools
import os
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from sbr_core.directio import write_all
from sbr_core.errors import ProviderError, SbrError, TaskCancelled, UsageError
from sbr_core.models import Entry, EntryKind
from sbr_core.providers.items import RESTORE_CONFLICTS, ItemRestoreRequest, RestoreOutcome
from sbr_core.repository.sources import (
    can_set_owner,
    place_below,
    restore_attributes,
    restore_directory_attributes,
)
from sbr_core.repository.tree import CONTENT_KINDS, DIRECTORY_KINDS, later_names

TEMP_PREFIX = ".sbr-restore-"
COPY_BLOCK = 1024 * 1024


class _Skipped(Exception):
    """The entry is left out; the message says why."""


class ShareRestore:
    """One restore request below ``base``."""

    def __init__(self, base: Path, request: ItemRestoreRequest, *, where: str) -> None:
        if request.conflict not in RESTORE_CONFLICTS:
            raise UsageError(f"{where}: conflict must be one of "
                             f"{', '.join(RESTORE_CONFLICTS)}, not {request.conflict!r}")
        self.request = request
        self.op = request.op
        self.where = where
        self.conflict = request.conflict
        self.owner = can_set_owner()
        self.base_path = base
        self.base = base
        self._safe: set[Path] = set()
        self._made: set[Path] = set()  # directories this restore created
        self._moved: dict[str, str | None] = {}  # folder path -> where it went (None: skipped)
        self._first_names: dict[str, Path] = {}  # restored files that hard links name
        self._directories: list[tuple[Entry, Path, str]] = []
        self._hardlinks: list[Entry] = []
        self._bytes = 0

    def run(self) -> Iterator[RestoreOutcome]:
        """Restore every entry; yield what became of each."""
        try:
            self.base_path.mkdir(parents=True, exist_ok=True)
            self.base = self.base_path.resolve()
        except OSError as exc:
            raise ProviderError(f"{self.where}: cannot create {self.base_path}: "
                                f"{exc.strerror or exc}") from exc
        self._safe = {self.base}
        for entry in self.request.entries:
            self.op.check()
            if entry.kind == EntryKind.HARDLINK:
                self._hardlinks.append(entry)
                continue
            outcome = self._guarded(entry, self._restore)
            if outcome is not None:
                yield outcome
        for entry in self._hardlinks:
            self.op.check()
            outcome = self._guarded(entry, self._hardlink)
            if outcome is not None:
                yield outcome
        for entry, path, note in self._directories:
            problems = restore_directory_attributes(path, entry, owner=self.owner)
            yield self._done(entry, path, [note, *problems, *self._owner_note(entry)])

    # --- one entry ------------------------------------------------------------------------

    def _guarded(self, entry: Entry, restore: Callable[[Entry], RestoreOutcome | None]
                 ) -> RestoreOutcome | None:
        try:
            outcome = restore(entry)
        except TaskCancelled:
            raise
        except _Skipped as skipped:
            return RestoreOutcome(entry.item_id, entry.path, "skipped", message=str(skipped))
        except (OSError, SbrError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return RestoreOutcome(entry.item_id, entry.path, "failed", message=reason)
        self.op.progress(self._bytes, 0, entry.path)
        return outcome

    def _restore(self, entry: Entry) -> RestoreOutcome | None:
        if entry.kind in DIRECTORY_KINDS:
            self._directory(entry)
            return None  # told once its attributes are set, at the end
        if entry.kind in CONTENT_KINDS:
            target, note = self._claim(entry)
            return self._file(entry, target, [note])
        if entry.kind == EntryKind.SYMLINK:
            target, note = self._claim(entry)
            return self._symlink(entry, target, [note])
        raise SbrError(f"a {entry.kind.value} entry cannot be restored to a file share")

    def _file(self, entry: Entry, target: Path, notes: list[str]) -> RestoreOutcome:
        if entry.open is None:
            raise SbrError("the backup holds no content for it")
        temp = self._temp(target)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            try:
                with entry.open() as stream:
                    self._copy(stream, fd)
                problems = restore_attributes(fd, entry, owner=self.owner)
            finally:
                os.close(fd)
            os.replace(temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        if later_names(entry):
            self._first_names[entry.path] = target
        return self._done(entry, target, [*notes, *problems, *self._owner_note(entry)])

    def _copy(self, stream: BinaryIO, fd: int) -> None:
        offset = 0
        while True:
            self.op.check()
            data = stream.read(COPY_BLOCK)
            if not data:
                return
            write_all(fd, [data], offset)
            offset += len(data)
            self._bytes += len(data)

    def _symlink(self, entry: Entry, target: Path, notes: list[str]) -> RestoreOutcome:
        temp = self._temp(target)
        os.symlink(entry.link_target, temp)
        try:
            problems = restore_attributes(str(temp), entry, owner=self.owner)
            os.replace(temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return self._done(entry, target, [*notes, *problems, *self._owner_note(entry)])

    def _hardlink(self, entry: Entry) -> RestoreOutcome:
        target, note = self._claim(entry)
        first = self._first_names.get(entry.link_target)
        if first is not None:
            temp = self._temp(target)
            try:
                os.link(first, temp, follow_symlinks=False)
            except OSError:
                first = None  # gone meanwhile, or a share without hard links: a copy
            else:
                try:
                    if os.path.lexists(target) and os.path.samestat(os.lstat(target),
                                                                    os.lstat(temp)):
                        temp.unlink()
                    else:
                        os.replace(temp, target)
                except BaseException:
                    temp.unlink(missing_ok=True)
                    raise
                return self._done(entry, target, [note, f"a hard link to {entry.link_target}"])
        return self._file(entry, target, [
            note, f"a file of its own: its first name {entry.link_target} was not restored "
            "with it"])

    def _directory(self, entry: Entry) -> None:
        path = self._place(entry)
        note = ""
        try:
            st: os.stat_result | None = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is None:
            path.mkdir(mode=0o700)  # opened up when its attributes are set, at the end
            self._made.add(path)
        elif path in self._made and stat.S_ISDIR(st.st_mode):
            pass  # made for an entry below it that came first
        elif self.conflict == "skip":
            if stat.S_ISDIR(st.st_mode):  # what is missing in it is still restored
                raise _Skipped("it exists; its attributes are left as they are")
            self._moved[entry.path] = None
            raise _Skipped("something else exists under its name; left as it is, and "
                           "everything below it skipped")
        elif stat.S_ISDIR(st.st_mode):
            # Folders merge, as in a file manager's "keep both": what is missing comes back
            # where it was, and only the files that exist are restored beside themselves.
            note = "merged into the existing directory"
        elif self.conflict == "rename":
            path = self._free_name(path, directory=True)
            path.mkdir(mode=0o700)
            self._made.add(path)
            self._moved[entry.path] = path.relative_to(self.base).as_posix()
            note = (f"restored as {path.name}: something else exists under the name "
                    f"{entry.path.rsplit('/', 1)[-1]}")
        else:
            path.unlink()
            path.mkdir(mode=0o700)
            self._made.add(path)
            note = "replaced what was there"
        self._directories.append((entry, path, note))

    # --- where things go --------------------------------------------------------------------

    def _place(self, entry: Entry) -> Path:
        """The entry's destination (below a folder restored under another name, if so), its
        parent directories made."""
        path = entry.path
        parts = path.split("/")
        for depth in range(len(parts) - 1, 0, -1):
            prefix = "/".join(parts[:depth])
            if prefix in self._moved:
                moved = self._moved[prefix]
                if moved is None:
                    raise _Skipped(f"its folder {prefix} was skipped")
                path = "/".join([moved, *parts[depth:]])
                break
        destination = place_below(self.base, path, self._safe)
        self._make_parents(destination.parent)
        return destination

    def _make_parents(self, directory: Path) -> None:
        missing = []
        probe = directory
        while not os.path.lexists(probe):
            missing.append(probe)
            probe = probe.parent
        for path in reversed(missing):
            path.mkdir()
            self._made.add(path)

    def _claim(self, entry: Entry) -> tuple[Path, str]:
        """Where a file, symlink or hard link goes, given what is there: (path, note)."""
        path = self._place(entry)
        if not os.path.lexists(path):
            return path, ""
        if self.conflict == "skip":
            raise _Skipped("it exists; left as it is")
        if self.conflict == "rename":
            renamed = self._free_name(path, directory=False)
            return renamed, f"restored as {renamed.name}: {path.name} exists"
        if stat.S_ISDIR(os.lstat(path).st_mode):
            raise SbrError("a directory is in the way")
        return path, "replaced what was there"

    @staticmethod
    def _free_name(path: Path, *, directory: bool) -> Path:
        stem, suffix = (path.name, "") if directory else (path.stem, path.suffix)
        for number in itertools.count(1):
            tag = "restored" if number == 1 else f"restored {number}"
            candidate = path.with_name(f"{stem} ({tag}){suffix}")
            if not os.path.lexists(candidate):
                return candidate
        raise AssertionError("unreachable")

    @staticmethod
    def _temp(target: Path) -> Path:
        return target.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex}")

    # --- outcomes ---------------------------------------------------------------------------

    def _owner_note(self, entry: Entry) -> list[str]:
        if self.owner or (entry.uid, entry.gid) == (os.geteuid(), os.getegid()):
            return []
        return [f"owner {entry.uid}:{entry.gid} not restored (not running as root)"]

    def _done(self, entry: Entry, path: Path, notes: list[str]) -> RestoreOutcome:
        try:
            st = os.lstat(path)
            new_id = f"{st.st_dev}:{st.st_ino}"
        except OSError:
            new_id = ""
        return RestoreOutcome(entry.item_id, entry.path, "restored", new_id=new_id,
                              message="; ".join(n for n in notes if n))
