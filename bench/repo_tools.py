"""The tools bench/repository.py compares, and how one step of one tool is measured.

Each tool is an adapter that turns a step (init, backup, restore, verify) into a command line;
the bench runs every command the same way, as a child process measured with wait4.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

PASSWORD = "bench-not-a-secret"  # noqa: S105 - throwaway repositories under the work dir


class StepSkipped(Exception):
    """A step cannot run, e.g. an incremental backup whose full backup failed."""


@dataclass(frozen=True)
class Job:
    """What one dataset looks like to a tool: a path relative to the directory it runs in."""

    kind: str  # "image" or "tree"
    name: str  # the backup name (sbr) or archive prefix (borg)
    cwd: Path
    rel: str
    extents: Path | None = None  # the changed extents of the incremental (images only)

    @property
    def path(self) -> Path:
        """The absolute path of the data."""
        return self.cwd / self.rel


@dataclass(frozen=True)
class Command:
    """One child process to run."""

    argv: list[str]
    cwd: Path | None = None


@dataclass(frozen=True)
class Measured:
    """What wait4 and the clock say about one finished child process."""

    wall: float  # seconds
    cpu: float  # user + sys seconds of the child and its waited-for descendants
    peak_rss: int  # bytes; the largest resident set of any process in the child's tree
    returncode: int
    stdout: str
    error: str | None  # None on success, else the last line the tool wrote to stderr


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _last_line(text: str) -> str:
    lines = [_ANSI.sub("", ln).strip() for ln in text.replace("\r", "\n").splitlines()]
    lines = [ln for ln in lines if ln]
    return lines[-1] if lines else ""


# The measured command is started by this small helper, not by the bench itself: a child's
# ru_maxrss starts from the resident set of the process it was forked (or vforked) from, so
# a child of the bench would report at least the bench's own peak (its numpy buffers). The
# helper is a bare interpreter of about 10 MB; it spawns the command, waits for it with
# wait4 and writes the command's own wall time and rusage as JSON to argv[1].
_HELPER = """
import json, os, sys, time
start = time.perf_counter()
try:
    pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
except OSError as exc:
    sys.stderr.write(f"cannot start {sys.argv[2]}: {exc}\\n")
    sys.exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - start
with open(sys.argv[1], "w") as f:
    json.dump({"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "maxrss_kib": ru.ru_maxrss,
               "code": os.waitstatus_to_exitcode(status)}, f)
"""


def run_measured(command: Command, env: dict[str, str], log_stem: Path) -> Measured:
    """Run a command to completion; stdout and stderr go to log_stem.out / .err."""
    log_stem.parent.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_stem.with_suffix(".out"), log_stem.with_suffix(".err")
    usage_path = log_stem.with_suffix(".usage")
    usage_path.unlink(missing_ok=True)
    helper = [sys.executable, "-I", "-S", "-c", _HELPER, str(usage_path)]
    with out_path.open("wb") as out, err_path.open("wb") as err:
        subprocess.run([*helper, *command.argv], cwd=command.cwd, env=env, stdout=out,
                       stderr=err, stdin=subprocess.DEVNULL, check=False)
    stdout = out_path.read_text(errors="replace")
    stderr = err_path.read_text(errors="replace")
    try:
        usage = json.loads(usage_path.read_text())
    except (OSError, ValueError):
        return Measured(0.0, 0.0, 0, 127, stdout, _last_line(stderr) or "did not start")
    error = None
    if usage["code"] != 0:
        error = _last_line(stderr) or _last_line(stdout) or f"exit status {usage['code']}"
    return Measured(wall=usage["wall"], cpu=usage["cpu"], peak_rss=usage["maxrss_kib"] * 1024,
                    returncode=usage["code"], stdout=stdout, error=error)


def version_of(argv: list[str], env: dict[str, str] | None = None) -> str:
    """First line of a tool's version output, or why there is none."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else f"unavailable (exit {done.returncode})"


def debian_version(package: str) -> str | None:
    """The installed Debian package version, if dpkg knows the package."""
    try:
        done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package],
                              capture_output=True, text=True, check=False)
    except OSError:
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


