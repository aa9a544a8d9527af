"""Serving a backed-up disk over NBD, read by real NBD clients: libnbd and QEMU's."""

from __future__ import annotations

import random
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from sbr_core.repository import DiskImageReader, Manifest, Repository
from sbr_core.repository.format import pack_key
from sbr_core.repository.nbdserver import NbdDiskServer
from sbr_core.repository.reader import disk_chunk_ids
from tests.unit.repository.conftest import (  # noqa: F401 - fixtures for these tests
    CHUNK,
    BackupImage,
    CountingImage,
    backup_image,
    destination,
    mixed_image,
    repo,
)

nbd = pytest.importorskip("nbd", reason="libnbd's Python binding (python3-libnbd)")

EXPORT = "0123456789abcdef-secret/vda"
SIZE = 3 * 1024 * 1024 + 9 * 512  # sectors (QEMU rounds to them), not whole chunks


@pytest.fixture
def image() -> CountingImage:
    return CountingImage(mixed_image(SIZE, seed=7))


@pytest.fixture
def manifest(backup_image: BackupImage, image: CountingImage) -> Manifest:  # noqa: F811
    return backup_image(image)


@pytest.fixture
def served(repo: Repository, manifest: Manifest):  # noqa: F811
    disk = manifest.disks[0]
    server = NbdDiskServer({EXPORT: lambda: DiskImageReader(repo, disk)}, {EXPORT: disk.size})
    with server:
        yield server


def connect(server: NbdDiskServer, name: str = EXPORT) -> nbd.NBD:
    handle = nbd.NBD()
    handle.set_export_name(name)
    handle.connect_uri(f"nbd://127.0.0.1:{server.port}/{name}")
    return handle


def test_libnbd_reads_the_disk_as_it_was_backed_up(served: NbdDiskServer,
                                                   image: CountingImage) -> None:
    handle = connect(served)
    assert handle.get_size() == SIZE
    assert handle.is_read_only()
    assert handle.can_multi_conn()
    rng = random.Random(3)
    spans = [(0, 1), (CHUNK - 5, 10), (SIZE - 100, 100), (0, SIZE)]
    spans += [(o, rng.randint(1, 3 * CHUNK)) for o in
              (rng.randrange(0, SIZE - 3 * CHUNK) for _ in range(40))]
    for offset, length in spans:
        assert handle.pread(length, offset) == bytes(image.data[offset:offset + length])
    handle.shutdown()
    assert served.reads == len(spans)
    assert served.bytes_read == sum(length for _, length in spans)


def test_qemu_reads_the_export_byte_for_byte(served: NbdDiskServer, image: CountingImage,
                                             tmp_path: Path) -> None:
    original = tmp_path / "disk.raw"
    original.write_bytes(image.data)
    url = f"nbd://127.0.0.1:{served.port}/{EXPORT}"
    result = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", url,
                             str(original)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "identical" in result.stdout.lower()
    info = subprocess.run(["qemu-img", "info", "--output=json", url], capture_output=True,
                          text=True, timeout=30, check=True)
    assert f'"virtual-size": {SIZE}' in info.stdout


def test_a_wrong_export_name_and_a_listing_get_nothing(served: NbdDiskServer) -> None:
    with pytest.raises(nbd.Error):
        connect(served, "0123456789abcdef-guess/vda")
    listing = subprocess.run(["nbdinfo", "--list", f"nbd://127.0.0.1:{served.port}"],
                             capture_output=True, text=True, timeout=30)
    assert EXPORT not in listing.stdout + listing.stderr
    assert served.reads == 0


