"""The KVM plugin's NBD reader against a real qemu-nbd: several connections read one export
at once, a server that takes fewer is read with those, and the node bounds the readers."""

from __future__ import annotations

import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sbr_core.errors import ProviderError
from sbr_core.repository.pipeline import limited
from sbr_plugins.kvm.qemunbd import QemuNbd
from tests.integration.kvm.conftest import MiB, new_disk, qemu_img
from tests.services import service_unavailable

BLOCK = 256 * 1024


@pytest.fixture
def nbd_disk_class() -> type:
    try:
        import nbd  # noqa: F401
    except ImportError:
        service_unavailable("libnbd's Python binding (python3-libnbd) is not installed")
    if shutil.which("qemu-nbd") is None:
        service_unavailable("qemu-nbd (qemu-utils) is not installed")
    from sbr_plugins.kvm.nbd import NbdDisk
    return NbdDisk


def serve(image: Path, tmp_path: Path, shared: int) -> QemuNbd:
    server = QemuNbd(image, tmp_path / f"shared{shared}.sock", fmt="qcow2", export="vda",
                     label="test image",
                     options=("--read-only", "--persistent", f"--shared={shared}"))
    server.start()
    return server


@pytest.fixture
def image(tmp_path: Path) -> tuple[Path, bytes]:
    """A 4 MiB qcow2 image with a different pattern in every 256 KiB, and its bytes."""
    writes = [f"write -P {0x10 + i} {i * BLOCK} {BLOCK}" for i in range(16)]
    disk = new_disk(tmp_path / "vda.qcow2", "4M", *writes)
    raw = tmp_path / "vda.raw"
    qemu_img("convert", "-f", "qcow2", "-O", "raw", str(disk), str(raw))
    return disk, raw.read_bytes()


def read_all_at_once(disk: object, size: int) -> bytes:
    """Every block read by its own thread, in reverse order, put back together."""
    offsets = list(range(0, size, BLOCK))[::-1]
    with ThreadPoolExecutor(len(offsets)) as pool:
        parts = dict(zip(offsets, pool.map(lambda o: disk.read(o, BLOCK), offsets),  # type: ignore[attr-defined]
                         strict=True))
    return b"".join(parts[o] for o in sorted(parts))


def test_several_connections_read_one_export_at_once(
        nbd_disk_class: type, image: tuple[Path, bytes], tmp_path: Path) -> None:
    path, expected = image
    server = serve(path, tmp_path, shared=4)
    try:
        with nbd_disk_class(("unix", str(server.socket)), "vda", connections=3,
                            label="t/vda") as disk:
            assert disk.max_parallel_reads == 3
            assert disk.size == 4 * MiB
            assert read_all_at_once(disk, disk.size) == expected
            assert [e.zero for e in disk.extents()] == [False]
        with pytest.raises(ProviderError, match="t/vda: its NBD export is closed"):
            disk.read(0, BLOCK)
    finally:
        server.stop()


def test_a_server_taking_fewer_connections_is_read_with_those(
        nbd_disk_class: type, image: tuple[Path, bytes], tmp_path: Path) -> None:
    path, expected = image
    server = serve(path, tmp_path, shared=1)
    try:
        with nbd_disk_class(("unix", str(server.socket)), "vda", connections=3) as disk:
            assert disk.max_parallel_reads == 1
            assert read_all_at_once(disk, disk.size) == expected
    finally:
        server.stop()


def test_the_node_never_runs_more_reads_than_the_reader_takes() -> None:
    running = peak = 0
    lock = threading.Lock()

    def slow_read(offset: int, length: int) -> bytes:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.02)
        with lock:
            running -= 1
        return bytes(length)

    read = limited(slow_read, 2)
    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(lambda i: len(read(i, 10)), range(12))) == [10] * 12
    assert peak == 2
