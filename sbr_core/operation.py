"""What a long provider call gets besides its request: progress, cancellation, log, scratch.

The task engine hands every long call (export, import, restore, snapshot) an
:class:`Operation`. Plugins report progress with :meth:`Operation.progress` and call
:meth:`Operation.check` at safe points (between extents, items, files) so that a cancel from
the UI stops the work cleanly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import attrs

from sbr_core.errors import TaskCancelled


def _no_progress(done: int, total: int, message: str) -> None:
    """Progress goes nowhere when nobody watches (CLI tools, tests)."""


def _never_cancelled() -> bool:
    return False


@attrs.frozen
class Operation:
    """One running task as a provider sees it."""

    task_id: int = 0
    logger: logging.Logger = attrs.field(factory=lambda: logging.getLogger("sbr.task"))
    staging_dir: Path | None = None
    report: Callable[[int, int, str], None] = attrs.field(default=_no_progress, repr=False)
    is_cancelled: Callable[[], bool] = attrs.field(default=_never_cancelled, repr=False)

    def progress(self, done: int, total: int, message: str = "") -> None:
        """Report work done out of ``total`` (bytes or items; 0 when unknown)."""
        self.report(done, total, message)

    def cancelled(self) -> bool:
        """Whether a cancel was asked for."""
        return self.is_cancelled()

    def check(self) -> None:
        """Raise TaskCancelled if a cancel was asked for; call it at safe points."""
        if self.is_cancelled():
            raise TaskCancelled(f"task {self.task_id} was cancelled")
