"""Shared fixtures. How a missing service skips or fails: tests/services.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


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
