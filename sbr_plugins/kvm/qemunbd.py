"""``qemu-nbd`` as a child process serving one image on a unix socket: read-only for a
shut-off domain's backup, writable for a restored image."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from sbr_core.errors import ProviderError


class QemuNbd:
    """One ``qemu-nbd`` process; ``label`` names the disk or image in errors."""

    def __init__(self, path: str | Path, socket: Path, *, fmt: str, export: str,
                 label: str, options: tuple[str, ...] = ()) -> None:
        self.path = str(path)
        self.socket = socket
        self.label = label
        self.command = ["qemu-nbd", *options, f"--format={fmt}", f"--export-name={export}",
                        f"--socket={socket}", self.path]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Start it and wait until its socket exists."""
        try:
            self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except FileNotFoundError as exc:
            raise ProviderError("qemu-nbd (Debian: qemu-utils) is not installed on this "
                                "node") from exc
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            if self.process.poll() is not None:
                error = self.stop()
                raise ProviderError(f"{self.label}: qemu-nbd could not serve {self.path}: "
                                    f"{error or 'it exited'}")
            if time.monotonic() > deadline:
                self.stop()
                raise ProviderError(f"{self.label}: qemu-nbd did not start within "
                                    f"{timeout:.0f} s")
            time.sleep(0.02)

    def stop(self) -> str:
        """End it; returns what it wrote to stderr if it failed (not when we ended it)."""
        process, self.process = self.process, None
        if process is None:
            return ""
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        error = ""
        if process.stderr:
            error = process.stderr.read().decode(errors="replace").strip()
            process.stderr.close()
        return error if process.returncode not in (0, -15) else ""