def test_writes_are_refused_and_the_connection_stays_usable(served: NbdDiskServer,
                                                            image: CountingImage) -> None:
    """A raw client, since libnbd itself refuses to write to a read-only export: a write
    (with its payload), a trim and an unknown command get errors, and reads go on."""
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=10)
    with sock:
        greeting = _exactly(sock, 18)
        assert greeting[:16] == struct.pack(">QQ", 0x4E42444D41474943, 0x49484156454F5054)
        sock.sendall(struct.pack(">I", 3))  # fixed newstyle, no zeroes
        name = EXPORT.encode()
        sock.sendall(struct.pack(">QII", 0x49484156454F5054, 1, len(name)) + name)
        size, flags = struct.unpack(">QH", _exactly(sock, 10))
        assert size == SIZE and flags & 2  # read-only

        def request(command: int, cookie: int, offset: int, length: int,
                    payload: bytes = b"") -> tuple[int, int]:
            sock.sendall(struct.pack(">IHHQQI", 0x25609513, 0, command, cookie, offset,
                                     length) + payload)
            magic, error, echoed = struct.unpack(">IIQ", _exactly(sock, 16))
            assert magic == 0x67446698 and echoed == cookie
            return error, cookie

        assert request(1, 1, 0, 4096, b"\xff" * 4096)[0] == 1  # WRITE: EPERM
        assert request(4, 2, 0, 4096)[0] == 1  # TRIM: EPERM
        assert request(99, 3, 0, 0)[0] == 22  # unknown: EINVAL
        assert request(0, 4, SIZE - 10, 20)[0] == 22  # past the end: EINVAL
        assert request(0, 5, 100, 50)[0] == 0
        assert _exactly(sock, 50) == bytes(image.data[100:150])
        sock.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 2, 6, 0, 0))  # DISC
        assert sock.recv(1) == b""
    assert served.bytes_read == 50


def test_a_damaged_pack_gives_the_client_eio_and_other_reads_go_on(
        repo: Repository, manifest: Manifest, served: NbdDiskServer,  # noqa: F811
        image: CountingImage, destination) -> None:  # noqa: F811
    from sbr_core.repository.format import ZERO_ID

    disk = manifest.disks[0]
    ids = list(disk_chunk_ids(repo, disk))
    damaged_index = next(i for i, blob in enumerate(ids) if blob != ZERO_ID)
    location = repo.locate(ids[damaged_index])
    pack = Path(destination.config.path) / pack_key(location.pack)
    data = bytearray(pack.read_bytes())
    data[location.offset + location.length // 2] ^= 0xFF
    pack.write_bytes(bytes(data))
    handle = connect(served)
    with pytest.raises(nbd.Error) as failed:
        handle.pread(CHUNK, damaged_index * CHUNK)
    assert failed.value.errno == "EIO"
    assert served.errors == 1 and served.last_error
    # the damage is inside one blob: the pack's other blobs still read (ranged reads)
    good = next(i for i, blob in enumerate(ids) if blob not in (ZERO_ID, ids[damaged_index]))
    assert handle.pread(CHUNK, good * CHUNK) == bytes(image.data[good * CHUNK:(good + 1) * CHUNK])


def test_stop_ends_the_open_connections(repo: Repository, manifest: Manifest) -> None:  # noqa: F811
    disk = manifest.disks[0]
    server = NbdDiskServer({EXPORT: lambda: DiskImageReader(repo, disk)}, {EXPORT: disk.size})
    server.start()
    handle = connect(server)
    assert len(handle.pread(10, 0)) == 10
    server.stop()
    with pytest.raises(nbd.Error):
        handle.pread(10, 0)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()


def test_a_port_in_use_is_named(repo: Repository, manifest: Manifest,  # noqa: F811
                                served: NbdDiskServer) -> None:
    from sbr_core.errors import SbrError

    disk = manifest.disks[0]
    with pytest.raises(SbrError, match=f"cannot listen on 127.0.0.1 port {served.port}"):
        NbdDiskServer({EXPORT: lambda: DiskImageReader(repo, disk)}, {EXPORT: disk.size},
                      port=served.port)


def _exactly(sock: socket.socket, length: int) -> bytes:
    out = b""
    while len(out) < length:
        part = sock.recv(length - len(out))
        assert part, "the server closed the connection"
        out += part
    return out
