"""Restored disks written with O_DIRECT: the same bytes as buffered writes, any alignment."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest

from sbr_core.directio import ALIGN, STAGE, DirectWriter

BIG = 64 * ALIGN + STAGE  # where a run longer than the staging buffer starts
SIZE = BIG + 2 * STAGE + 1000  # not a multiple of the alignment, like some real disks

# (offset, lengths of the buffers written back to back there)
RUNS = [
    (0, [ALIGN, 2 * ALIGN]),
    (8 * ALIGN, [3 * ALIGN + 17, 5]),  # aligned start, unaligned tail across two buffers
    (16 * ALIGN + 3, [ALIGN]),  # unaligned start: buffered
    (20 * ALIGN, [100]),  # shorter than one block: buffered
    (24 * ALIGN, []),  # nothing
    (60 * ALIGN, [4 * ALIGN]),
    (BIG, [STAGE - 5, STAGE + 5 + 1000]),  # staged in three pieces; the disk's short end
]


def _write(path: Path, *, direct: bool) -> tuple[bytes, bool]:
    rng = random.Random(7)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.ftruncate(fd, SIZE)
    out = DirectWriter(fd, str(path), direct=direct)
    used_direct = out.direct_fd is not None
    try:
        for offset, lengths in RUNS:
            out.write([rng.randbytes(n) for n in lengths], offset)
    finally:
        out.close()
        os.fsync(fd)
        os.close(fd)
    return path.read_bytes(), used_direct


def test_direct_writes_give_the_bytes_buffered_writes_give(tmp_path: Path) -> None:
    direct, used_direct = _write(tmp_path / "direct.img", direct=True)
    buffered, _ = _write(tmp_path / "buffered.img", direct=False)
    assert used_direct, "the test directory's file system refused O_DIRECT: nothing tested"
    assert len(direct) == SIZE
    assert direct == buffered
    assert direct[16 * ALIGN + 3:16 * ALIGN + 3 + ALIGN] != bytes(ALIGN)


def test_a_file_system_without_o_direct_gets_buffered_writes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def refuse_direct(path: str, flags: int, *args: int) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refuse_direct)
    data, used_direct = _write(tmp_path / "plain.img", direct=True)
    monkeypatch.undo()
    assert not used_direct
    assert data == _write(tmp_path / "buffered.img", direct=False)[0]
