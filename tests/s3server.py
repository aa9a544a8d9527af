"""A private moto S3 server for tests: a subprocess on 127.0.0.1 on a free port.

``moto_s3_server`` starts one and stops it when the caller is done; when moto (with its server
extra) is not installed, the test is skipped locally and fails in CI (tests/services.py).
One server can also be made to check signatures against IAM users it holds, to test refused
credentials.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.services import running

#: Credentials for a server that does not check them (moto accepts any).
ANY_KEY_ID = "testing"
ANY_SECRET = "testing"
REGION = "us-east-1"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on at the moment."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MotoS3Server:
    """One ``python -m moto.server`` process; its state lives in memory and dies with it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "moto.log"

    @staticmethod
    def missing() -> str:
        """Why the server cannot run here, or "" when it can."""
        for module in ("moto", "flask", "flask_cors", "boto3"):
            if importlib.util.find_spec(module) is None:
                return f"python module {module!r} is not installed (pip install 'moto[server]')"
        return ""

    @property
    def endpoint(self) -> str:
        """The server's URL, for a destination's endpoint setting."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait until it answers HTTP; a taken port is retried."""
        for _ in range(3):
            self.port = free_port()
            # The server must not inherit a test's auth setting or AWS profile.
            env = {k: v for k, v in os.environ.items()
                   if not k.startswith("AWS_") and k != "INITIAL_NO_AUTH_ACTION_COUNT"}
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                     str(self.port)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                    cwd=self.workdir)
            if self._wait_until_ready(timeout):
                return
            self.stop()
        raise RuntimeError(f"moto server did not start; its log:\n{self._log_tail()}")

    def _wait_until_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False  # exited: most likely the port was taken meanwhile
            try:
                url = f"{self.endpoint}/moto-api/"
                with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - http on loopback
                    return True
            except urllib.error.HTTPError:
                return True  # answered, if not with 200
            except OSError:
                time.sleep(0.1)
        return False

    def stop(self) -> None:
        """Stop the process (terminate, then kill) and reap it."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])
        except OSError:
            return "(no log)"

    # --- talking to it directly (setup and inspection, never through the plugin) -------------

    def client(self, service: str = "s3", key_id: str = ANY_KEY_ID,
               secret: str = ANY_SECRET) -> Any:
        """A boto3 client for this server, to create buckets and look at what tests wrote."""
        import boto3  # type: ignore[import-untyped]
        from botocore.config import Config  # type: ignore[import-untyped]

        return boto3.session.Session().client(
            service, endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}))

    def iam_user_with_s3_access(self, name: str) -> tuple[str, str]:
        """Create an IAM user allowed every S3 action; return its (key id, secret)."""
        iam = self.client("iam")
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName="s3-all", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return str(key["AccessKeyId"]), str(key["SecretAccessKey"])

    def enforce_auth(self) -> None:
        """From now on, check every request's signature and IAM permissions."""
        # The body is the number of requests still let through unchecked; moto reads it
        # only when it is not form-encoded.
        request = urllib.request.Request(  # noqa: S310 - http on loopback
            f"{self.endpoint}/moto-api/reset-auth", data=b"0", method="POST",
            headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=10):  # noqa: S310 - http on loopback
            pass


def moto_s3_server(workdir: Path) -> Iterator[MotoS3Server]:
    """Body of a fixture: a started server, stopped afterwards; skip/fail when unavailable."""
    yield from running(MotoS3Server.missing(), lambda: MotoS3Server(workdir),
                       "moto S3 server")
