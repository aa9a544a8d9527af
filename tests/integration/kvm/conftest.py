"""Fixtures for the KVM/libvirt plugin: one private libvirtd per session (tests/libvirtd.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.libvirtd import PrivateLibvirtd
from tests.services import running


@pytest.fixture(scope="session")
def libvirtd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateLibvirtd]:
    """The session's private libvirtd (TCG domains only); skip/fail when it cannot run."""
    yield from running(PrivateLibvirtd.missing(),
                       lambda: PrivateLibvirtd(tmp_path_factory.mktemp("libvirtd")),
                       "private libvirtd")
