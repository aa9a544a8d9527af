"""The backup repository: deduplicated, compressed, optionally encrypted storage of backups
on any destination. docs/repository-format.md describes the format; this package is its one
implementation."""

from sbr_core.repository.gc import GcReport, collect_garbage, forget
from sbr_core.repository.manifest import DiskRecord, Manifest
from sbr_core.repository.reader import DiskImageReader, open_item, restore_disk, restore_tree
from sbr_core.repository.repo import Repository, init_repository, open_repository
from sbr_core.repository.verify import VerifyReport, verify
from sbr_core.repository.writer import BackupWriter

__all__ = [
    "BackupWriter", "DiskImageReader", "DiskRecord", "GcReport", "Manifest", "Repository",
    "VerifyReport", "collect_garbage", "forget", "init_repository", "open_item",
    "open_repository", "restore_disk", "restore_tree", "verify",
]
