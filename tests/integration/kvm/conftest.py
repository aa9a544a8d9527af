"""Fixtures for the KVM/libvirt plugin: one private libvirtd per session (tests/libvirtd.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.libvirtd import PrivateLibvirtd
from tests.services import service_unavailable


@pytest.fixture(scope="session")
def libvirtd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateLibvirtd]:
    """The session's private libvirtd (TCG domains only); skip/fail when it cannot run."""
    reason = PrivateLibvirtd.missing()
    if reason:
        service_unavailable(reason)
    daemon = PrivateLibvirtd(tmp_path_factory.mktemp("libvirtd"))
    try:
        daemon.start()
    except Exception as exc:
        daemon.stop()
        service_unavailable(f"private libvirtd did not start: {exc}")
    try:
        yield daemon
    finally:
        daemon.stop()
