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


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The session's private MariaDB server (see tests/mariadb.py)."""
    from tests.mariadb import PrivateMariaDB
    from tests.services import running

    yield from running(PrivateMariaDB.missing(),
                       lambda: PrivateMariaDB(tmp_path_factory.mktemp("mariadb")),
                       "private mariadbd")


@pytest.fixture(params=["sqlite", "mariadb"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on each engine, as an SBR_DATABASE_URL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sbr.db'}"
    server = request.getfixturevalue("mariadb")
    return server.url(server.new_database())  # type: ignore[attr-defined]


@pytest.fixture
def database(database_url: str) -> Iterator[object]:
    """An open, fully migrated database on each engine, with the models bound to it."""
    from sbr_core.db import close_database, open_database
    from sbr_core.db.migrations import upgrade

    db = open_database(database_url)
    upgrade(db)
    yield db
    close_database(db)
