"""Shared test set-up.

Tests that need a real service (MariaDB, root for mounts, libvirtd, …) call
:func:`service_unavailable` when it cannot be had. Locally that skips; with
``SBR_REQUIRE_SERVICES=1`` (CI sets it) it fails, so CI can never pass by skipping.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

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


@pytest.fixture
def sbr_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A private data directory and SQLite database for CLI/server tests in this process,
    returned as the environment a subprocess should get too."""
    data = tmp_path / "sbr-data"
    env = {"SBR_DATA_DIR": str(data), "SBR_DATABASE_URL": f"sqlite:///{data}/sbr.db"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SBR_DISABLE_PLUGINS", raising=False)
    from sbr_core.cli import context

    context.runtime.cache_clear()
    context.plugin_host.cache_clear()
    yield {**os.environ, **env}
    context.runtime.cache_clear()
    context.plugin_host.cache_clear()
