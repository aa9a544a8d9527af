"""Fixtures for fault injection on a backup repository: repositories driven through the real
``sbr repo`` command (subprocesses an admin would run, which can be killed), random disk
images, and small tmpfs mounts that are always unmounted again."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sbr_core.config import structure_config
from sbr_core.providers.base import ProviderContext
from sbr_core.repository import Repository, open_repository
from sbr_core.repository.format import pack_id_of_key
from sbr_core.repository.gc import manifest_blobs
from sbr_plugins.filesystem.destination import TEMP_PREFIX, FilesystemDestination
from tests.cli_runs import SBR
from tests.mounts import mount_tmpfs  # noqa: F401 - the fixture, for these tests

PASSPHRASE = "fault injection passphrase 7f3a"
MiB = 2**20
#: Small packs: every backup gets packs of its own, and index files come every 32 MiB.
PACK_SIZE = MiB
CHUNK = 128 * 1024  # the default image chunk size
#: The source name of every test mount, so that `findmnt -S sbr-test` finds leftovers.


class RepoCli:
    """A repository at ``path``, used through ``sbr repo`` as an admin uses it."""

    def __init__(self, path: Path, env: dict[str, str], scratch: Path) -> None:
        self.path = path
        self.env = env
        self.scratch = scratch

    # --- running the command ----------------------------------------------------------------

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
        """``sbr repo ARGS``, with DEST inserted after the sub-command."""
        return subprocess.run([*SBR, "repo", *self._args(args)], env=env or self.env,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([*SBR, "repo", *self._args(args)], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def _args(self, args: tuple[str, ...]) -> list[str]:
        return [args[0], str(self.path), *args[1:]]

    def ok(self, *args: str, timeout: float = 120) -> Any:
        """Run with ``--json``, insist on success, return the parsed output."""
        result = self.run(*args, "--json", timeout=timeout)
        assert result.returncode == 0, f"sbr repo {' '.join(args)}: {result.stderr}"
        return json.loads(result.stdout)

    # --- commands -----------------------------------------------------------------------------

    def init(self, *options: str) -> None:
        self.ok("init", *options)

    def backup(self, name: str, image: Path) -> dict[str, Any]:
        summary: dict[str, Any] = self.ok("backup-image", name, str(image))
        return summary

    def backup_ids(self) -> list[str]:
        return [b["backup_id"] for b in self.ok("list")]

    def verify(self) -> tuple[int, dict[str, Any]]:
        """(exit code, report); the report of a failed verify is printed all the same."""
        result = self.run("verify", "--json")
        assert result.returncode in (0, 1), result.stderr
        return result.returncode, json.loads(result.stdout)

    def assert_verifies(self) -> None:
        code, report = self.verify()
        assert code == 0 and report["ok"], report

    def gc(self, *options: str) -> dict[str, Any]:
        report: dict[str, Any] = self.ok("gc", *options)
        return report

    def gc_until_done(self, rounds: int = 5) -> list[dict[str, Any]]:
        """gc until it has nothing left to do (one run sweeps a pending plan, the next marks
        anew); no plan may be left behind."""
        reports = []
        for _ in range(rounds):
            reports.append(self.gc("--wait", "30"))
            if reports[-1]["phase"] == "nothing to do":
                assert self.objects("gc") == [], reports
                return reports
        raise AssertionError(f"gc never finished: {reports}")

    def restore(self, backup_id: str) -> tuple[subprocess.CompletedProcess[str], Path]:
        target = self.scratch / f"restore-{backup_id[:8]}-{os.urandom(3).hex()}.img"
        return self.run("restore", backup_id, str(target)), target

    def assert_restores(self, backup_id: str, image: Path) -> None:
        result, target = self.restore(backup_id)
        assert result.returncode == 0, result.stderr
        try:
            assert filecmp.cmp(target, image, shallow=False), \
                f"backup {backup_id[:8]} restored different bytes than {image.name}"
        finally:
            target.unlink(missing_ok=True)

    # --- looking inside -------------------------------------------------------------------------

    def objects(self, prefix: str) -> list[str]:
        """Keys of the objects under ``prefix`` (temp files of unfinished writes excluded)."""
        found = []
        for directory, _dirs, files in os.walk(self.path / prefix):
            for name in files:
                if not name.startswith("."):
                    found.append(Path(directory, name).relative_to(self.path).as_posix())
        return sorted(found)

    def temp_files(self) -> list[str]:
        return sorted(str(p.relative_to(self.path)) for p in self.path.rglob(f"{TEMP_PREFIX}*"))

    def stored_packs(self) -> set[str]:
        return {key.rsplit("/", 1)[-1] for key in self.objects("packs")}

    def pack_path(self, pack_hex: str) -> Path:
        return self.path / "packs" / pack_hex[:2] / pack_hex

    def stored_bytes(self) -> int:
        return sum((self.path / key).stat().st_size for key in self.objects("packs"))

    def open(self) -> Repository:
        """The repository opened in this process, as a node opens it."""
        config = structure_config(FilesystemDestination.Config,
                                  {"path": str(self.path), "fsync": "false"},
                                  subject="destination 'faults'")
        destination = FilesystemDestination(config, context=ProviderContext(name="faults"))
        return open_repository(destination, passphrase=self.env.get("SBR_REPO_PASSWORD"))

    def packs_of(self, backup_id: str) -> set[str]:
        """The packs holding a blob that backup ``backup_id`` needs."""
        repo = self.open()
        packs = set()
        for blob_id in manifest_blobs(repo, repo.manifest(backup_id)):
            location = repo.index.lookup(blob_id)
            assert location is not None, f"backup {backup_id[:8]} needs an unindexed blob"
            packs.add(location.pack.hex())
        return packs

    def indexed_packs(self) -> set[str]:
        return {p.hex() for p in self.open().reload_index().packs()}

    def unindexed_packs(self) -> set[str]:
        """Packs stored but named by no index file: what killed writers leave."""
        stored = {k for k in self.stored_packs() if pack_id_of_key(k) is not None}
        return stored - self.indexed_packs()


MakeRepo = Callable[..., RepoCli]
MakeImage = Callable[..., Path]


@pytest.fixture
def repo_env(sbr_env: dict[str, str]) -> dict[str, str]:
    """The environment of every ``sbr repo`` subprocess: private data dir, the passphrase."""
    return {**sbr_env, "SBR_REPO_PASSWORD": PASSPHRASE}


@pytest.fixture
def make_repo(tmp_path: Path, repo_env: dict[str, str]) -> MakeRepo:
    """Create a repository (encrypted, 1 MiB packs unless told otherwise) and return it."""
    scratch = tmp_path / "restores"
    scratch.mkdir()
    count = 0

    def make(path: Path | None = None, *options: str, pack_size: int = PACK_SIZE,
             encryption: str = "aes-256-gcm") -> RepoCli:
        nonlocal count
        count += 1
        repo = RepoCli(path or tmp_path / f"repo{count}", repo_env, scratch)
        repo.init("--pack-size", str(pack_size), "--encryption", encryption, *options)
        return repo

    return make


@pytest.fixture
def make_image(tmp_path: Path) -> MakeImage:
    """Write a disk image of random bytes; or, given ``base``, a copy of it with the chunks
    ``changed`` (chunk indexes) made random, so that it shares every other chunk."""
    images = tmp_path / "images"
    images.mkdir()

    def make(name: str, size: int = 8 * MiB, *, base: Path | None = None,
             changed: range | list[int] = ()) -> Path:
        path = images / f"{name}.img"
        if base is not None:
            shutil.copyfile(base, path)
        else:
            with open(path, "wb") as out:
                for offset in range(0, size, 8 * MiB):
                    out.write(os.urandom(min(8 * MiB, size - offset)))
        if changed:
            with open(path, "r+b") as out:
                for chunk in changed:
                    out.seek(chunk * CHUNK)
                    out.write(os.urandom(CHUNK))
        return path

    return make


@pytest.fixture
def reap() -> Iterator[Callable[[subprocess.Popen[str]], subprocess.Popen[str]]]:
    """Register subprocesses a test starts; any still running at teardown is killed."""
    started: list[subprocess.Popen[str]] = []

    def register(process: subprocess.Popen[str]) -> subprocess.Popen[str]:
        started.append(process)
        return process

    yield register
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
