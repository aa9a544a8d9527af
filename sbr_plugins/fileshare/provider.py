"""The file-share provider: inventory, export as a walk of the tree, restore."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from sbr_core.errors import ProviderError, UsageError
from sbr_core.models import Entry, ExportRequest, Instance, InstanceState
from sbr_core.operation import Operation
from sbr_core.providers.base import ProviderContext
from sbr_core.providers.items import ItemRestoreRequest, RestoreOutcome, StorageProvider
from sbr_core.repository.sources import SHARE_LOST, walk_directory
from sbr_plugins.fileshare.config import Excludes, FileShareConfig

#: Errors after which trying again later may help: the share's server is away.
_TRANSIENT = SHARE_LOST | {errno.ETIMEDOUT}


class FileShareProvider(StorageProvider):
    """A directory tree on the node, as one instance or one per top-level directory."""

    name = "fileshare"
    label = "File share"
    description = ("A directory tree on the node: a local path, or an NFS/CIFS share mounted "
                   "there.")
    Config = FileShareConfig

    config: FileShareConfig

    def __init__(self, config: Any, *, context: ProviderContext) -> None:
        super().__init__(config, context=context)
        self.excludes = Excludes(self.config.exclude)

    @property
    def where(self) -> str:
        """How messages name this connection."""
        return f"storage {self.context.name!r}"

    # --- the configured path ----------------------------------------------------------------

    def _fail(self, exc: OSError, doing: str) -> NoReturn:
        raise ProviderError(f"{self.where}: {doing}: {exc.strerror or exc}",
                            retryable=exc.errno in _TRANSIENT) from exc

    def root(self) -> Path:
        """The configured path, checked to be a directory (and a mount point if required)."""
        path = self.config.path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise ProviderError(f"{self.where}: {path} does not exist (is the share "
                                "mounted?)") from None
        except OSError as exc:
            self._fail(exc, f"cannot reach {path}")
        if not stat.S_ISDIR(st.st_mode):
            raise ProviderError(f"{self.where}: {path} is not a directory")
        if self.config.require_mount and not os.path.ismount(path):
            raise ProviderError(f"{self.where}: {path} is not a mount point (the share is not "
                                "mounted, and 'Must be a mount point' is set)")
        return path

    def test_connection(self) -> None:
        """The path is there (mounted, if required) and can be listed."""
        root = self.root()
        try:
            os.listdir(root)
        except OSError as exc:
            self._fail(exc, f"cannot list {root}")

    def instance_root(self, instance: Instance) -> Path:
        """The directory of one of this connection's instances; refuses any other path."""
        root = self.root()
        path = Path(instance.external_id)
        if self.config.instances == "path":
            ours = path == root
        else:
            ours = path.parent == root and path.name not in ("", ".", "..")
        if not ours:
            raise ProviderError(f"{self.where}: instance {instance.name!r} ({path}) is not one "
                                f"of this connection's (path {root}, instances: "
                                f"{self.config.instances})")
        if not path.is_dir() or path.is_symlink():
            raise ProviderError(f"{self.where}: instance {instance.name!r}: {path} is not a "
                                "directory any more")
        return path

    # --- inventory --------------------------------------------------------------------------

    def inventory(self) -> list[Instance]:
        """The path itself, or each directory directly below it (not symlinks, not excluded),
        by name. The external id is the directory's absolute path."""
        root = self.root()
        if self.config.instances == "path":
            return [self._instance(root, root.name or str(root))]
        try:
            names = sorted(os.listdir(root))
        except OSError as exc:
            self._fail(exc, f"cannot list {root}")
        instances = []
        for name in names:
            path = root / name
            if path.is_dir() and not path.is_symlink() and not self.excludes(name, True):
                instances.append(self._instance(path, name))
        return instances

    def _instance(self, path: Path, name: str) -> Instance:
        return Instance(external_id=str(path), name=name, kind="share",
                        state=InstanceState.AVAILABLE, location=str(self.config.path),
                        attributes={"path": str(path)})

    # --- export -----------------------------------------------------------------------------

    @contextmanager
    def export(self, request: ExportRequest) -> Iterator[FileShareExport]:
        """A complete listing of the instance's tree; the repository reads only the files
        whose size, modification time or inode changed since the previous backup."""
        root = self.instance_root(request.instance)
        previous = request.previous.platform_state if request.previous else {}
        yield FileShareExport(self, root, request.op, previous)

    # --- restore ----------------------------------------------------------------------------

    def restore(self, request: ItemRestoreRequest) -> Iterator[RestoreOutcome]:
        """Entries back to the target instance (below ``destination_path``, relative to it,
        or an absolute directory on the node); one outcome per entry."""
        from sbr_plugins.fileshare.restore import ShareRestore

        destination = request.destination_path
        if destination and os.path.isabs(destination):
            base = Path(destination)
        else:
            root = self.instance_root(request.target)
            parts = [p for p in destination.split("/") if p not in ("", ".")]
            if ".." in parts:
                raise UsageError(f"{self.where}: destination path {destination!r} must stay "
                                 "inside the instance")
            base = root.joinpath(*parts)
        return ShareRestore(base, request, where=self.where).run()


class FileShareExport:
    """One export in progress: the walk of one instance's tree."""

    full = True

    def __init__(self, provider: FileShareProvider, root: Path, op: Operation,
                 previous: Mapping[str, Any]) -> None:
        self.provider = provider
        self.root = root
        self.op = op
        self.device = os.stat(root).st_dev
        #: (path, reason) of everything left out while walking (files that cannot be read
        #: are reported by the repository, which calls their ``open``).
        self.skipped: list[tuple[str, str]] = []
        self.reason = ("a file share is listed whole at every backup; files whose size, "
                       "modification time and inode are unchanged are not read again")
        if previous.get("device") not in (None, self.device):
            self.reason += ("; the share's device number changed since the last backup "
                            "(remounted?), so every file is read again once")

    def entries(self) -> Iterator[Entry]:
        """Every entry below the instance's root, in path order."""
        try:
            yield from walk_directory(self.root, on_skip=self._skipped,
                                      exclude=self.provider.excludes or None)
        except UsageError as exc:
            cause = exc.__cause__
            transient = isinstance(cause, OSError) and cause.errno in _TRANSIENT
            raise ProviderError(f"{self.provider.where}: {exc}", retryable=transient) from exc

    def _skipped(self, path: str, reason: str) -> None:
        self.skipped.append((path, reason))
        self.op.logger.warning("%s: skipped %s: %s", self.provider.where, path, reason)

    def removed(self) -> Iterator[str]:
        """Nothing: a complete listing says what is gone by leaving it out."""
        return iter(())

    @property
    def platform_state(self) -> Mapping[str, Any]:
        """The share's path and device number, to notice a remount next time."""
        return {"path": str(self.root), "device": self.device}
