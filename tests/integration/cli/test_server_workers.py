"""``sbr server --workers N``: several processes serve one port, and none outlives the server."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli_runs import SBR, assert_one_line_error, free_port, sbr, terminate, wait_for_server


@pytest.fixture
def two_worker_server(sbr_env: dict[str, str]) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    port = free_port()
    process = subprocess.Popen([*SBR, "server", "--port", str(port), "--workers", "2",
                                "--no-local-node"], env=sbr_env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_server(f"http://127.0.0.1:{port}/api/v1/health", process)
        yield port, process
    finally:
        terminate(process)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for tasks in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (tasks / "children").read_text().split()]
    return found


def _established_on(port: int) -> dict[int, int]:
    """Socket inode → local port, for every established TCP connection (IPv4)."""
    inodes: dict[int, int] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if fields[3] == "01" and local_port == port:  # 01: ESTABLISHED
            inodes[int(fields[9])] = local_port
    return inodes


def _connections_held(pid: int, port: int) -> int:
    server_side = _established_on(port)
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:[") and int(target[8:-1]) in server_side:
            count += 1
    return count


def test_kept_alive_connections_are_spread_over_the_worker_processes(
        two_worker_server: tuple[int, subprocess.Popen[str]]) -> None:
    port, server = two_worker_server
    workers = [server.pid, *_children(server.pid)]
    assert len(workers) == 2
    connections = []
    for _ in range(16):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/api/v1/health")
        response = connection.getresponse()
        assert response.status == 200
        response.read()
        connections.append(connection)
    held = {pid: _connections_held(pid, port) for pid in workers}
    for connection in connections:
        connection.close()
    assert sum(held.values()) == 16
    assert all(count > 0 for count in held.values()), held  # 16 on one: chance 1 in 32,768


def test_a_second_server_on_the_shared_port_is_still_one_line(
        two_worker_server: tuple[int, subprocess.Popen[str]],
        sbr_env: dict[str, str]) -> None:
    port, _ = two_worker_server
    assert_one_line_error(sbr("server", "--port", str(port), "--workers", "2", env=sbr_env),
                          "already in use")


def test_the_workers_stop_when_the_server_is_killed(
        two_worker_server: tuple[int, subprocess.Popen[str]]) -> None:
    _, server = two_worker_server
    (worker,) = _children(server.pid)
    server.send_signal(signal.SIGKILL)
    server.wait(10)
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(worker), "a worker outlived the killed server"


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for whoever inherited it to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