@dataclass
class Tool:
    """A backup tool under test. Subclasses build the command of each step."""

    cache: Path  # the tool's cache and config live here, so runs never share state
    name: str = ""
    settings: str = ""  # how the tool is configured, for the report
    last: dict[str, str] = field(default_factory=dict)  # job name -> last backup id/archive

    def env(self) -> dict[str, str]:
        """The environment of every command (password, cache location)."""
        return dict(os.environ)

    def version(self) -> str:
        raise NotImplementedError

    def init(self, repo: Path) -> Command:
        raise NotImplementedError

    def backup(self, repo: Path, job: Job, incremental: bool) -> Command:
        raise NotImplementedError

    def backed_up(self, job: Job, incremental: bool, result: Measured) -> None:
        """Called after a successful backup; remembers what the restore needs."""

    def own_seconds(self, result: Measured) -> float | None:
        """The time the tool reports for the backup itself, if it reports one."""
        return None

    def restore(self, repo: Path, job: Job, target: Path) -> Command:
        raise NotImplementedError

    def restored(self, job: Job, target: Path) -> Path:
        """Where the restore put the data (the image file or the tree's root)."""
        return target / job.rel

    def verify(self, repo: Path) -> Command:
        raise NotImplementedError


class Restic(Tool):
    """restic: content-defined chunks, repository format 2 (zstd, compression auto)."""

    def __init__(self, cache: Path) -> None:
        super().__init__(cache=cache, name="restic",
                         settings="repository version 2 (the default), compression auto, "
                                  "local cache in the work dir")

    def env(self) -> dict[str, str]:
        return {**os.environ, "RESTIC_PASSWORD": PASSWORD, "RESTIC_CACHE_DIR": str(self.cache)}

    def version(self) -> str:
        deb = debian_version("restic")
        return version_of(["restic", "version"]) + (f" (Debian {deb})" if deb else "")

    def init(self, repo: Path) -> Command:
        return Command(["restic", "init", "--repo", str(repo)])

    def backup(self, repo: Path, job: Job, incremental: bool) -> Command:
        # restic finds the parent snapshot itself (same host and path); the same relative
        # path makes the restored data land at target/rel.
        return Command(["restic", "-r", str(repo), "backup", job.rel], cwd=job.cwd)

    def restore(self, repo: Path, job: Job, target: Path) -> Command:
        return Command(["restic", "-r", str(repo), "restore", "latest", "--target", str(target)])

    def verify(self, repo: Path) -> Command:
        return Command(["restic", "-r", str(repo), "check", "--read-data"])


class Borg(Tool):
    """borg 1.2: content-defined chunks, authenticated encryption, zstd."""

    def __init__(self, cache: Path, encryption: str, compression: str) -> None:
        super().__init__(cache=cache, name="borg",
                         settings=f"`borg init -e {encryption}`, `borg create --compression "
                                  f"{compression}`, default chunker (buzhash 19,23,21,4095)")
        self.encryption = encryption
        self.compression = compression

    def env(self) -> dict[str, str]:
        return {**os.environ, "BORG_PASSPHRASE": PASSWORD, "BORG_BASE_DIR": str(self.cache),
                "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
                "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes"}

    def version(self) -> str:
        deb = debian_version("borgbackup")
        return version_of(["borg", "--version"]) + (f" (Debian {deb})" if deb else "")

    def init(self, repo: Path) -> Command:
        return Command(["borg", "init", "-e", self.encryption, str(repo)])

    def _archive(self, job: Job, incremental: bool) -> str:
        return f"{job.name}-{'incr' if incremental else 'full'}"

    def backup(self, repo: Path, job: Job, incremental: bool) -> Command:
        archive = self._archive(job, incremental)
        return Command(["borg", "create", "--compression", self.compression,
                        f"{repo}::{archive}", job.rel], cwd=job.cwd)

    def backed_up(self, job: Job, incremental: bool, result: Measured) -> None:
        self.last[job.name] = self._archive(job, incremental)

    def restore(self, repo: Path, job: Job, target: Path) -> Command:
        if job.name not in self.last:
            raise StepSkipped("no backup to restore")
        return Command(["borg", "extract", f"{repo}::{self.last[job.name]}"], cwd=target)

    def verify(self, repo: Path) -> Command:
        return Command(["borg", "check", "--verify-data", str(repo)])


