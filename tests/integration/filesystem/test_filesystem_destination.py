"""The filesystem destination against real file systems: a local directory, and tmpfs mounts
that fill up, turn read-only or disappear; writers killed mid-write; concurrent writers."""

from __future__ import annotations

import errno
import io
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sbr_core.errors import (
    DestinationError,
    DestinationFull,
    DestinationReadOnly,
    DestinationUnavailable,
    ObjectNotFound,
    UsageError,
)
from sbr_core.providers.destination import check_key
from sbr_plugins.filesystem.destination import TEMP_PREFIX, FilesystemDestination
from tests.destination_contract import DestinationContract

KiB = 1024
MiB = 1024 * KiB

INVALID_KEYS = ["../x", "/abs", "a//b", ".hidden", "", "a/../b", "packs/.x", "a/", "-x",
                "a b", "x/..", "a\\b"]


class ChunkReader:
    """A binary stream over a generator of chunks; ``read`` hands out one chunk at a time,
    so writers see short reads as from a pipe or socket."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks

    def read(self, size: int = -1) -> bytes:
        return next(self._chunks, b"")


def pieces(data: bytes, seed: int = 7) -> Iterator[bytes]:
    """``data`` cut into pieces of irregular size."""
    rng = random.Random(seed)
    position = 0
    while position < len(data):
        step = rng.randint(1, 300 * KiB)
        yield data[position:position + step]
        position += step


def temp_files(root: Path) -> list[Path]:
    return sorted(root.rglob(f"{TEMP_PREFIX}*"))


def keys(destination: FilesystemDestination, prefix: str = "") -> list[str]:
    return sorted(info.key for info in destination.list(prefix))


# --- the object interface on a local directory --------------------------------------------


@pytest.mark.parametrize("stream", ["bytesio", "short-reads"])
def test_put_stream_of_several_mib_round_trips(destination: FilesystemDestination,
                                               stream: str) -> None:
    data = random.Random(1).randbytes(6 * MiB + 7)
    source = io.BytesIO(data) if stream == "bytesio" else ChunkReader(pieces(data))
    destination.put("packs/ab/ab01.pack", source)  # type: ignore[arg-type]
    assert destination.get("packs/ab/ab01.pack") == data
    assert destination.stat("packs/ab/ab01.pack").size == len(data)


def test_get_with_offset_and_length_returns_that_range(
        destination: FilesystemDestination) -> None:
    data = bytes(range(256)) * 64
    destination.put("packs/range", data)
    assert destination.get("packs/range", offset=10, length=20) == data[10:30]
    assert destination.get("packs/range", 1000, 1) == data[1000:1001]
    assert destination.get("packs/range", offset=len(data) - 5) == data[-5:]
    assert destination.get("packs/range", length=3) == data[:3]
    assert destination.get("packs/range", offset=5, length=0) == b""
    assert destination.get("packs/range", offset=len(data) + 100, length=10) == b""


def test_put_overwrites_an_existing_object_completely(destination: FilesystemDestination,
                                                      root: Path) -> None:
    destination.put("index/1", b"L" * 100_000)
    destination.put("index/1", b"short")
    assert destination.get("index/1") == b"short"
    assert destination.stat("index/1").size == 5
    assert keys(destination) == ["index/1"]
    assert temp_files(root) == []


def test_list_yields_nested_keys_and_filters_by_prefix(destination: FilesystemDestination) -> None:
    objects = {"packs/ab/x": b"1", "packs/ab/y": b"22", "packs/ac/z": b"333", "packs/b/w": b"4",
               "packsfoo": b"5", "index/1": b"6", "config": b"7"}
    for key, data in objects.items():
        destination.put(key, data)

    assert keys(destination) == sorted(objects)
    assert keys(destination, "packs/") == ["packs/ab/x", "packs/ab/y", "packs/ac/z", "packs/b/w"]
    assert keys(destination, "packs/a") == ["packs/ab/x", "packs/ab/y", "packs/ac/z"]
    assert keys(destination, "packs/ab/") == ["packs/ab/x", "packs/ab/y"]
    assert keys(destination, "packs") == [*keys(destination, "packs/"), "packsfoo"]
    assert keys(destination, "packs/ab/x") == ["packs/ab/x"]
    assert keys(destination, "p") == keys(destination, "packs")
    assert keys(destination, "nothing/") == []
    assert keys(destination, "config/") == []  # an object is not a directory
    sizes = {info.key: info.size for info in destination.list()}
    assert sizes == {key: len(data) for key, data in objects.items()}


def test_list_skips_temp_files_and_names_that_are_not_keys(destination: FilesystemDestination,
                                                           root: Path) -> None:
    destination.put("packs/ab/x", b"x")
    (root / "packs" / "ab" / f"{TEMP_PREFIX}0123abcd").write_bytes(b"half a write")
    (root / "lost+found").mkdir()
    (root / "lost+found" / "#1234").write_bytes(b"fsck found this")
    (root / "notes.txt~").write_bytes(b"an editor's backup")
    (root / ".snapshot").mkdir()
    (root / ".snapshot" / "config").write_bytes(b"a NAS snapshot")

    listed = keys(destination)
    assert listed == ["packs/ab/x"]
    for key in listed:
        check_key(key)


@pytest.mark.parametrize("key", ["missing", "packs/ab/missing", "packs", "config/below"])
def test_get_and_stat_of_a_missing_key_raise_object_not_found(
        destination: FilesystemDestination, key: str) -> None:
    destination.put("packs/ab/x", b"x")  # so "packs" is a directory, not an object
    destination.put("config", b"c")
    with pytest.raises(ObjectNotFound, match=f"'nas1'.*{key!r}"):
        destination.get(key)
    with pytest.raises(ObjectNotFound, match=f"'nas1'.*{key!r}"):
        destination.stat(key)


@pytest.mark.parametrize("key", INVALID_KEYS)
def test_invalid_keys_write_nothing_inside_or_outside_the_root(
        destination: FilesystemDestination, root: Path, key: str) -> None:
    with pytest.raises(UsageError):
        destination.put(key, b"escape")
    assert list(root.iterdir()) == []
    assert sorted(p.name for p in root.parent.iterdir()) == ["backups"]


def test_a_failing_source_stream_stores_nothing_and_is_not_blamed_on_the_destination(
        destination: FilesystemDestination, root: Path) -> None:
    destination.put("packs/ab/x", b"old")

    def failing() -> Iterator[bytes]:
        yield b"N" * MiB
        raise OSError(errno.EIO, "read error on the disk being backed up")

    with pytest.raises(OSError, match="disk being backed up") as caught:
        destination.put("packs/ab/x", ChunkReader(failing()))  # type: ignore[arg-type]
    assert not isinstance(caught.value, DestinationError)
    assert destination.get("packs/ab/x") == b"old"
    assert temp_files(root) == []


# --- the configured path ------------------------------------------------------------------


def _every_operation(destination: FilesystemDestination) -> list[Callable[[], object]]:
    return [lambda: destination.put("config", b"c"), lambda: destination.get("config"),
            lambda: list(destination.list()), lambda: destination.delete("config"),
            lambda: destination.stat("config"), destination.test_connection]


def test_missing_path_raises_destination_unavailable_naming_destination_and_path(
        tmp_path: Path, make_destination: Callable[..., FilesystemDestination]) -> None:
    path = tmp_path / "share-not-mounted"
    destination = make_destination(path)
    for operation in _every_operation(destination):
        with pytest.raises(DestinationUnavailable) as caught:
            operation()
        assert "'nas1'" in str(caught.value)
        assert str(path) in str(caught.value)
    assert not path.exists()


def test_a_file_instead_of_a_directory_raises_destination_unavailable(
        tmp_path: Path, make_destination: Callable[..., FilesystemDestination]) -> None:
    path = tmp_path / "a-file"
    path.write_bytes(b"not a directory")
    destination = make_destination(path)
    for operation in _every_operation(destination):
        with pytest.raises(DestinationUnavailable, match=f"'nas1'.*{path}.*not a directory"):
            operation()
    assert path.read_bytes() == b"not a directory"


def test_require_mount_on_a_plain_directory_raises_and_writes_nothing(
        root: Path, make_destination: Callable[..., FilesystemDestination]) -> None:
    destination = make_destination(root, require_mount=True)
    for operation in _every_operation(destination):
        with pytest.raises(DestinationUnavailable, match=f"'nas1'.*{root}.*not a mount point"):
            operation()
    assert list(root.iterdir()) == []


@pytest.mark.root
def test_require_mount_on_a_mount_point_works(
        mount_tmpfs: Callable[..., Path],
        make_destination: Callable[..., FilesystemDestination]) -> None:
    point = mount_tmpfs(size="4m")
    destination = make_destination(point, require_mount=True)
    destination.put("packs/ab/x", b"on the share")
    assert destination.get("packs/ab/x") == b"on the share"
    assert keys(destination) == ["packs/ab/x"]
    destination.test_connection()


@pytest.mark.root
def test_require_mount_refuses_writes_once_the_share_is_unmounted(
        mount_tmpfs: Callable[..., Path],
        make_destination: Callable[..., FilesystemDestination]) -> None:
    point = mount_tmpfs(size="4m")
    destination = make_destination(point, require_mount=True)
    destination.put("config", b"c")
    subprocess.run(["umount", str(point)], check=True)

    with pytest.raises(DestinationUnavailable, match="not a mount point"):
        destination.put("packs/ab/x", b"would land on the local disk")
    assert list(point.iterdir()) == []


# --- a full disk ----------------------------------------------------------------------------


@pytest.mark.root
@pytest.mark.parametrize("source", ["bytes", "stream"])
def test_full_disk_raises_destination_full_and_leaves_no_temp_file(
        mount_tmpfs: Callable[..., Path],
        make_destination: Callable[..., FilesystemDestination], source: str) -> None:
    point = mount_tmpfs(size="1m")
    destination = make_destination(point)
    small, medium = b"a" * (256 * KiB), b"b" * (512 * KiB)
    destination.put("packs/aa/small", small)
    destination.put("packs/bb/medium", medium)
    free = os.statvfs(point).f_bfree

    big = b"c" * (2 * MiB)
    for key in ["packs/cc/big", "packs/aa/small"]:  # a new key, and over an existing one
        data = big if source == "bytes" else io.BytesIO(big)
        with pytest.raises(DestinationFull, match=f"'nas1'.*{key!r}.*no space left on {point}"):
            destination.put(key, data)  # type: ignore[arg-type]
        assert temp_files(point) == []
        assert os.statvfs(point).f_bfree == free

    assert destination.get("packs/aa/small") == small
    assert destination.get("packs/bb/medium") == medium
    assert keys(destination) == ["packs/aa/small", "packs/bb/medium"]
    with pytest.raises(ObjectNotFound):
        destination.get("packs/cc/big")

    fits_after_delete = b"d" * (384 * KiB)
    with pytest.raises(DestinationFull):
        destination.put("packs/dd/next", fits_after_delete)
    destination.delete("packs/bb/medium")
    destination.put("packs/dd/next", fits_after_delete)
    assert destination.get("packs/dd/next") == fits_after_delete
    assert destination.get("packs/aa/small") == small
    assert temp_files(point) == []


# --- a read-only share ----------------------------------------------------------------------


@pytest.mark.root
def test_read_only_mount_raises_destination_read_only_and_reads_still_work(
        mount_tmpfs: Callable[..., Path], remount: Callable[[Path, str], None],
        make_destination: Callable[..., FilesystemDestination]) -> None:
    point = mount_tmpfs(size="4m")
    destination = make_destination(point)
    destination.put("packs/ab/x", b"stored before")
    remount(point, "ro")

    writes: list[Callable[[], object]] = [
        lambda: destination.put("packs/ab/new", b"n"),
        lambda: destination.put("packs/ab/x", b"overwrite"),
        lambda: destination.put("fresh/dir/key", b"n"),
        lambda: destination.delete("packs/ab/x"),
    ]
    for write in writes:
        with pytest.raises(DestinationReadOnly, match=f"'nas1'.*{point} is read-only"):
            write()

    assert destination.get("packs/ab/x") == b"stored before"
    assert destination.get("packs/ab/x", offset=7) == b"before"
    assert destination.stat("packs/ab/x").size == len(b"stored before")
    assert keys(destination) == ["packs/ab/x"]


# --- test connection ------------------------------------------------------------------------


def test_test_connection_on_a_good_directory_passes_and_leaves_nothing(
        destination: FilesystemDestination, root: Path) -> None:
    assert FilesystemDestination.can_test_connection()
    destination.test_connection()
    assert list(root.iterdir()) == []


@pytest.mark.root
def test_test_connection_on_a_read_only_mount_raises(
        mount_tmpfs: Callable[..., Path], remount: Callable[[Path, str], None],
        make_destination: Callable[..., FilesystemDestination]) -> None:
    point = mount_tmpfs(size="1m")
    remount(point, "ro")
    with pytest.raises(DestinationReadOnly, match=f"'nas1'.*{point} is read-only"):
        make_destination(point).test_connection()


@pytest.mark.root
def test_test_connection_on_a_full_disk_raises_destination_full(
        mount_tmpfs: Callable[..., Path],
        make_destination: Callable[..., FilesystemDestination]) -> None:
    point = mount_tmpfs(size="64k")
    (point / "filler").write_bytes(b"f" * (64 * KiB))  # every page of the file system
    with pytest.raises(DestinationFull, match="'nas1'"):
        make_destination(point).test_connection()
    assert temp_files(point) == []


# --- a writer killed mid-write --------------------------------------------------------------

SLOW_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from sbr_core.providers.base import ProviderContext
    from sbr_plugins.filesystem.destination import FilesystemConfig, FilesystemDestination

    class ChunkReader:
        def __init__(self, chunks):
            self._chunks = chunks
        def read(self, size=-1):
            return next(self._chunks, b"")

    def slow_chunks():
        for _ in range(1024):  # 64 MiB over 10 s or more: the test kills it long before
            yield b"N" * 65536
            time.sleep(0.01)

    root, key = sys.argv[1], sys.argv[2]
    destination = FilesystemDestination(FilesystemConfig(path=Path(root)),
                                        context=ProviderContext(name="nas1"))
    destination.put(key, ChunkReader(slow_chunks()))
    print("finished", flush=True)
""")


