"""How tests react when a real service cannot be had.

Locally a missing service skips the test; with ``SBR_REQUIRE_SERVICES=1`` (CI sets it) it
fails, so CI can never pass by skipping the real-service tests.
"""

from __future__ import annotations

import os

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
