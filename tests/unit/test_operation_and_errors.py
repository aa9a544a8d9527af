"""Operations report progress and stop at safe points; provider errors say if a retry helps."""

from __future__ import annotations

import pytest

from sbr_core.errors import ItemUnavailable, ProviderError, TaskCancelled
from sbr_core.operation import Operation


def test_progress_goes_to_the_reporter() -> None:
    seen: list[tuple[int, int, str]] = []
    op = Operation(task_id=7, report=lambda done, total, msg: seen.append((done, total, msg)))
    op.progress(10, 100, "disk vda")
    op.progress(100, 100)
    assert seen == [(10, 100, "disk vda"), (100, 100, "")]


def test_check_raises_only_once_cancelled() -> None:
    flag = {"cancel": False}
    op = Operation(task_id=3, is_cancelled=lambda: flag["cancel"])
    op.check()
    assert not op.cancelled()
    flag["cancel"] = True
    assert op.cancelled()
    with pytest.raises(TaskCancelled, match="task 3 was cancelled"):
        op.check()


def test_a_detached_operation_never_cancels_and_ignores_progress() -> None:
    op = Operation()
    op.progress(1, 2)
    op.check()


def test_provider_errors_carry_whether_and_when_to_retry() -> None:
    throttled = ProviderError("m365 'tenant': throttled", retryable=True, retry_after=30.0)
    assert throttled.retryable and throttled.retry_after == 30.0
    plain = ProviderError("kvm 'host1': domain 'web' has an rbd disk, which is not supported")
    assert not plain.retryable and plain.retry_after is None
    skipped = ItemUnavailable("mailbox 'ann': message was deleted during the export")
    assert isinstance(skipped, ProviderError)