def _wait_for_temp_file(root: Path, process: subprocess.Popen[bytes], at_least: int) -> Path:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, "the writer ended before it could be killed"
        for temp in temp_files(root):
            try:
                if temp.stat().st_size >= at_least:
                    return temp
            except FileNotFoundError:
                pass
        time.sleep(0.02)
    raise AssertionError("the writer never started writing its temp file")


@pytest.mark.parametrize("existing", [True, False], ids=["over-existing-key", "new-key"])
def test_sigkill_mid_write_leaves_the_old_object_whole_and_no_visible_temp_file(
        destination: FilesystemDestination, root: Path, existing: bool) -> None:
    old = random.Random(2).randbytes(3 * MiB + 11)
    if existing:
        destination.put("packs/ab/ab01.pack", old)
    destination.put("config", b"untouched")

    process = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(root), "packs/ab/ab01.pack"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        temp = _wait_for_temp_file(root, process, at_least=MiB)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        out, err = process.communicate()
    assert process.returncode == -signal.SIGKILL, err.decode()
    assert b"finished" not in out
    assert temp.exists()  # the kill really hit mid-write: the half-written temp file remains

    if existing:
        assert destination.get("packs/ab/ab01.pack") == old
        assert destination.stat("packs/ab/ab01.pack").size == len(old)
    else:
        with pytest.raises(ObjectNotFound):
            destination.get("packs/ab/ab01.pack")
    expected = ["config", "packs/ab/ab01.pack"] if existing else ["config"]
    assert keys(destination) == expected
    assert keys(destination, "packs/") == expected[1:]

    destination.put("packs/ab/ab01.pack", b"written after the crash")
    assert destination.get("packs/ab/ab01.pack") == b"written after the crash"
    assert destination.get("config") == b"untouched"
    assert keys(destination) == ["config", "packs/ab/ab01.pack"]


