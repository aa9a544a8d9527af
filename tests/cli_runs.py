"""Running the ``sbr`` command as a subprocess, and what tests assert of its results."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

SBR = [sys.executable, "-c", "from sbr_core.cli import main; main()"]


def sbr(*args: str, env: dict[str, str], stdin: str = "", timeout: float = 300
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SBR, *args], env=env, input=stdin, capture_output=True, text=True,
                          timeout=timeout, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """The result of a command that must have succeeded without a traceback."""
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result).stdout)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """A failure whose whole stderr is one line holding every fragment."""
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def one_line_error(result: subprocess.CompletedProcess[str], *fragments: str,
                   alone: bool = True) -> str:
    """The one ``sbr:`` error line of a failed command, which must hold every fragment;
    ``alone``: nothing else on stderr (else logged warnings may come before it)."""
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines, result
    errors = [line for line in lines if line.startswith("sbr: ")]
    assert errors == [lines[-1]], result.stderr
    if alone:
        assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    return lines[-1]


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn_logged(args: list[str], *, env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    """Start a server or node whose output goes to the file ``log``. Never a pipe that is
    read only at the end: a chatty process (waitress warns of every queued request under
    load) fills it and then hangs in its next write."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as output:
        return subprocess.Popen(args, env=env, stdout=output, stderr=subprocess.STDOUT,
                                text=True)


def wait_for_server(url: str, process: subprocess.Popen[str], timeout: float = 30, *,
                    log: Path | None = None) -> None:
    """Wait until ``url`` answers; fail with the server's output (its stderr pipe, or
    ``log``) if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            printed = process.communicate()[1] or (log.read_text() if log else "")
            raise AssertionError(f"server exited: {printed}")
        try:
            urllib.request.urlopen(url, timeout=2).close()  # noqa: S310 - http on loopback
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"server did not answer within {timeout:.0f} s")


def terminate(process: subprocess.Popen[Any]) -> None:
    """Stop a server or node gently, and for good if it does not stop within 30 s."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