def sbr_command(override: str | None = None) -> list[str]:
    """How to run sbr: --sbr, else the sbr beside this Python, else on PATH, else the module."""
    if override:
        import shlex

        return shlex.split(override)
    beside = Path(sys.executable).parent / "sbr"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("sbr")
    if found:
        return [found]
    return [sys.executable, "-c", "from sbr_core.cli import main; main()"]


def compile_sbr() -> None:
    """Write the bytecode of this Python's sbr packages, as installing a wheel does: with
    PYTHONDONTWRITEBYTECODE set (as on this machine) an editable checkout would otherwise
    recompile every module in every measured command (~0.04 s each)."""
    import compileall
    import importlib.util

    for package in ("sbr_core", "sbr_plugins"):
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec else []:
            compileall.compile_dir(location, quiet=1)


def _json_object(stdout: str) -> dict:
    try:
        value = json.loads(stdout)
    except ValueError:
        value = None
        for line in reversed(stdout.splitlines()):  # tolerate progress lines before the JSON
            if line.lstrip().startswith("{"):
                try:
                    value = json.loads(line)
                    break
                except ValueError:
                    continue
    if not isinstance(value, dict):
        raise ValueError("no JSON object on stdout")
    return value


class Sbr(Tool):
    """sbr repo: fixed-size image chunks read only where the changed extents say."""

    def __init__(self, cache: Path, argv: list[str], chunk_size: int | None,
                 compression_level: int | None) -> None:
        init = "sbr repo init"
        if chunk_size:
            init += f" --image-chunk-size {chunk_size}"
        if compression_level is not None:
            init += f" --compression-level {compression_level}"
        super().__init__(cache=cache, name="sbr", settings=f"`{init}`" + (
            "" if chunk_size or compression_level is not None else " (defaults)"))
        self.argv = argv
        self.chunk_size = chunk_size
        self.compression_level = compression_level

    def env(self) -> dict[str, str]:
        return {**os.environ, "SBR_REPO_PASSWORD": PASSWORD}

    def version(self) -> str:
        return version_of([*self.argv, "--version"])

    def init(self, repo: Path) -> Command:
        argv = [*self.argv, "repo", "init", str(repo)]
        if self.chunk_size:
            argv += ["--image-chunk-size", str(self.chunk_size)]
        if self.compression_level is not None:
            argv += ["--compression-level", str(self.compression_level)]
        return Command(argv)

    def backup(self, repo: Path, job: Job, incremental: bool) -> Command:
        if job.kind == "tree":
            # backup-path finds the previous backup of the same name itself.
            return Command([*self.argv, "repo", "backup-path", str(repo), job.name,
                            str(job.path), "--json"])
        argv = [*self.argv, "repo", "backup-image", str(repo), job.name, str(job.path), "--json"]
        if incremental:
            if job.name not in self.last:
                raise StepSkipped("no full backup to be the parent")
            if job.extents is None:
                raise StepSkipped("no changed extents for the incremental")
            argv += ["--parent", self.last[job.name], "--changed-extents", str(job.extents)]
        return Command(argv)

    def own_seconds(self, result: Measured) -> float | None:
        try:
            return float(_json_object(result.stdout)["seconds"])
        except (ValueError, KeyError, TypeError):
            return None

    def backed_up(self, job: Job, incremental: bool, result: Measured) -> None:
        try:
            self.last[job.name] = str(_json_object(result.stdout)["backup_id"])
        except (ValueError, KeyError) as exc:
            raise StepSkipped(f"cannot read backup_id from --json output: {exc}") from exc

    def restore(self, repo: Path, job: Job, target: Path) -> Command:
        if job.name not in self.last:
            raise StepSkipped("no backup to restore")
        out = target / job.rel if job.kind == "image" else target
        return Command([*self.argv, "repo", "restore", str(repo), self.last[job.name], str(out)])

    def restored(self, job: Job, target: Path) -> Path:
        if job.kind == "image":
            return target / job.rel
        # A path restore may put the tree's content in target, or the tree itself below it.
        for candidate in (target / job.rel, target / str(job.path).lstrip("/")):
            if candidate.is_dir():
                return candidate
        return target

    def verify(self, repo: Path) -> Command:
        return Command([*self.argv, "repo", "verify", str(repo)])