# --- concurrent writers ---------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from sbr_core.providers.base import ProviderContext
    from sbr_plugins.filesystem.destination import FilesystemConfig, FilesystemDestination

    root, writer, size, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    destination = FilesystemDestination(FilesystemConfig(path=Path(root)),
                                        context=ProviderContext(name="nas1"))
    body = bytes([writer]) * size
    for _ in range(rounds):
        destination.put("shared", body)
        destination.put(f"own/w{writer}/object", body)
""")

THREAD_WRITERS = (1, 2, 3)
PROCESS_WRITERS = (4, 5, 6, 7)
ROUNDS = 15


def version(writer: int) -> bytes:
    """What one writer stores: its own byte, in a length that no other writer uses."""
    return bytes([writer]) * (128 * KiB + writer * 4099)


def _check_whole(data: bytes) -> int:
    assert data, "read an empty object"
    writer = data[0]
    assert data == version(writer), f"a torn read: {len(data)} bytes starting with {writer}"
    return writer


def test_concurrent_writers_leave_every_read_with_one_complete_version(
        destination: FilesystemDestination, root: Path) -> None:
    destination.put("shared", version(0))
    done = threading.Event()
    seen: set[int] = set()
    sizes = {len(version(w)) for w in (0, *THREAD_WRITERS, *PROCESS_WRITERS)}

    def read_until_done() -> int:
        reads = 0
        while not done.is_set():
            seen.add(_check_whole(destination.get("shared")))
            assert destination.get("shared", offset=17, length=5) in {
                bytes([w]) * 5 for w in (0, *THREAD_WRITERS, *PROCESS_WRITERS)}
            for info in destination.list():
                assert not info.key.split("/")[-1].startswith(TEMP_PREFIX)
                if info.key == "shared":
                    assert info.size in sizes
            reads += 1
        return reads

    def write(writer: int) -> None:
        for _ in range(ROUNDS):
            destination.put("shared", version(writer))
            destination.put(f"own/w{writer}/object", version(writer))

    processes = []
    with ThreadPoolExecutor(max_workers=len(THREAD_WRITERS) + 2) as pool:
        readers = [pool.submit(read_until_done) for _ in range(2)]
        try:
            processes = [subprocess.Popen(
                [sys.executable, "-c", WRITER, str(root), str(w), str(len(version(w))),
                 str(ROUNDS)], stderr=subprocess.PIPE) for w in PROCESS_WRITERS]
            writers = [pool.submit(write, w) for w in THREAD_WRITERS]
            for future in writers:
                future.result(timeout=300)
            for process in processes:
                _, err = process.communicate(timeout=300)
                assert process.returncode == 0, err.decode()
        finally:
            done.set()
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.communicate()
        reads = sum(future.result() for future in readers)

    assert reads > 0
    assert len(seen) >= 2, "the readers never saw the object change"
    assert _check_whole(destination.get("shared")) in (*THREAD_WRITERS, *PROCESS_WRITERS)
    for writer in (*THREAD_WRITERS, *PROCESS_WRITERS):
        assert destination.get(f"own/w{writer}/object") == version(writer)
    assert keys(destination) == sorted(
        ["shared", *(f"own/w{w}/object" for w in (*THREAD_WRITERS, *PROCESS_WRITERS))])
    assert temp_files(root) == []


# --- atomic create and streaming reads ---------------------------------------------------------


def test_put_if_absent_lets_exactly_one_of_many_racing_writers_win(
        destination: FilesystemDestination) -> None:
    from sbr_core.errors import ObjectExists

    def attempt(n: int) -> bool:
        try:
            destination.put("locks/exclusive", f"writer-{n}".encode(), if_absent=True)
        except ObjectExists:
            return False
        return True

    with ThreadPoolExecutor(max_workers=8) as pool:
        wins = list(pool.map(attempt, range(32)))
    assert wins.count(True) == 1
    winner = wins.index(True)
    assert destination.get("locks/exclusive") == f"writer-{winner}".encode()


class TestFilesystemDestinationContract(DestinationContract):
    """The behaviour every destination owes the repository, on a local directory."""
