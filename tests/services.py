"""How tests react when a real service cannot be had.

Locally a missing service skips the test; with ``SBR_REQUIRE_SERVICES=1`` (CI sets it) it
fails, so CI can never pass by skipping the real-service tests.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar

import pytest

REQUIRE_SERVICES = os.environ.get("SBR_REQUIRE_SERVICES", "") not in ("", "0")


def service_unavailable(reason: str) -> None:
    """Skip (locally) or fail (CI) a test whose real service cannot be had."""
    if REQUIRE_SERVICES:
        pytest.fail(f"service unavailable (and SBR_REQUIRE_SERVICES is set): {reason}",
                    pytrace=False)
    pytest.skip(f"service unavailable: {reason}")


def require_root() -> None:
    """Tests that mount file systems need root."""
    if os.geteuid() != 0:
        service_unavailable("needs root to mount test file systems")


class PrivateService(Protocol):
    """A service a test set-up runs itself (tests/mariadb.py, s3server.py, libvirtd.py)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


S = TypeVar("S", bound=PrivateService)


def running(missing: str, make: Callable[[], S], what: str) -> Iterator[S]:
    """Body of a fixture: the service ``make`` builds, started, and stopped afterwards;
    unavailable (skip, or fail in CI) when ``missing`` names a reason or it does not start."""
    if missing:
        service_unavailable(missing)
    service = make()
    try:
        service.start()
    except Exception as exc:
        service.stop()
        service_unavailable(f"{what} did not start: {exc}")
    try:
        yield service
    finally:
        service.stop()
