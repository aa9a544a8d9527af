"""The ``api_server`` fixture: a real ``sbr server`` for the admin REST API and CLI tests
(:mod:`tests.api_server` says what it gives)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api_server import ApiServer, serving


@pytest.fixture
def api_server(tmp_path: Path, database: Any, database_url: str) -> Iterator[ApiServer]:
    """A real ``sbr server`` over the test's database, with admin/operator/viewer users."""
    with serving(tmp_path, database, database_url) as server:
        yield server
