"""The backup repository: deduplicated, compressed, optionally encrypted storage of backups
on any destination. docs/repository-format.md describes the format; this package is its one
implementation. Names load on first use, so a command pays only for the parts it runs.
(``verify`` is not here: the submodule of that name would shadow it; import it from
:mod:`sbr_core.repository.verify`.)"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sbr_core.repository.gc import GcReport, collect_garbage, forget
    from sbr_core.repository.manifest import DiskRecord, Manifest
    from sbr_core.repository.reader import (
        BackedUpDisk,
        DiskImageReader,
        open_item,
        restore_disk,
        restore_tree,
    )
    from sbr_core.repository.repo import Repository, init_repository, open_repository
    from sbr_core.repository.verify import VerifyReport
    from sbr_core.repository.writer import BackupWriter

_WHERE = {
    "GcReport": "gc", "collect_garbage": "gc", "forget": "gc",
    "DiskRecord": "manifest", "Manifest": "manifest",
    "BackedUpDisk": "reader", "DiskImageReader": "reader", "open_item": "reader",
    "restore_disk": "reader",
    "restore_tree": "reader",
    "Repository": "repo", "init_repository": "repo", "open_repository": "repo",
    "VerifyReport": "verify",
    "BackupWriter": "writer",
}

__all__ = [
    "BackedUpDisk", "BackupWriter", "DiskImageReader", "DiskRecord", "GcReport", "Manifest",
    "Repository",
    "VerifyReport", "collect_garbage", "forget", "init_repository", "open_item",
    "open_repository", "restore_disk", "restore_tree",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'sbr_core.repository' has no attribute {name!r}")
    return getattr(importlib.import_module(f"sbr_core.repository.{module}"), name)
